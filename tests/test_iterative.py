"""The iterative reference step (pty-chi): the torchvision stand-in, our conventions handed to
pty-chi (a real LSQML run must recover a known object: a wrong FFT scale, position offset
or sign shows up as an amplitude scale, a registered shift or garbage), the checkpoints,
and the step without pty-chi installed (it reports that and writes what the comparison
needs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import run_step
from ptycho_torch import iterative, ptychi_solver, simulate
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.cxi import write_cxi
from ptycho_torch.evidence import load_manifest
from ptycho_torch.torchvision_compat import GaussianBlur

RUN = "2026-01-01T000000Z"
# Easy data for a short run: weak phase object, dense scan (N 16, step 2 px: 289 patterns).
EASY = {"experiment": "easy", "data": {"N": 16, "object": {"train_size_px": 32,
                                                          "test_size_px": 48,
                                                          "phase_max_rad": 0.5},
                                       "probe": {"pupil_radius_px": 3.0},
                                       "scan": {"step_px": 2.0}},
        "iterative": {"epochs": 30, "batch_size": 16}, "execution": {"threads": 1}}
needs_ptychi = pytest.mark.skipif(ptychi_solver.ptychi_version() is None,
                                  reason=ptychi_solver.PTYCHI_MISSING)


@pytest.mark.parametrize("kernel, sigma", [((9, 9), (3.0, 3.0)), ((9, 5), 1.5)])
def test_gaussian_blur_stand_in_is_a_mirrored_gaussian_filter(kernel, sigma):
    """torchvision's GaussianBlur: kernel (width, height), sigma px, reflect padding; scipy's
    gaussian_filter with mode 'mirror' and the same radii computes the same thing."""
    img = np.random.default_rng(0).normal(size=(2, 23, 31))
    s = sigma[0] if isinstance(sigma, tuple) else sigma
    expected = np.stack([ndimage.gaussian_filter(x, s, mode="mirror",
                                                 radius=(kernel[1] // 2, kernel[0] // 2))
                         for x in img])
    got = GaussianBlur(kernel, sigma)(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_gaussian_blur_stand_in_refuses_what_it_does_not_do():
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(4, 1.0)
    with pytest.raises(ValueError, match="one fixed positive sigma"):
        GaussianBlur(9, (0.1, 2.0))  # torchvision would draw sigma at random


def test_checkpoints_are_about_ten_per_decade_and_end_at_the_last_epoch():
    assert ptychi_solver.checkpoint_epochs(1) == [1]
    assert ptychi_solver.checkpoint_epochs(30) == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30]
    marks = ptychi_solver.checkpoint_epochs(1000)
    assert marks[-1] == 1000 and len(marks) == len(set(marks)) == 28  # 1..1000: 3 decades
    assert all(b / a <= 2.0 for a, b in zip(marks, marks[1:]))


@needs_ptychi
@pytest.mark.slow
def test_ptychi_imports_in_this_environment():
    api, task_class = ptychi_solver.import_ptychi()
    assert hasattr(api, "LSQMLOptions") and hasattr(api, "EPIEOptions")
    assert task_class.__name__ == "PtychographyTask"
    tv = sys.modules["torchvision"]  # the stand-in, unless a real torchvision is installed
    assert hasattr(tv.transforms, "GaussianBlur")


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> Path:
    """The easy test scan as a CXI file, simulated as the simulate step does."""
    cfg = resolve_config(EASY)
    path = tmp_path_factory.mktemp("easy") / "test.cxi"
    write_cxi(path, simulate.simulate_dataset(cfg.data, cfg.data.object.test_size_px,
                                              (cfg.seed, 1)))
    return path


@pytest.fixture(scope="module")
def reconstructed(easy_data, tmp_path_factory) -> Path:
    """One real LSQML run of the step (30 epochs, known probe) on the easy scan. pty-chi sets
    torch's process-wide default device and dtype: the step restores them (here float64,
    which pty-chi would leave at float32; on a GPU the device would stay "cuda")."""
    work = tmp_path_factory.mktemp("lsqml")
    torch.set_default_dtype(torch.float64)
    try:
        code = iterative.main(["--config-json", json.dumps(EASY), "--data", str(easy_data),
                               "--out-dir", str(work / "out"),
                               "--report-dir", str(work / f"reports/{RUN}/easy/iterative")])
        kept = torch.get_default_dtype()
    finally:
        torch.set_default_dtype(torch.float32)
    assert code == 0 and kept == torch.float64
    assert torch.get_default_device() == torch.device("cpu")
    return work


@needs_ptychi
@pytest.mark.slow
def test_lsqml_recovers_the_known_object(reconstructed):
    m = json.loads((reconstructed / "out/metrics.json").read_text())
    assert m["method"]["engine"] == "lsqml" and m["method"]["version"] == "2.2.0"
    # registered to the truth within a small fraction of a pixel (a half-pixel position
    # convention error would show here), at the true amplitude scale (the FFT
    # normalisation: a missing 1/N on the probe scales the object by N)
    assert max(abs(s) for s in m["alignment"]["shift_px"]) <= 0.1
    assert abs(m["alignment"]["amplitude_scale"] - 1) < 0.02
    assert m["amplitude"]["psnr"] > 40 and m["amplitude"]["ssim"] > 0.99
    # the phase's slowest part is a weak global ramp (nearly an ambiguity); without it:
    assert m["with_phase_ramp_removed"]["phase"]["psnr"] > 38
    assert m["phase"]["psnr"] > 25


@needs_ptychi
@pytest.mark.slow
def test_convergence_is_recorded_at_the_checkpoints(reconstructed):
    m = json.loads((reconstructed / "out/metrics.json").read_text())
    curve = m["convergence"]
    assert [c["epoch"] for c in curve] == ptychi_solver.checkpoint_epochs(30)
    seconds = [c["seconds"] for c in curve]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))
    assert seconds[-1] == pytest.approx(m["reconstruction_seconds"])
    assert curve[-1]["amplitude"]["psnr"] == pytest.approx(m["amplitude"]["psnr"])
    assert curve[-1]["phase"]["psnr"] > curve[0]["phase"]["psnr"] + 10
    reached = [c for c in curve if min(c["amplitude"]["psnr"], c["phase"]["psnr"]) >= 30]
    assert m["time_to_target"] == ({"psnr_db": 30.0, "reached": True,
                                    "epoch": reached[0]["epoch"],
                                    "seconds": reached[0]["seconds"]} if reached
                                   else {"psnr_db": 30.0, "reached": False})


@needs_ptychi
@pytest.mark.slow
def test_the_step_writes_the_infer_products_and_evidence(reconstructed):
    out = reconstructed / "out"
    for name in iterative.ALWAYS + iterative.WITH_PTYCHI:
        assert (out / name).stat().st_size > 0, name
    step = reconstructed / f"reports/{RUN}/easy/iterative"
    manifest, problem = load_manifest(step / "manifest.json")
    assert problem is None and manifest["status"] == "ok"
    assert manifest["numbers"]["available"] is True
    assert manifest["numbers"]["reconstruction_seconds"] > 0
    assert "lsqml, 30 epochs" in (step / "summary.md").read_text()


@pytest.mark.slow
def test_without_ptychi_the_step_reports_it_and_writes_what_compare_needs(
        easy_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ptychi", None)  # `import ptychi` now fails
    out, step = tmp_path / "out", tmp_path / f"reports/{RUN}/easy/iterative"
    code = iterative.main(["--config-json", json.dumps(EASY), "--data", str(easy_data),
                           "--out-dir", str(out), "--report-dir", str(step)])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["unavailable"].startswith("pty-chi not installed: run `make iterative`")
    assert (out / "reconstruction.png").stat().st_size > 0
    assert not (out / "reconstruction.h5").exists()
    assert "SKIPPED: pty-chi not installed" in (step / "summary.md").read_text()
    manifest, problem = load_manifest(step / "manifest.json")
    assert problem is None and manifest["numbers"]["available"] is False


@pytest.mark.slow
def test_a_missing_data_file_is_refused_and_nothing_is_written(tmp_path):
    out = run_step("iterative", "--data", "absent.cxi", "--out-dir", "out", "--report-dir",
                   f"reports/{RUN}/x/iterative", cwd=tmp_path)
    assert out.returncode == 2 and "absent.cxi" in out.stderr, out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()


@pytest.fixture(scope="module")
def hybrid(reconstructed, easy_data) -> Path:
    """The hybrid step (4 epochs) started from the iterative run's reconstruction.npz (any
    method's product does: its manifest gives the seconds that made it)."""
    run = "2026-01-01T000001Z"
    code = iterative.main(["--config-json", json.dumps({**EASY, "iterative": {
        **EASY["iterative"], "epochs": 4}}), "--data", str(easy_data),
        "--init-object", str(reconstructed / "out/reconstruction.npz"), "--step", "hybrid",
        "--out-dir", str(reconstructed / "hybrid"),
        "--report-dir", str(reconstructed / f"reports/{run}/easy/hybrid")])
    assert code == 0
    return reconstructed


