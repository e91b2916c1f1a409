"""Bring your own data: measured files as the data source, validate's checks and report,
fine-tuning from a model.pt, and the whole workflow on a file without ground truth.

The measured files are written with the project's writers from a tiny simulation and then
stripped of what a beamline file lacks (ground truth, our own /entry_1/ptycho_torch group).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY, WorkflowRun, copy_workflow, jobs_run, run_snakemake, run_step
from ptycho_torch import physics, simulate, train, validate
from ptycho_torch.config import DataConfig, ExperimentConfig, ProbeConfig, ScanConfig
from ptycho_torch.config_factory import ConfigError, resolve_config
from ptycho_torch.cxi import DETECTOR, OURS, SOURCE, TRANSLATION, read_cxi, write_cxi
from ptycho_torch.data import measured_sets, read_data
from ptycho_torch.dataset import DataFileError, PtychoData
from ptycho_torch.npz import write_npz
from ptycho_torch.model import PtychoPINN, save_checkpoint
from ptycho_torch.evidence import file_entry, load_manifest
from ptycho_torch.train import train_model

N = 16
GEOMETRY = DataConfig(N=N, probe=ProbeConfig(pupil_radius_px=3.0),
                      scan=ScanConfig(step_px=4.0, jitter_px=0.0))
TINY_SETTINGS = {"data": {"N": N}, "training": {"batch_size": 8, "epochs": 1},
                 "execution": {"threads": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _scan(size: int, seed: int) -> PtychoData:
    return simulate.simulate_dataset(GEOMETRY, size, (seed, 0))


def _foreign_cxi(path: Path, d: PtychoData) -> Path:
    """``d`` as a CXI file from another program: no ground truth, no /entry_1/ptycho_torch."""
    write_cxi(path, replace(d, ground_truth=None))
    with h5py.File(path, "a") as f:
        del f[OURS]
    return path


@pytest.fixture(scope="module")
def scan() -> PtychoData:
    return _scan(40, 3)


# ----------------------------------------------------------------- reading measured files

def test_foreign_cxi_positions_come_from_the_translation(tmp_path, scan):
    d = read_cxi(_foreign_cxi(tmp_path / "a.cxi", scan))
    offset = d.positions_px - scan.positions_px  # one whole-pixel shift for every position
    assert np.allclose(offset, offset[0], atol=1e-9)
    assert np.allclose(offset[0], np.round(offset[0]), atol=1e-9)
    first = d.positions_px.min(axis=0) - N / 2  # the first patch starts at the frame's edge
    assert np.all((first >= -1e-9) & (first < 1))
    assert d.object_pixel_size_m == pytest.approx(
        1.239841984e-6 / 8000.0 * 2.0 / (N * 75e-6), rel=1e-9)  # lambda z / (N dx)
    assert np.array_equal(d.counts, scan.counts) and d.ground_truth is None
    # a file that stores the probe position there reads the same with translation="probe"
    with h5py.File(tmp_path / "a.cxi", "a") as f:
        f[TRANSLATION][...] = -f[TRANSLATION][()]
    assert np.allclose(read_cxi(tmp_path / "a.cxi", translation="probe").positions_px,
                       d.positions_px)
    mirrored = read_cxi(tmp_path / "a.cxi").positions_px  # the wrong reading mirrors the scan
    assert np.allclose(mirrored + scan.positions_px, (mirrored + scan.positions_px)[0])


def test_translation_in_the_wrong_units_is_refused(tmp_path, scan):
    path = _foreign_cxi(tmp_path / "um.cxi", scan)
    with h5py.File(path, "a") as f:
        f[TRANSLATION][...] = f[TRANSLATION][()] * 1e6  # micrometres stored as metres
    with pytest.raises(DataFileError, match="must be in metres") as err:
        read_cxi(path)
    assert TRANSLATION in str(err.value) and str(path) in str(err.value)


def test_one_file_is_split_into_a_training_and_a_held_out_test_scan(tmp_path, scan):
    write_npz(tmp_path / "scan.npz", scan)
    cfg = replace(GEOMETRY, source="file", train_file=str(tmp_path / "scan.npz"),
                  test_fraction=0.25)
    train, test = measured_sets(cfg)
    n = len(scan.positions_px)
    assert len(test.positions_px) == math.ceil(0.25 * n) and len(train.positions_px) + len(
        test.positions_px) == n
    both = np.concatenate([train.positions_px, test.positions_px])
    assert sorted(map(tuple, both)) == sorted(map(tuple, read_data(cfg.train_file).positions_px))
    assert test.positions_px[:, 1].min() >= train.positions_px[:, 1].max()  # a band at the right
    assert train.object_shape == test.object_shape
    same_train, same_test = measured_sets(replace(cfg, test_fraction=0.0))
    assert np.array_equal(same_test.counts, same_train.counts)  # default: the training scan


def test_conversion_step_records_the_measured_files_as_inputs(tmp_path, monkeypatch, scan):
    monkeypatch.chdir(tmp_path)
    _foreign_cxi(tmp_path / "mine.cxi", scan)
    settings = {"data": {"source": "file", "train_file": "mine.cxi", "test_fraction": 0.2}}
    code = simulate.main(["--config-json", json.dumps(settings), "--train-out", "train.cxi",
                          "--test-out", "test.cxi", "--report-dir", "reports/r/x/simulate"])
    assert code == 0
    manifest = json.loads((tmp_path / "reports/r/x/simulate/manifest.json").read_text())
    assert list(manifest["inputs"]) == ["mine.cxi"]
    assert len(read_cxi("train.cxi").positions_px) + len(read_cxi("test.cxi").positions_px) == \
        len(scan.positions_px)


# ----------------------------------------------------------------- validate

def _validate(train: Path, test: Path, **settings) -> int:
    """validate's CLI (in the working directory) with the tiny settings and ``settings``
    (``section__key=value``); returns its exit status."""
    tree = json.loads(json.dumps(TINY_SETTINGS))
    for key, value in settings.items():
        section, name = key.split("__")
        tree.setdefault(section, {})[name] = value
    code = validate.main(["--config-json", json.dumps(tree), "--train-data", str(train),
                          "--test-data", str(test), "--out", "out/payload.json",
                          "--report-dir", "reports/r/tiny/validate"])
    return code


def _edit(path: Path, fn) -> Path:
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def _replace(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


BAD = {  # case -> (edit of a good file, words the message must hold)
    "positions outside the object frame": (
        lambda f: f[f"{OURS}/probe_position_px"].__setitem__(3, [2.0, 30.0]),
        ("probe_position_px", "leaves the object frame")),
    "probe of the wrong size": (
        lambda f: _replace(f, f"{SOURCE}/illumination", np.ones((8, 8), np.complex64)),
        (f"{SOURCE}/illumination", "(16, 16)")),
    "NaN counts": (lambda f: f[f"{DETECTOR}/data"].__setitem__((2, 5, 5), np.nan),
                   (f"{DETECTOR}/data", "NaN")),
    "amplitudes instead of counts": (
        lambda f: f[f"{DETECTOR}/data"].__setitem__(Ellipsis, np.sqrt(f[f"{DETECTOR}/data"][()])),
        (f"{DETECTOR}/data", "not whole numbers", "look like amplitudes")),
    "scaled detector signal": (
        lambda f: f[f"{DETECTOR}/data"].__setitem__(Ellipsis, 0.37 * f[f"{DETECTOR}/data"][()]),
        (f"{DETECTOR}/data", "not whole numbers", "photon counts")),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validate_refuses_a_bad_file_naming_the_problem(tmp_path, monkeypatch, capsys, scan,
                                                        case):
    monkeypatch.chdir(tmp_path)
    edit, words = BAD[case]
    good, bad = tmp_path / "good.cxi", tmp_path / "bad.cxi"
    write_cxi(good, scan)
    write_cxi(bad, scan)
    _edit(bad, edit)
    assert _validate(bad, good) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and str(bad) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()


def test_validate_refuses_patterns_of_another_size_than_data_N(tmp_path, monkeypatch, capsys,
                                                                scan):
    monkeypatch.chdir(tmp_path)
    write_cxi(tmp_path / "a.cxi", scan)
    assert _validate(tmp_path / "a.cxi", tmp_path / "a.cxi", data__N=32) == 2
    assert "data.N: 32 does not match" in capsys.readouterr().err


def test_validate_reports_what_the_data_hold(tmp_path, monkeypatch, scan):
    monkeypatch.chdir(tmp_path)
    _foreign_cxi(tmp_path / "a.cxi", scan)
    assert _validate(tmp_path / "a.cxi", tmp_path / "a.cxi") == 0
    found = json.loads((tmp_path / "reports/r/tiny/validate/data.json").read_text())["train"]
    totals = scan.counts.astype(np.float64).sum(axis=(1, 2))
    assert found["patterns"] == len(totals) and found["N"] == N
    assert found["counts_per_pattern_mean"] == pytest.approx(totals.mean())
    assert found["counts_per_pattern_max"] == pytest.approx(totals.max())
    assert found["counts_max_pixel"] == scan.counts.max()
    assert found["scan_step_px"] == pytest.approx(4.0)  # the raster step (no jitter)
    assert found["scan_extent_px"] == pytest.approx(np.ptp(scan.positions_px, axis=0).tolist())
    diameter = physics.probe_diameter_px(torch.from_numpy(scan.probe))
    assert found["overlap"] == pytest.approx(1 - 4.0 / diameter)
    assert found["probe_photons"] == pytest.approx(float(np.sum(np.abs(scan.probe) ** 2)), rel=1e-5)
    assert found["warnings"] == []
    summary = (tmp_path / "reports/r/tiny/validate/summary.md").read_text()
    assert "| train_patterns |" in summary and "| train_overlap |" in summary


# ----------------------------------------------------------------- fine-tuning

def _config(**training) -> ExperimentConfig:
    return resolve_config(TINY_SETTINGS, {f"training.{k}": v for k, v in training.items()})


def _checkpoint(path: Path, cfg: ExperimentConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = PtychoPINN(cfg.model, cfg.data.N)
    save_checkpoint(path, model, cfg, {})
    return model.state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_starts_from_the_given_weights(tmp_path, scan):
    source = _checkpoint(tmp_path / "source.pt", _config(), seed=123)
    model, _, _ = train_model(_config(epochs=0, init_model=str(tmp_path / "source.pt")), scan,
                              torch.device("cpu"))
    assert _equal(model.state_dict(), source)
    with pytest.raises(ConfigError, match="training.init_model"):  # random weights, untrained
        _config(epochs=0)


@pytest.mark.slow
def test_a_resume_state_wins_over_the_initial_model(tmp_path, scan):
    source = _checkpoint(tmp_path / "source.pt", _config(), seed=123)
    cfg = _config(epochs=1, init_model=str(tmp_path / "source.pt"))
    resume = tmp_path / "resume_state.pt"
    trained, _, _ = train_model(cfg, scan, torch.device("cpu"), resume)  # one epoch, state saved
    resumed, history, _ = train_model(cfg, scan, torch.device("cpu"), resume)
    assert len(history) == 1 and _equal(resumed.state_dict(), trained.state_dict())
    assert not _equal(resumed.state_dict(), source)


@pytest.mark.slow
def test_the_train_manifest_records_the_initial_model(tmp_path, monkeypatch, scan):
    """The start weights are an input of the trained model: the audit can check them."""
    monkeypatch.chdir(tmp_path)
    write_cxi(tmp_path / "a.cxi", scan)
    _checkpoint(tmp_path / "source.pt", _config(), seed=123)
    assert _validate(tmp_path / "a.cxi", tmp_path / "a.cxi", training__epochs=0,
                     training__init_model="source.pt") == 0
    assert train.main(["--payload", "out/payload.json", "--data", "a.cxi", "--out-dir", "out",
                       "--report-dir", "reports/r/tiny/train"]) == 0
    manifest, problem = load_manifest(tmp_path / "reports/r/tiny/train/manifest.json")
    assert problem is None
    assert manifest["inputs"]["source.pt"] == file_entry(tmp_path / "source.pt")
    assert set(manifest["inputs"]) == {"out/payload.json", "a.cxi", "source.pt"}


@pytest.mark.parametrize("theirs,key", [
    ({"model": {"gridsize": 1}}, "model.gridsize"),
    ({"model": {"n_filters_scale": 2}}, "model.n_filters_scale"),
    ({"data": {"N": 32}}, "data.N")])
def test_validate_refuses_an_initial_model_of_another_network(tmp_path, monkeypatch, capsys, scan,
                                                              theirs, key):
    monkeypatch.chdir(tmp_path)
    write_cxi(tmp_path / "a.cxi", scan)
    other = resolve_config({**TINY_SETTINGS, **theirs})
    _checkpoint(tmp_path / "other.pt", other, seed=1)
    assert _validate(tmp_path / "a.cxi", tmp_path / "a.cxi",
                     training__init_model="other.pt") == 2
    err = capsys.readouterr().err
    assert key in err and "other.pt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rescale", [True, False])
def test_a_probe_of_another_normalisation_is_rescaled_and_reported(tmp_path, monkeypatch, scan,
                                                                    rescale):
    """A foreign file whose probe carries 1000 x the photons of its counts: converted with
    ``data.probe_rescale`` the probe is fitted to the counts and validate reports the factor;
    without, validate warns that the brightest patterns hold only a tiny share of it."""
    monkeypatch.chdir(tmp_path)
    _foreign_cxi(tmp_path / "mine.cxi", replace(scan, probe=scan.probe * np.float32(1e3 ** 0.5)))
    settings = {**TINY_SETTINGS, "data": {**TINY_SETTINGS["data"], "source": "file",
                                          "train_file": "mine.cxi", "probe_rescale": rescale}}
    assert simulate.main(["--config-json", json.dumps(settings), "--train-out", "train.cxi",
                          "--test-out", "test.cxi", "--report-dir", "reports/r/tiny/simulate"]) == 0
    assert _validate(tmp_path / "train.cxi", tmp_path / "test.cxi", data__probe_rescale=rescale,
                     data__source="file", data__train_file="mine.cxi") == 0
    found = json.loads((tmp_path / "reports/r/tiny/validate/data.json").read_text())["train"]
    summary = (tmp_path / "reports/r/tiny/validate/summary.md").read_text()
    photons = np.square(np.abs(read_cxi("train.cxi").probe.astype(np.complex128))).sum()
    given = np.square(np.abs(scan.probe.astype(np.complex128))).sum() * 1e3
    if rescale:
        factor = found["probe_scale"]["factor"]
        assert found["probe_scale"]["applied"] and photons == pytest.approx(factor * given, rel=1e-5)
        assert 0.5e-3 < factor < 1.0e-3  # the counts carry under 1/1000 of the given photons
        assert "| train_probe_scale_factor |" in summary and "rescaled by" in summary
        assert not any("brightest patterns hold" in w for w in found["warnings"])
    else:
        assert found["probe_scale"] == {"factor": 1.0, "applied": False}
        assert photons == pytest.approx(given, rel=1e-5)
        assert any("brightest patterns hold only" in w for w in found["warnings"])


# ----------------------------------------------------------------- the whole workflow

EXP = "measured"


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> WorkflowRun:
    """One Snakemake run on a foreign CXI file (training) and a PtychoPINN NPZ (test), both
    without ground truth, through a tiny overlay."""
    workdir = copy_workflow(tmp_path_factory.mktemp("measured"))
    tiny = resolve_config(workdir / TINY)
    _foreign_cxi(workdir / "beamline.cxi",
                 simulate.simulate_dataset(tiny.data, tiny.data.object.train_size_px, (5, 0)))
    write_npz(workdir / "other.npz", replace(simulate.simulate_dataset(
        tiny.data, tiny.data.object.test_size_px, (5, 1)), ground_truth=None))
    (workdir / "measured.yaml").write_text(yaml.safe_dump({
        "experiment": EXP, "data": {"source": "file", "train_file": "beamline.cxi",
                                    "test_file": "other.npz"},
        "training": {"epochs": 1}, "inference": {"calibration_iterations": 30}}))
    out = run_snakemake(workdir, "--configfile", TINY, "measured.yaml")
    assert out.returncode == 0, out.stdout
    return WorkflowRun(workdir, out)


@pytest.mark.slow
def test_measured_files_give_a_reconstruction_and_quality_without_ground_truth(measured):
    infer = measured.workdir / "results" / EXP / "infer"
    for name in ("reconstruction.h5", "reconstruction.png", "quality.png"):
        assert (infer / name).stat().st_size > 0
    metrics = json.loads((infer / "metrics.json").read_text())
    assert metrics["ground_truth"] is False
    assert not {"amplitude", "phase"} & set(metrics)  # no ground-truth metrics
    r = metrics["quality"]["data_consistency"]
    assert 0 < r["r_factor_poisson_expected"] < r["r_factor"] < 1
    assert len(r["per_position"]) == metrics["n_patterns"]
    frc = metrics["quality"]["half_data_frc"]
    assert 0 < frc["frc_half_bit_cycles_per_px"] <= 0.5 and frc["resolution_half_bit_nm"] > 0
    assert sum(frc["halves"]) == metrics["n_patterns"]
    (run,) = (measured.workdir / "reports").glob("20*")
    summary = (run / EXP / "infer" / "summary.md").read_text()
    assert "| r_factor |" in summary and "| half_frc_half_bit_cycles_per_px |" in summary
    assert "Without ground truth: R-factor" in (run / "index.md").read_text()
    manifest = json.loads((run / EXP / "simulate" / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"beamline.cxi", "other.npz"}
    found = json.loads((run / EXP / "validate" / "data.json").read_text())
    assert found["train"]["ground_truth"] is False and found["train"]["patterns"] > 0
    audit = run_step("audit", "reports", cwd=measured.workdir)  # the evidence is complete
    assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.mark.slow
def test_a_changed_measured_file_reruns_the_workflow(measured):
    dry = run_snakemake(measured.workdir, "--configfile", TINY, "measured.yaml", "--dry-run")
    assert dry.returncode == 0 and jobs_run(dry.stdout) == set(), dry.stdout
    tiny = resolve_config(measured.workdir / TINY)  # another scan under the same name
    write_npz(measured.workdir / "other.npz", replace(simulate.simulate_dataset(
        tiny.data, tiny.data.object.test_size_px, (6, 1)), ground_truth=None))
    dry = run_snakemake(measured.workdir, "--configfile", TINY, "measured.yaml", "--dry-run")
    assert {"simulate", "validate", "train", "infer", "report"} <= jobs_run(dry.stdout), dry.stdout
