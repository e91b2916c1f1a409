"""The infer step: its products and their layouts, data without ground truth, and the
infer_file Snakemake target (any data file, any model)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, TINY, copy_workflow, jobs_run, run_snakemake, run_step
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.cxi import read_cxi, write_cxi
from ptycho_torch.dataset import PtychoData
from ptycho_torch.npz import read_npz, write_npz
from ptycho_torch import physics
from ptycho_torch.infer import PRODUCTS, inference_batch, predict_patches
from ptycho_torch.products import ctf_zero_markers
from ptycho_torch.infer import main as infer_main
from ptycho_torch.model import load_model, save_checkpoint
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.train import train_model, write_history

pytestmark = pytest.mark.slow  # every test needs `scan`: a model trained once (~10 s)

FAST = ("--set", "inference.calibration_iterations=10", "--threads", "1")
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Scan:
    workdir: Path  # model.pt, history.csv, test.cxi (with ground truth), nogt.cxi, nogt.npz
    test: PtychoData


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Scan:
    """A tiny model trained for one epoch, and a test scan written with and without its
    ground-truth object (CXI, and a PtychoPINN NPZ without objectGuess)."""
    workdir = tmp_path_factory.mktemp("infer")
    cfg = resolve_config(REPO / TINY, {"training.epochs": 1})
    train = simulate_dataset(cfg.data, cfg.data.object.train_size_px, (cfg.seed, 0))
    test = simulate_dataset(cfg.data, cfg.data.object.test_size_px, (cfg.seed, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, history, scale = train_model(cfg, train, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(workdir / "model.pt", model, cfg, {"input_scale_train": scale})
    write_history(workdir / "history.csv", history)
    write_cxi(workdir / "test.cxi", test)
    without = dataclasses.replace(test, ground_truth=None)
    write_cxi(workdir / "nogt.cxi", without)
    write_npz(workdir / "nogt.npz", without)
    return Scan(workdir, test)


def infer(scan: Scan, data: str, run: str, *extra: str):
    return run_step("infer", "--model", "model.pt", "--data", data, "--out-dir", f"out/{run}",
                    *FAST, *extra, "--report-dir", f"reports/{run}/tiny/infer", cwd=scan.workdir)


@pytest.fixture(scope="module")
def scored(scan: Scan) -> Path:
    out = infer(scan, "test.cxi", "2026-01-01T000001Z", "--history", "history.csv")
    assert out.returncode == 0, out.stderr
    return scan.workdir / "out" / "2026-01-01T000001Z"


def assert_products(out_dir: Path, evidence: Path) -> None:
    for name in PRODUCTS:
        assert (out_dir / name).stat().st_size > 0, name
    for name in ("reconstruction.png", "frc.png", "scan_positions.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG
        assert (evidence / name).read_bytes() == (out_dir / name).read_bytes()
    manifest = json.loads((evidence / "manifest.json").read_text())
    assert {Path(p).name for p in manifest["products"]} == set(PRODUCTS)


def test_scored_reconstruction_has_metrics_and_figures(scan, scored):
    evidence = scan.workdir / "reports/2026-01-01T000001Z/tiny/infer"
    assert_products(scored, evidence)
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["ground_truth"] is True and metrics["n_patterns"] == len(scan.test.counts)
    for part in ("amplitude", "phase"):
        assert {"mae", "psnr", "ssim", "frc50", "frc_1_7"} <= set(metrics[part])
        assert len(metrics["frc_curves"][part]) == len(metrics["frc_curves"]["freq_cycles_per_px"])
    numbers = json.loads((evidence / "manifest.json").read_text())["numbers"]
    assert numbers["amplitude_ssim"] == metrics["amplitude"]["ssim"]


def test_frc_figure_marks_the_hologram_zeros_only_where_the_defocus_is_known(scan):
    """The simulated focused-disk probe's defocus travels in the CXI file; an NPZ has none."""
    dz = scan.test.attrs["generator"]["probe"]["defocus_m"]
    expected = physics.hologram_ctf_zeros(dz, physics.wavelength_m(scan.test.energy_eV),
                                          scan.test.object_pixel_size_m)
    marked = ctf_zero_markers(read_cxi(scan.workdir / "test.cxi"))
    assert list(marked.values()) == pytest.approx(expected, rel=1e-9)
    assert [label.split()[0] for label in marked] == ["amplitude", "phase"]
    assert ctf_zero_markers(read_npz(scan.workdir / "nogt.npz")) == {}