@needs_ptychi
@pytest.mark.slow
def test_the_hybrid_starts_from_exactly_the_given_object_and_counts_its_time(hybrid):
    start = json.loads((hybrid / "out/metrics.json").read_text())
    m = json.loads((hybrid / "hybrid/metrics.json").read_text())
    first = m["initial_object"]
    assert first["max_difference_before_first_epoch"] == 0.0  # checked before epoch 1
    assert first["seconds"] == pytest.approx(start["reconstruction_seconds"])
    assert first["method"] == "iterative" and first["file"].endswith("out/reconstruction.npz")
    assert m["reconstruction_seconds"] == pytest.approx(first["seconds"] + m["solver_seconds"])
    assert all(c["seconds"] > first["seconds"] for c in m["convergence"])
    # a good start stays good: already at the 30-epoch quality after its first epoch
    assert m["convergence"][0]["amplitude"]["psnr"] > start["amplitude"]["psnr"] - 1.0
    manifest, problem = load_manifest(
        hybrid / "reports/2026-01-01T000001Z/easy/hybrid/manifest.json")
    assert problem is None and manifest["step"] == "hybrid"
    assert any(k.endswith("out/reconstruction.npz") for k in manifest["inputs"])


@pytest.mark.slow
def test_a_start_that_does_not_fit_or_has_no_record_is_refused(easy_data, tmp_path):
    np.savez(tmp_path / "small.npz", object=np.ones((8, 8), np.complex64))
    cfg = resolve_config(EASY)
    H, W = simulate.simulate_dataset(cfg.data, cfg.data.object.test_size_px,
                                     (cfg.seed, 1)).object_shape
    np.savez(tmp_path / "loose.npz", object=np.ones((H, W), np.complex64))
    for name, message in (("small.npz", "holds a (8, 8) object"),
                          ("loose.npz", "no step manifest"), ("absent.npz", "not found")):
        out = run_step("iterative", "--config-json", json.dumps(EASY), "--data", str(easy_data),
                       "--init-object", name, "--step", "hybrid", "--out-dir", "out",
                       "--report-dir", f"reports/{RUN}/x/hybrid", cwd=tmp_path)
        assert out.returncode == 2 and "--init-object" in out.stderr, out.stderr
        assert message in out.stderr, out.stderr
        assert not (tmp_path / "out").exists() and not (tmp_path / "reports" / RUN).exists()


