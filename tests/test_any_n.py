"""Measured data at any pattern size: a CXI file at N = 128 through the tiny pipeline.

The tiny overlay's simulated object (48 / 64 px) is far smaller than a 128 px patch: with
``data.source: file`` those simulation settings are not checked, not hashed and rerun
nothing. The file is written with the project's writer from a small simulation, then
stripped of what a beamline file lacks (ground truth, our /entry_1/ptycho_torch group).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import pytest
import yaml

from conftest import TINY, WorkflowRun, copy_workflow, edit_h5, jobs_run, run_snakemake
from ptycho_torch import simulate, validate
from ptycho_torch.config import DataConfig, ProbeConfig, ScanConfig
from ptycho_torch.cxi import OURS, write_cxi

N = 128
SIZE_PX = 152  # the scanned object's side: 6 x 6 raster positions at a 4 px step
EXP = "n128"
MEASURED = {"experiment": EXP, "data": {"source": "file", "train_file": "scan128.cxi", "N": N},
            "training": {"epochs": 1}}


def write_measured_cxi(path: Path) -> Path:
    """A beamline-like CXI file of ``[36, N, N]`` counts (no ground truth, no extras)."""
    geometry = DataConfig(N=N, probe=ProbeConfig(pupil_radius_px=12.0),
                          scan=ScanConfig(step_px=4.0, jitter_px=0.0))
    write_cxi(path, replace(simulate.simulate_dataset(geometry, SIZE_PX, (5, 0)),
                            ground_truth=None))
    edit_h5(path, lambda f: f.__delitem__(OURS))
    return path


@pytest.fixture(scope="module")
def run128(tmp_path_factory) -> WorkflowRun:
    """One Snakemake run of the tiny overlay on the N = 128 file."""
    workdir = copy_workflow(tmp_path_factory.mktemp("n128"))
    write_measured_cxi(workdir / "scan128.cxi")
    (workdir / "n128.yaml").write_text(yaml.safe_dump(MEASURED))
    return WorkflowRun(workdir, run_snakemake(workdir, "--configfile", TINY, "n128.yaml"))


def test_validate_accepts_the_file_at_N_128_under_the_tiny_overlay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cxi = write_measured_cxi(tmp_path / "scan128.cxi")
    tiny = yaml.safe_load(Path(__file__).parent.joinpath("configs", "tiny.yaml").read_text())
    tiny["data"].update(MEASURED["data"])
    code = validate.main(["--config-json", json.dumps(tiny), "--train-data", str(cxi),
                          "--test-data", str(cxi), "--out", "out/payload.json",
                          "--report-dir", "reports/r/n128/validate"])
    assert code == 0, capsys.readouterr().err
    found = json.loads((tmp_path / "reports/r/n128/validate/data.json").read_text())["train"]
    assert found["N"] == N and found["patterns"] == 36


@pytest.mark.slow
def test_a_file_at_N_128_runs_through_the_pipeline(run128):
    assert run128.out.returncode == 0, run128.out.stdout
    assert "too small for patches" not in run128.out.stdout
    infer = run128.workdir / "results" / EXP / "infer"
    metrics = json.loads((infer / "metrics.json").read_text())
    assert metrics["ground_truth"] is False and metrics["n_patterns"] == 36
    r = metrics["quality"]["data_consistency"]
    assert 0 < r["r_factor"] < 1
    with h5py.File(run128.workdir / "results" / EXP / "simulate" / "train.cxi") as f:
        assert f["/entry_1/instrument_1/detector_1/data"].shape == (36, N, N)


@pytest.mark.slow
def test_editing_a_simulation_setting_reruns_nothing_for_a_file(run128):
    assert run128.out.returncode == 0, run128.out.stdout
    edited = {**MEASURED, "data": {**MEASURED["data"], "nphotons": 10.0,
                                   "object": {"test_size_px": 20},
                                   "probe": {"pupil_radius_px": 100.0}}}
    (run128.workdir / "edited.yaml").write_text(yaml.safe_dump(edited))
    dry = run_snakemake(run128.workdir, "--configfile", TINY, "edited.yaml", "--dry-run")
    assert dry.returncode == 0 and jobs_run(dry.stdout) == set(), dry.stdout