def test_ptychodus_product_layout(scan, scored):
    """Every dataset and attribute of the ptychodus product (docs/outputs.md), with the shapes of the scan it came from;
    positions in metres relative to the object centre."""
    d = read_cxi(scan.workdir / "test.cxi")
    n, N, (H, W), px = len(d.counts), d.N, d.object_shape, d.object_pixel_size_m
    with h5py.File(scored / "reconstruction.h5", "r") as f:
        assert f.attrs["name"] == "tiny"
        assert f.attrs["detector_object_distance_m"] == d.detector_distance_m
        assert f.attrs["probe_energy_eV"] == d.energy_eV
        assert f.attrs["probe_photon_count"] == pytest.approx(np.sum(np.abs(d.probe) ** 2))
        np.testing.assert_array_equal(f["probe_position_indexes"][()], np.arange(n))
        np.testing.assert_allclose(f["probe_position_x_m"][()],
                                   (d.positions_px[:, 1] - (W - 1) / 2) * px)
        np.testing.assert_allclose(f["probe_position_y_m"][()],
                                   (d.positions_px[:, 0] - (H - 1) / 2) * px)
        assert f["probe"].shape == (1, 1, N, N) and f["probe"].dtype.kind == "c"
        np.testing.assert_array_equal(f["probe"][0, 0], d.probe)
        assert f["object"].shape == (1, H, W) and f["object"].dtype.kind == "c"
        for item in (f["probe"], f["object"]):
            assert item.attrs["pixel_width_m"] == item.attrs["pixel_height_m"] == px
        assert (f["object"].attrs["center_x_m"], f["object"].attrs["center_y_m"]) == (0.0, 0.0)
        np.testing.assert_array_equal(f["loss_epochs"][()], [1])
        assert f["loss_values"].shape == (1,) and np.isfinite(f["loss_values"][()]).all()
        obj = f["object"][0]
    with np.load(scored / "reconstruction.npz") as z:
        np.testing.assert_array_equal(z["object"], obj)
        np.testing.assert_allclose(z["amplitude"], np.abs(obj), rtol=1e-6)
        lit = np.abs(obj) > 0  # pixels no patch covers are 0
        np.testing.assert_allclose(np.exp(1j * z["phase"][lit]), obj[lit] / np.abs(obj[lit]),
                                   atol=1e-6)
        assert z["pixel_size_m"] == px
        np.testing.assert_array_equal(z["probe_position_px"], d.positions_px)
        lo, hi = np.ceil(d.positions_px.min(0)), np.floor(d.positions_px.max(0)) + 1
        np.testing.assert_array_equal(z["scanned_region_px"], np.stack([lo, hi], 1))


def test_data_without_ground_truth_is_reconstructed_but_not_scored(scan):
    run = "2026-01-01T000002Z"
    out = infer(scan, "nogt.cxi", run)
    assert out.returncode == 0, out.stderr
    evidence = scan.workdir / f"reports/{run}/tiny/infer"
    assert_products(scan.workdir / "out" / run, evidence)
    metrics = json.loads((scan.workdir / "out" / run / "metrics.json").read_text())
    assert metrics["ground_truth"] is False
    assert not {"amplitude", "phase", "alignment", "frc_curves"} & set(metrics)
    assert "nogt.cxi holds no ground-truth object" in metrics["metrics_skipped"]
    summary = (evidence / "summary.md").read_text()
    assert "metrics against ground truth skipped: nogt.cxi holds no ground-truth" in summary
    numbers = json.loads((evidence / "manifest.json").read_text())["numbers"]
    assert numbers["ground_truth"] is False and "amplitude_ssim" not in numbers
    with np.load(scan.workdir / "out" / run / "reconstruction.npz") as z:
        assert z["object"].shape == scan.test.object_shape


def test_a_missing_data_file_is_refused_and_nothing_written(scan, capsys, monkeypatch):
    monkeypatch.chdir(scan.workdir)  # in-process: refused before torch is set up
    status = infer_main(["--model", "model.pt", "--data", "missing.cxi", "--out-dir", "out/x",
                         "--report-dir", "reports/2026-01-01T000003Z/tiny/infer"])
    assert status == 2
    assert "error: test data: missing.cxi" in capsys.readouterr().err
    assert not (scan.workdir / "out" / "x").exists()
    assert not (scan.workdir / "reports" / "2026-01-01T000003Z").exists()