@pytest.fixture(scope="module")
def corrected(tmp_path_factory) -> Path:
    """The easy scan recorded with 1 px (sigma per axis) position errors, reconstructed with
    pty-chi's position correction (100 epochs)."""
    settings = {**EASY, "data": {**EASY["data"], "scan": {**EASY["data"]["scan"],
                                                         "position_error_px": 1.0}},
                "iterative": {**EASY["iterative"], "position_correction": True, "epochs": 100}}
    cfg = resolve_config(settings)
    work = tmp_path_factory.mktemp("corrected")
    write_cxi(work / "test.cxi", simulate.simulate_dataset(
        cfg.data, cfg.data.object.test_size_px, (cfg.seed, 1)))
    code = iterative.main(["--config-json", json.dumps(settings), "--data",
                           str(work / "test.cxi"), "--out-dir", str(work / "out"),
                           "--report-dir", str(work / f"reports/{RUN}/easy/iterative")])
    assert code == 0
    return work


@needs_ptychi
@pytest.mark.slow
def test_position_correction_reduces_the_position_error_and_ships_the_corrected_positions(
        corrected):
    m = json.loads((corrected / "out/metrics.json").read_text())
    p = m["positions"]
    assert p["refined"] is True and m["method"]["position_correction"] is True
    assert 1.2 < p["given_rms_error_px"] < 1.6  # sqrt(2) x sigma, mean offset removed
    assert p["rms_error_px"] < 0.75 * p["given_rms_error_px"], p
    with np.load(corrected / "out/reconstruction.npz") as f:
        shipped = f["probe_position_px"]
    from ptycho_torch.cxi import read_cxi
    from ptycho_torch.metrics import position_rms_error
    d = read_cxi(corrected / "test.cxi")
    true = np.stack([d.extras["true_position_row_px"], d.extras["true_position_col_px"]], 1)
    assert position_rms_error(shipped, true) == pytest.approx(p["rms_error_px"], rel=1e-6)
    step = corrected / f"reports/{RUN}/easy/iterative"
    assert (step / "position_errors.png").stat().st_size > 0
    numbers = load_manifest(step / "manifest.json")[0]["numbers"]
    assert numbers["positions_refined"] is True and numbers["probe_refined"] is False
    assert numbers["position_rms_error_px"] == pytest.approx(p["rms_error_px"])


