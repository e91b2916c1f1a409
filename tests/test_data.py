"""The dispatch by format (ptycho_torch/data.py): data_format, read_data and read_probe on
both formats, and check_data_file's report of unusable files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import edit_h5, npz_edit, ptychopinn_npz, small_data_config
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.cxi import read_cxi, write_cxi
from ptycho_torch.data import FORMATS, check_data_file, data_format, read_data, read_probe
from ptycho_torch.dataset import DataFileError
from ptycho_torch.npz import read_npz
from ptycho_torch.simulate import simulate_dataset

COUNTS = "/entry_1/instrument_1/detector_1/data"
PROBE = "/entry_1/instrument_1/source_1/illumination"
POSITIONS = "/entry_1/ptycho_torch/probe_position_px"


def _cfg(N: int = 8, batch_size: int = 2) -> ExperimentConfig:
    cfg = ExperimentConfig()
    return replace(cfg, data=replace(cfg.data, N=N),
                   training=replace(cfg.training, batch_size=batch_size))


# ----------------------------------------------------------------- the format, by suffix

@pytest.mark.parametrize("name,kind", [("scan.cxi", "cxi"), ("a/b.H5", "cxi"),
                                       ("scan.hdf5", "cxi"), ("x.NPZ", "npz")])
def test_data_format_follows_the_suffix_in_any_case(name, kind):
    assert data_format(name) == kind == data_format(Path(name))
    assert FORMATS[Path(name).suffix.lower()] == kind


@pytest.mark.parametrize("name", ["scan.tif", "scan", "scan.cxi.bak", "reconstruction.json"])
def test_an_unknown_suffix_is_a_clear_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(DataFileError, match="unknown data format") as err:
        data_format(path)
    assert str(path) in str(err.value) and ".cxi" in str(err.value) and ".npz" in str(err.value)
    with pytest.raises(DataFileError, match="unknown data format"):
        read_data(path)
    assert check_data_file(path, _cfg()) == [f"train data: {err.value}"]


def test_read_data_and_read_probe_read_either_format(tmp_path, cxi_scan):
    cxi_path, d = cxi_scan
    h5_path = tmp_path / "copy.h5"
    h5_path.write_bytes(cxi_path.read_bytes())
    for path in (cxi_path, h5_path):
        assert read_data(path).positions_px.tobytes() == d.positions_px.tobytes()
        probe, name = read_probe(path)
        assert name == PROBE and probe.tobytes() == d.probe.tobytes()
    arrays = ptychopinn_npz(tmp_path / "a.npz")
    assert (read_data(tmp_path / "a.npz").positions_px.tobytes()
            == read_npz(tmp_path / "a.npz").positions_px.tobytes())
    probe, name = read_probe(tmp_path / "a.npz")
    assert name == "probeGuess" and probe.tobytes() == arrays["probeGuess"].tobytes()


# ----------------------------------------------------------------- check_data_file

def _counts_2d(f) -> None:
    del f[COUNTS]
    f[COUNTS] = np.zeros((48, 8), np.float32)


UNUSABLE = {
    "missing probe": lambda path: edit_h5(path, lambda f: f.__delitem__(PROBE)),
    "counts 2-D": lambda path: edit_h5(path, _counts_2d),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "not HDF5": lambda path: path.write_text("this is not HDF5\n"),
    "missing": lambda path: path.unlink(),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_an_unusable_file_is_one_problem_naming_it(cxi_scan, case):
    path, _ = cxi_scan
    UNUSABLE[case](path)
    (problem,) = check_data_file(path, _cfg(), role="test")
    assert problem.startswith("test data: ") and str(path) in problem


def test_simulated_dataset_is_consistent(tmp_path):
    cfg = small_data_config()
    d = simulate_dataset(cfg, 44, (5, 0))
    write_cxi(tmp_path / "s.cxi", d)
    assert check_data_file(tmp_path / "s.cxi", _cfg(N=16)) == []
    back = read_cxi(tmp_path / "s.cxi")
    assert back.attrs["seed"] == [5, 0] and back.attrs["nphotons"] == 1e4
    assert back.attrs["generator"]["scan"]["step_px"] == 6.0
    assert back.ground_truth.shape == back.object_shape == (44, 44)
    assert back.counts.sum(axis=(1, 2)).mean() == pytest.approx(1e4, rel=0.01)


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")])
def test_bad_counts_are_found_by_check_data_file(cxi_scan, value, word):
    path, _ = cxi_scan

    def poison(f):
        f[COUNTS][4, 3, 2] = value
    edit_h5(path, poison)
    problems = check_data_file(path, _cfg())
    assert len(problems) == 1
    assert COUNTS in problems[0] and word in problems[0] and str(path) in problems[0]


def test_nan_positions_and_probe_are_found(cxi_scan):
    path, _ = cxi_scan

    def poison(f):
        f[POSITIONS][2, 0] = np.nan
        f[PROBE][0, 0] = np.nan
    edit_h5(path, poison)
    problems = check_data_file(path, _cfg())
    assert len(problems) == 2
    assert any(POSITIONS in p for p in problems) and any(PROBE in p for p in problems)


def test_positions_outside_object_frame(cxi_scan):
    path, _ = cxi_scan
    edit_h5(path, lambda f: f[POSITIONS].__setitem__((0, 1), 40.0))  # object is 24 x 28
    problems = check_data_file(path, _cfg())
    assert len(problems) == 1 and POSITIONS in problems[0]


def test_check_data_file_cross_checks_config(cxi_scan):
    path, _ = cxi_scan
    assert check_data_file(path, _cfg()) == []
    problems = check_data_file(path, _cfg(N=16, batch_size=7))  # file: N = 8, 6 patterns
    assert [p.split(":")[0] for p in problems] == ["data.N", "training.batch_size"]
    # the test role does not need a batch of positions
    assert check_data_file(path, _cfg(batch_size=7), role="test") == []


def test_npz_positions_outside_the_object_are_named_by_the_npz_arrays(tmp_path):
    path = tmp_path / "off.npz"
    arrays = ptychopinn_npz(path)
    x = arrays["xcoords"].copy()
    x[2] = 46.0  # a 16 px patch centred there leaves the 48 px objectGuess
    npz_edit(path, xcoords=x)
    (problem,) = check_data_file(path, _cfg(N=16))
    assert "xcoords/ycoords" in problem and str(path) in problem
    assert "leaves the object frame (48, 48)" in problem