# ---------------------------------------------------------------- the infer_file target

def test_infer_file_target_reconstructs_any_file_with_any_model(scan, tmp_path):
    """A PtychoPINN NPZ without objectGuess, a model from elsewhere: only infer_file runs."""
    workdir = copy_workflow(tmp_path)
    for name in ("model.pt", "nogt.npz"):
        shutil.copy(scan.workdir / name, workdir / name)
    (workdir / "fast.yaml").write_text("inference:\n  calibration_iterations: 10\n")
    config = ("--configfile", TINY, "fast.yaml", "--config")
    out = run_snakemake(workdir, "infer_file", *config, "infer_file_data=nogt.npz",
                        "infer_file_model=model.pt")
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"infer_file"}
    products = workdir / "results/tiny/infer_file/nogt"
    (evidence,) = workdir.glob("reports/*/tiny/infer_file")
    assert_products(products, evidence)
    assert json.loads((evidence / "manifest.json").read_text())["step"] == "infer_file"
    assert json.loads((products / "metrics.json").read_text())["ground_truth"] is False
    with np.load(products / "reconstruction.npz") as z:  # the NPZ's own frame and geometry
        assert z["object"].shape == read_npz(workdir / "nogt.npz").object_shape
    audit = run_step("audit", str(workdir), cwd=workdir)
    assert audit.returncode == 0, audit.stdout

    for args, messages in (((), ["infer_file_data: not set"]),
                           (("infer_file_data=gone.cxi", "infer_file_model=nope.pt"),
                            ["infer_file_data: gone.cxi not found",
                             "infer_file_model: nope.pt not found"])):
        out = run_snakemake(workdir, "infer_file", *config, "run_id=2026-01-01T000009Z", *args)
        assert out.returncode != 0
        assert all(m in out.stdout for m in messages), out.stdout
        assert not (workdir / "reports/2026-01-01T000009Z").exists()


def test_auto_inference_batch_fits_the_cache_and_does_not_change_the_patches(scan):
    """0 = auto: 16 MiB of first-layer activations on the CPU (64 groups at N = 64, 256 at
    N = 32, fewer with wider layers), 256 on CUDA; a set value is used as given. The batch
    changes the speed only: the patches are the same in one pass or in passes of 7."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    tiny = resolve_config(REPO / TINY)
    for N, scale, expected in ((64, 1, 64), (32, 1, 256), (32, 2, 128), (512, 1, 1)):
        cfg = dataclasses.replace(tiny, data=dataclasses.replace(tiny.data, N=N),
                                  model=dataclasses.replace(tiny.model, n_filters_scale=scale))
        assert inference_batch(cfg, cpu) == expected, (N, scale)
        assert inference_batch(cfg, cuda) == 256
    cfg = resolve_config(REPO / TINY, {"execution.inference_batch_size": 7})
    assert inference_batch(cfg, cpu) == 7
    model = load_model(scan.workdir / "model.pt", cfg)
    whole = resolve_config(REPO / TINY, {"execution.inference_batch_size": len(scan.test.counts)})
    in_sevens = predict_patches(model, scan.test, cfg, cpu)
    at_once = predict_patches(model, scan.test, whole, cpu)
    assert in_sevens.shape == (len(scan.test.counts), scan.test.N, scan.test.N)
    torch.testing.assert_close(in_sevens, at_once, rtol=1e-5, atol=1e-6)


def test_bfloat16_inference_runs_the_layers_in_bfloat16_close_to_float32(scan):
    """``execution.precision: bfloat16`` reaches inference: the patches change (the layers
    ran under autocast) but stay within bfloat16's rounding of float32's."""
    cfg = resolve_config(REPO / TINY)
    model = load_model(scan.workdir / "model.pt", cfg)
    single = predict_patches(model, scan.test, cfg, torch.device("cpu"))
    half = predict_patches(model, scan.test,
                           resolve_config(REPO / TINY, {"execution.precision": "bfloat16"}),
                           torch.device("cpu"))
    assert half.dtype == single.dtype == torch.complex64
    error = float((half - single).abs().square().mean() / single.abs().square().mean())
    assert 0 < error < 1e-3, error