@needs_ptychi
@pytest.mark.slow
def test_probe_refinement_reports_the_given_and_the_refined_probe_against_the_truth(tmp_path):
    """The easy scan given a probe 1 mm out of its focus plane (defocus 5 -> 6 mm): pty-chi's
    probe refinement (30 epochs) ends nearer the true probe, and says so."""
    settings = {**EASY, "data": {**EASY["data"], "probe": {**EASY["data"]["probe"],
                                                          "given_defocus_m": 1.0e-3}},
                "iterative": {**EASY["iterative"], "probe_refinement": True}}
    cfg = resolve_config(settings)
    write_cxi(tmp_path / "test.cxi", simulate.simulate_dataset(
        cfg.data, cfg.data.object.test_size_px, (cfg.seed, 1)))
    step = tmp_path / f"reports/{RUN}/easy/iterative"
    assert iterative.main(["--config-json", json.dumps(settings), "--data",
                           str(tmp_path / "test.cxi"), "--out-dir", str(tmp_path / "out"),
                           "--report-dir", str(step)]) == 0
    probe = json.loads((tmp_path / "out/metrics.json").read_text())["probe"]
    assert probe["refined"] is True and probe["error"] < probe["given_error"], probe
    with np.load(tmp_path / "out/reconstruction.npz") as f:
        shipped = f["probe"]
    from ptycho_torch.cxi import read_cxi
    from ptycho_torch.metrics import probe_error
    assert probe_error(shipped, read_cxi(tmp_path / "test.cxi").true_probe) == pytest.approx(
        probe["error"], rel=1e-4)
    assert (step / "probe.png").stat().st_size > 0
    assert load_manifest(step / "manifest.json")[0]["numbers"]["probe_refined"] is True


# ---------------------------------------------------------------- quality without ground truth

@needs_ptychi
def test_without_ground_truth_the_step_writes_the_r_factor_and_the_half_data_frc(
        iterative_without_truth):
    """A scan without ground truth: nothing scored against a truth, but ``quality`` holds
    the R-factor with its noise floor (from the solver's object, probe and positions) and,
    with ``iterative.half_data_frc``, the FRC of two solver runs on the interleaved halves;
    quality.png is written and copied into the evidence."""
    long, short = (json.loads((iterative_without_truth / f"results/{n}/metrics.json")
                              .read_text()) for n in ("long", "short"))
    assert long["ground_truth"] is False and "amplitude" not in long
    c = long["quality"]["data_consistency"]
    assert 0 < c["r_factor_poisson_expected"] < c["r_factor"] < 1
    assert c["r_factor_over_noise"] == pytest.approx(c["r_factor"] / c["r_factor_poisson_expected"])
    assert len(c["per_position"]) == long["n_patterns"]
    h = long["quality"]["half_data_frc"]
    assert sum(h["halves"]) == long["n_patterns"] and "lsqml, 30 epochs" in h["split"]
    assert 0 < h["frc_half_bit_cycles_per_px"] <= 0.5 and h["resolution_half_bit_nm"] > 0
    assert long["method"]["half_data_frc"] is True
    assert "iterative.half_data_frc is false" in short["quality"]["half_data_frc"]["skipped"]
    # 2 epochs explain the counts worse than 30
    assert short["quality"]["data_consistency"]["r_factor"] > c["r_factor"]
    step = iterative_without_truth / "reports/2026-01-01T000000Z/long/iterative"
    assert (step / "quality.png").stat().st_size > 5000
    manifest, problem = load_manifest(step / "manifest.json")
    assert problem is None and manifest["numbers"]["r_factor"] == c["r_factor"]
    assert manifest["numbers"]["quality_seconds"] > 0
