"""The probe warm-up (``model.probe_source: iterative``): pty-chi refines a wrong probe guess
on the training scan, the PINN trains and reconstructs with it, and every record says where
the probe came from."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY, WorkflowRun, copy_workflow, jobs_run, run_snakemake, synthetic_scan
from ptycho_torch import infer, simulate, train
from ptycho_torch.config_factory import ConfigError, load_checkpoint, resolve_config
from ptycho_torch.cxi import write_cxi
from ptycho_torch.dataset import true_positions
from ptycho_torch.metrics import position_rms_error, probe_error
from ptycho_torch.ptychi_solver import PTYCHI_MISSING, ptychi_version
from ptycho_torch.warmup import (WarmedUp, apply_warmup, checkpoint_probe, keep_photons,
                                 read_warmup, scan_digest, warm_up, write_warmup)

needs_ptychi = pytest.mark.skipif(ptychi_version() is None, reason=PTYCHI_MISSING)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# a tiny scan (64 patterns of 16 x 16) whose file records the probe 3 mm further from focus
# than the true one; LSQML mini-batches of 16 so that 30 epochs make enough updates
WRONG_PROBE = {"data": {"N": 16, "object": {"train_size_px": 48, "test_size_px": 64},
                        "probe": {"pupil_radius_px": 3.0, "given_defocus_m": 3.0e-3},
                        "scan": {"step_px": 4.0}},
               "model": {"probe_source": "iterative", "probe_warmup_epochs": 30},
               "iterative": {"batch_size": 16}, "execution": {"threads": 1}}


def _warmed(n: int = 6, N: int = 8, corrected: bool = False) -> tuple[WarmedUp, object]:
    d = synthetic_scan(n, N)
    probe = (d.probe * 0.5 + 0.1).astype(np.complex64)
    return WarmedUp(probe, d.positions_px + (0.25 if corrected else 0.0), d.probe,
                    {"position_correction": corrected, "seconds": 1.0, "probe_change": 0.5,
                     "position_change_rms_px": 0.25 * corrected}), d


def test_the_warm_up_file_round_trips_and_applies(tmp_path):
    warmed, d = _warmed(corrected=True)
    write_warmup(tmp_path / "probe.npz", warmed)
    back = read_warmup(tmp_path / "probe.npz")
    np.testing.assert_array_equal(back.probe, warmed.probe)
    np.testing.assert_array_equal(back.positions_px, warmed.positions_px)
    assert back.record == warmed.record and back.positions_corrected
    trained_with = apply_warmup(d, back, positions=True)  # the warmed-up scan itself
    np.testing.assert_array_equal(trained_with.probe, warmed.probe)
    np.testing.assert_array_equal(trained_with.positions_px, warmed.positions_px)
    other = apply_warmup(d, back, positions=False)  # another scan: its own positions
    np.testing.assert_array_equal(other.positions_px, d.positions_px)
    with pytest.raises(ValueError, match="probe"):
        apply_warmup(synthetic_scan(6, 16), back, positions=False)


def test_a_warm_up_with_more_modes_than_the_guess_gives_the_pinn_its_modes(tmp_path):
    """iterative.probe_modes: 3 on a single-mode guess: training and inference take the
    warm-up's three modes."""
    warmed, d = _warmed(N=8)
    modes = np.stack([warmed.probe, 0.5 * warmed.probe.T, 0.2 * warmed.probe[::-1]])
    warmed = replace(warmed, probe=modes.astype(np.complex64))
    assert d.probe.shape == (8, 8)
    assert apply_warmup(d, warmed, positions=True).probe.shape == (3, 8, 8)
    cfg = resolve_config(None, {"model.probe_source": "iterative"})
    torch.save({"meta": train.probe_meta(cfg, warmed)}, tmp_path / "model.pt")
    probe, _ = infer.warmed_up_beam(tmp_path / "model.pt", cfg, d)
    assert probe.shape == (3, 8, 8)
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(np.sum(np.abs(d.probe) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="probe"):  # another side is another beam
        apply_warmup(synthetic_scan(6, 16), warmed, positions=False)


def test_the_warmed_up_probe_keeps_the_given_photons():
    d = synthetic_scan()
    scaled = keep_photons(0.3 * d.probe, d.probe)
    assert np.sum(np.abs(scaled) ** 2) == pytest.approx(np.sum(np.abs(d.probe) ** 2), rel=1e-5)
    assert probe_error(scaled, d.probe) < 1e-6


def test_train_needs_the_warm_up_file_exactly_with_probe_source_iterative(tmp_path):
    given, iterative = resolve_config(), resolve_config(None, {"model.probe_source": "iterative"})
    assert train.warmed_up_probe(given, None) is None
    with pytest.raises(ConfigError, match="needed"):
        train.warmed_up_probe(iterative, None)
    with pytest.raises(ConfigError, match="not used"):
        train.warmed_up_probe(given, tmp_path / "probe.npz")
    assert checkpoint_probe({}, given) is None
    with pytest.raises(ValueError, match="retrain"):
        checkpoint_probe({}, iterative)
    probe = np.ones((4, 4), np.complex64)
    np.testing.assert_array_equal(
        checkpoint_probe({"probe_warmup": torch.from_numpy(probe)}, iterative), probe)


def test_inference_uses_the_corrected_positions_only_on_the_scan_they_were_corrected_on(
        tmp_path):
    cfg = resolve_config(None, {"model.probe_source": "iterative"})
    warmed, d = _warmed(corrected=True)
    warmed = replace(warmed, record={**warmed.record, "scan_sha256": scan_digest(d)})
    torch.save({"meta": train.probe_meta(cfg, warmed)}, tmp_path / "model.pt")
    probe, positions = infer.warmed_up_beam(tmp_path / "model.pt", cfg, d)
    assert probe_error(probe, warmed.probe) < 1e-6
    np.testing.assert_array_equal(positions, warmed.positions_px)  # the recipe: the same scan
    other = replace(d, counts=d.counts + 1)  # another scan at the same recorded positions
    assert scan_digest(other) != scan_digest(d)
    assert infer.warmed_up_beam(tmp_path / "model.pt", cfg, other)[1] is None
    uncorrected = replace(warmed, record={**warmed.record, "position_correction": False})
    torch.save({"meta": train.probe_meta(cfg, uncorrected)}, tmp_path / "model.pt")
    assert infer.warmed_up_beam(tmp_path / "model.pt", cfg, d)[1] is None


@needs_ptychi
def test_the_warm_up_recovers_a_wrong_probe_guess():
    cfg = resolve_config(WRONG_PROBE)
    d = simulate.simulate_dataset(cfg.data, cfg.data.object.train_size_px, (cfg.seed, 0))
    warmed = warm_up(d, cfg, gpu=False)
    given, final = probe_error(d.probe, d.true_probe), probe_error(warmed.probe, d.true_probe)
    assert final < 0.6 * given, (given, final)
    assert warmed.probe.shape == d.probe.shape and not warmed.positions_corrected
    np.testing.assert_array_equal(warmed.positions_px, d.positions_px)
    assert np.sum(np.abs(warmed.probe) ** 2) == pytest.approx(np.sum(np.abs(d.probe) ** 2),
                                                              rel=1e-4)
    assert warmed.record["epochs"] == 30 and warmed.record["probe_change"] > 0


# ----------------------------------------------------------------- the workflow

EXP = "tiny_warmup"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> WorkflowRun:
    """The tiny pipeline up to infer with a wrong probe guess and probe_source iterative."""
    workdir = copy_workflow(tmp_path_factory.mktemp("warmup"))
    overlay = {**WRONG_PROBE, "experiment": EXP, "training": {"epochs": 1}}
    del overlay["execution"]
    (workdir / "warmup.yaml").write_text(yaml.safe_dump(overlay))
    out = run_snakemake(workdir, "infer", "--configfile", TINY, "warmup.yaml")
    assert out.returncode == 0, out.stdout
    return WorkflowRun(workdir, out)


@needs_ptychi
@pytest.mark.slow
def test_the_pipeline_trains_and_reconstructs_with_the_warmed_up_probe(pipeline):
    assert {"probe_warmup", "train", "infer"} <= jobs_run(pipeline.out.stdout)
    results = pipeline.workdir / "results" / EXP
    payload = json.loads((results / "validate" / "payload.json").read_text())
    assert payload["config"]["model"]["probe_source"] == "iterative"
    meta = load_checkpoint(results / "train" / "model.pt")["meta"]
    assert meta["probe_source"] == "iterative" and meta["probe_warmup_epochs"] == 30
    warmed = read_warmup(results / "probe_warmup" / "probe.npz")
    np.testing.assert_array_equal(meta["probe_warmup"].numpy(), warmed.probe)
    metrics = json.loads((results / "infer" / "metrics.json").read_text())
    assert metrics["probe"]["refined"]
    assert metrics["probe"]["error"] < 0.6 * metrics["probe"]["given_error"]
    with np.load(results / "infer" / "reconstruction.npz") as f:  # the probe used
        assert probe_error(f["probe"], warmed.probe) < 1e-5
    (run,) = (pipeline.workdir / "reports").glob("20*")
    for step in ("probe_warmup", "train", "infer"):
        manifest = json.loads((run / EXP / step / "manifest.json").read_text())
        assert manifest["numbers"]["probe_source"] == "iterative", step
        assert (run / EXP / step / "probe.png").stat().st_size > 0, step
    train_manifest = json.loads((run / EXP / "train" / "manifest.json").read_text())
    assert any(k.endswith("probe.npz") for k in train_manifest["inputs"])


def test_the_measured_scan_example_plans_the_warm_up(tmp_path):
    """config/examples/measured_scan.yaml, its file replaced by a small CXI, as a dry run."""
    workdir = copy_workflow(tmp_path)
    example = yaml.safe_load((workdir / "config/examples/measured_scan.yaml").read_text())
    path = workdir / example["data"]["train_file"]
    path.parent.mkdir(parents=True)
    write_cxi(path, replace(synthetic_scan(12, 16), ground_truth=None))
    (workdir / "n16.yaml").write_text(yaml.safe_dump({"data": {"N": 16}}))
    out = run_snakemake(workdir, "--dry-run", "--configfile",
                        "config/examples/measured_scan.yaml", "n16.yaml")
    assert out.returncode == 0, out.stdout
    assert {"simulate", "validate", "probe_warmup", "train", "infer"} <= jobs_run(out.stdout)
    assert "--probe results/measured_scan/probe_warmup/probe.npz" in out.stdout


@needs_ptychi
@pytest.mark.slow
def test_the_measured_scan_recipe_reconstructs_its_scan_at_the_corrected_positions(tmp_path):
    """config/examples/measured_scan.yaml on a small file whose recorded positions are off
    by 0.5 px: the warm-up corrects them (3 modes from the single-mode guess), the PINN
    trains with them, and infer reconstructs the same scan at them. (How much the
    correction is worth: benchmarks/realistic_scan.py.)"""
    workdir = copy_workflow(tmp_path)
    example = yaml.safe_load((workdir / "config/examples/measured_scan.yaml").read_text())
    cfg = resolve_config({**WRONG_PROBE, "data": {**WRONG_PROBE["data"], "scan": {
        "step_px": 4.0, "position_error_px": 0.5}}})
    scan = simulate.simulate_dataset(cfg.data, 64, (cfg.seed, 0))
    path = workdir / example["data"]["train_file"]
    path.parent.mkdir(parents=True)
    write_cxi(path, scan)
    (workdir / "small.yaml").write_text(yaml.safe_dump({
        "data": {"N": 16}, "training": {"epochs": 1}, "model": {"probe_warmup_epochs": 20},
        "iterative": {"position_correction": True, "batch_size": 16}}))
    out = run_snakemake(workdir, "infer", "--configfile", "config/examples/measured_scan.yaml",
                        "small.yaml")
    assert out.returncode == 0, out.stdout
    results = workdir / "results" / example["experiment"]
    warmed = read_warmup(results / "probe_warmup" / "probe.npz")
    assert warmed.positions_corrected and warmed.probe.shape == (3, 16, 16)
    metrics = json.loads((results / "infer" / "metrics.json").read_text())
    assert metrics["positions"]["refined"]  # scored at the positions used: the warm-up's
    truth = true_positions(scan)
    assert metrics["positions"]["rms_error_px"] == pytest.approx(
        position_rms_error(warmed.positions_px, truth))
    assert metrics["positions"]["given_rms_error_px"] == pytest.approx(
        position_rms_error(scan.positions_px, truth))
    with np.load(results / "infer" / "reconstruction.npz") as f:  # the positions used
        np.testing.assert_allclose(f["probe_position_px"], warmed.positions_px)
        assert f["probe"].shape == (3, 16, 16)
    (run,) = (workdir / "reports").glob("20*")
    infer_manifest = json.loads((run / example["experiment"] / "infer" / "manifest.json")
                                .read_text())
    assert infer_manifest["numbers"]["positions_from_warmup"] is True


def test_without_ptychi_the_warm_up_fails_naming_the_install(tmp_path, monkeypatch):
    import sys
    from ptycho_torch import probe_warmup
    monkeypatch.setitem(sys.modules, "ptychi", None)  # `import ptychi` now fails
    path = tmp_path / "train.cxi"
    write_cxi(path, synthetic_scan(12, 16))
    step = tmp_path / "reports/2026-01-01T000000Z/tiny/probe_warmup"
    code = probe_warmup.main(["--config-json", json.dumps({"model": {
        "probe_source": "iterative"}, "data": {"N": 16}}), "--data", str(path),
        "--out", str(tmp_path / "probe.npz"), "--report-dir", str(step)])
    assert code == 1 and not (tmp_path / "probe.npz").exists()
    assert "make iterative" in (step / "summary.md").read_text()
