"""CXI files: exact round trip, layout and units, determinism, and rejection of bad files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycho_torch.config import DataConfig, ExperimentConfig, ProbeConfig, ScanConfig
from ptycho_torch.data import DataFileError, PtychoData, check_data_file, read_cxi, write_cxi
from ptycho_torch.simulate import simulate_dataset

DET = "/entry_1/instrument_1/detector_1"
SRC = "/entry_1/instrument_1/source_1"
OURS = "/entry_1/ptycho_torch"
COUNTS = f"{DET}/data"
PROBE = f"{SRC}/illumination"
POSITIONS = f"{OURS}/probe_position_px"
E_CHARGE = 1.602176634e-19  # J per eV (exact, SI)


def _synthetic(n: int = 6, N: int = 8, seed: int = 0) -> PtychoData:
    rng = np.random.default_rng(seed)
    return PtychoData(
        counts=rng.poisson(50.0, (n, N, N)).astype(np.float32),
        probe=(rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))).astype(np.complex64),
        positions_px=np.stack([rng.uniform(5, 14, n), rng.uniform(5, 17, n)], 1),
        object_shape=(24, 28), energy_eV=6200.0, detector_distance_m=1.5,
        detector_pixel_size_m=55e-6, object_pixel_size_m=2.1e-8,
        ground_truth=(rng.uniform(0.5, 1, (24, 28)) * np.exp(1j * rng.uniform(-1, 1, (24, 28)))
                      ).astype(np.complex64),
        attrs={"nphotons": 1.0e4, "seed": [3, 0], "generator": {"object": {"kind": "grf"}},
               "note": "synthetic"})


@pytest.fixture
def cxi(tmp_path: Path) -> tuple[Path, PtychoData]:
    d = _synthetic()
    path = tmp_path / "scan.cxi"
    write_cxi(path, d)
    return path, d


def _cfg(N: int = 8, batch_size: int = 2) -> ExperimentConfig:
    cfg = ExperimentConfig()
    return replace(cfg, data=replace(cfg.data, N=N),
                   training=replace(cfg.training, batch_size=batch_size))


# ----------------------------------------------------------------- round trip and layout

def test_round_trip_is_exact(cxi):
    path, d = cxi
    back = read_cxi(path)
    for name in ("counts", "probe", "positions_px", "ground_truth"):
        a, b = getattr(d, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name  # bitwise
    assert back.object_shape == d.object_shape
    for name in ("energy_eV", "detector_distance_m", "detector_pixel_size_m",
                 "object_pixel_size_m"):
        assert getattr(back, name) == pytest.approx(getattr(d, name), rel=1e-15), name
    assert back.attrs == d.attrs
    assert back.N == 8


def test_header_only_read(cxi):
    path, d = cxi
    head = read_cxi(path, load_counts=False)
    assert head.counts.shape == (0, 8, 8)
    assert head.positions_px.tobytes() == d.positions_px.tobytes()


def test_cxi_layout_units_and_soft_link(cxi):
    path, d = cxi
    with h5py.File(path, "r") as f:
        assert f["/cxi_version"][()] == 160
        link = f.get("/entry_1/data_1/data", getlink=True)
        assert isinstance(link, h5py.SoftLink) and link.path == COUNTS
        assert np.array_equal(f["/entry_1/data_1/data"][()], d.counts)
        assert f[COUNTS].dtype == np.float32 and f[COUNTS].shape == (6, 8, 8)
        assert f[PROBE].dtype == np.complex64
        assert f[POSITIONS].dtype == np.float64
        assert f[f"{OURS}/ground_truth_object"].dtype == np.complex64
        assert f[f"{SRC}/energy"][()] == pytest.approx(6200.0 * E_CHARGE, rel=1e-12)  # joules
        assert f[f"{DET}/distance"][()] == 1.5
        assert f[f"{DET}/x_pixel_size"][()] == 55e-6 and f[f"{DET}/y_pixel_size"][()] == 55e-6


def test_translation_is_minus_probe_position_in_metres(cxi):
    """CXI translation is the *sample* translation: (x, y, z) = -(col, row, 0) * pixel."""
    path, d = cxi
    with h5py.File(path, "r") as f:
        t = f["/entry_1/sample_1/geometry_1/translation"][()]
    assert t.shape == (6, 3)
    rows, cols = d.positions_px[:, 0], d.positions_px[:, 1]
    np.testing.assert_allclose(t[:, 0], -cols * 2.1e-8, rtol=1e-15)
    np.testing.assert_allclose(t[:, 1], -rows * 2.1e-8, rtol=1e-15)
    np.testing.assert_array_equal(t[:, 2], 0.0)


# ----------------------------------------------------------------- determinism

def _small_data_config() -> DataConfig:
    return DataConfig(N=16, nphotons=1e4, probe=ProbeConfig(pupil_radius_px=4.0),
                      scan=ScanConfig(step_px=6.0))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = _small_data_config()
    paths = []
    for name, seed in (("a", (5, 0)), ("b", (5, 0)), ("c", (6, 0)), ("d", (5, 1))):
        paths.append(tmp_path / f"{name}.cxi")
        write_cxi(paths[-1], simulate_dataset(cfg, 44, seed))
    a, b, c, d = (_sha(p) for p in paths)
    assert a == b
    assert len({a, c, d}) == 3
    # and the difference is in the science, not only in metadata
    ra, rc = read_cxi(paths[0]), read_cxi(paths[2])
    assert not np.array_equal(ra.ground_truth, rc.ground_truth)
    assert not np.array_equal(ra.counts, rc.counts)


def test_simulated_dataset_is_consistent(tmp_path):
    cfg = _small_data_config()
    d = simulate_dataset(cfg, 44, (5, 0))
    write_cxi(tmp_path / "s.cxi", d)
    assert check_data_file(tmp_path / "s.cxi", _cfg(N=16)) == []
    back = read_cxi(tmp_path / "s.cxi")
    assert back.attrs["seed"] == [5, 0] and back.attrs["nphotons"] == 1e4
    assert back.attrs["generator"]["scan"]["step_px"] == 6.0
    assert back.ground_truth.shape == back.object_shape == (44, 44)
    assert back.counts.sum(axis=(1, 2)).mean() == pytest.approx(1e4, rel=0.01)


# ----------------------------------------------------------------- rejected files

def _edit(path: Path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f: h5py.File, name: str, data) -> None:
    del f[name]
    f[name] = data


BAD_FILES = {
    "missing probe": (lambda f: f.__delitem__(PROBE), PROBE),
    "missing counts": (lambda f: f.__delitem__(COUNTS), COUNTS),
    "missing positions": (lambda f: f.__delitem__(POSITIONS), POSITIONS),
    "missing energy": (lambda f: f.__delitem__(f"{SRC}/energy"), f"{SRC}/energy"),
    "counts 2-D": (lambda f: _replace(f, COUNTS, np.zeros((48, 8), np.float32)), COUNTS),
    "counts not square": (lambda f: _replace(f, COUNTS, np.zeros((6, 8, 9), np.float32)), COUNTS),
    "counts as strings": (lambda f: _replace(f, COUNTS, np.full((6, 8, 8), b"12")), COUNTS),
    "probe real": (lambda f: _replace(f, PROBE, np.ones((8, 8), np.float32)), PROBE),
    "probe wrong shape": (lambda f: _replace(f, PROBE, np.ones((16, 16), np.complex64)), PROBE),
    "positions wrong count": (lambda f: _replace(f, POSITIONS, np.ones((5, 2))), POSITIONS),
    "positions 3 columns": (lambda f: _replace(f, POSITIONS, np.ones((6, 3))), POSITIONS),
    "energy negative": (lambda f: _replace(f, f"{SRC}/energy", -1.0), f"{SRC}/energy"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_dataset_is_rejected_naming_its_path(cxi, case):
    path, _ = cxi
    edit, dataset = BAD_FILES[case]
    _edit(path, edit)
    with pytest.raises(DataFileError) as err:
        read_cxi(path)
    assert dataset in str(err.value) and str(path) in str(err.value)
    problems = check_data_file(path, _cfg())
    assert len(problems) == 1 and dataset in problems[0]


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")])
def test_bad_counts_are_found_by_check_data_file(cxi, value, word):
    path, _ = cxi

    def poison(f):
        f[COUNTS][4, 3, 2] = value
    _edit(path, poison)
    problems = check_data_file(path, _cfg())
    assert len(problems) == 1
    assert COUNTS in problems[0] and word in problems[0] and str(path) in problems[0]


def test_nan_positions_and_probe_are_found(cxi):
    path, _ = cxi

    def poison(f):
        f[POSITIONS][2, 0] = np.nan
        f[PROBE][0, 0] = np.nan
    _edit(path, poison)
    problems = check_data_file(path, _cfg())
    assert len(problems) == 2
    assert any(POSITIONS in p for p in problems) and any(PROBE in p for p in problems)


def test_positions_outside_object_frame(cxi):
    path, _ = cxi
    _edit(path, lambda f: f[POSITIONS].__setitem__((0, 1), 40.0))  # object is 24 x 28
    problems = check_data_file(path, _cfg())
    assert len(problems) == 1 and POSITIONS in problems[0]


def test_check_data_file_cross_checks_config(cxi):
    path, _ = cxi
    assert check_data_file(path, _cfg()) == []
    problems = check_data_file(path, _cfg(N=16, batch_size=7))  # file: N = 8, 6 patterns
    assert [p.split(":")[0] for p in problems] == ["data.N", "training.batch_size"]
    # the test role does not need a batch of positions
    assert check_data_file(path, _cfg(batch_size=7), role="test") == []


def test_truncated_file_is_rejected(cxi):
    path, _ = cxi
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match="HDF5|truncated") as err:
        read_cxi(path)
    assert str(path) in str(err.value)
    problems = check_data_file(path, _cfg())
    assert len(problems) == 1 and str(path) in problems[0]


def test_non_hdf5_file_is_rejected(tmp_path):
    path = tmp_path / "notes.cxi"
    path.write_text("this is not HDF5\n")
    with pytest.raises(DataFileError, match="not a readable HDF5") as err:
        read_cxi(path)
    assert str(path) in str(err.value)
    assert len(check_data_file(path, _cfg())) == 1


def test_missing_file_is_rejected(tmp_path):
    path = tmp_path / "nowhere.cxi"
    with pytest.raises(DataFileError, match="file not found") as err:
        read_cxi(path)
    assert str(path) in str(err.value)
    problems = check_data_file(path, _cfg(), role="test")
    assert problems == [f"test data: {path}: file not found"]


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    d = _synthetic()
    bad = replace(d, counts=np.zeros((6, 8, 8), np.float32), probe=None)  # fails mid-write
    with pytest.raises(Exception):
        write_cxi(tmp_path / "x.cxi", bad)
    assert list(tmp_path.iterdir()) == []


def test_attrs_json_round_trip_keeps_plain_strings(tmp_path):
    d = replace(_synthetic(), attrs={"text": "[not json", "list_text": "[1, 2]", "n": 3,
                                     "nested": {"a": [1, 2.5, None]}})
    write_cxi(tmp_path / "a.cxi", d)
    back = read_cxi(tmp_path / "a.cxi").attrs
    assert back == d.attrs
    assert isinstance(back["list_text"], str)
    with h5py.File(tmp_path / "a.cxi", "r") as f:  # stored as JSON text, as documented
        assert json.loads(f[OURS].attrs["nested"]) == {"a": [1, 2.5, None]}
