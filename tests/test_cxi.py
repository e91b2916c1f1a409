"""CXI files (ptycho_torch/cxi.py): exact round trip, layout and units, determinism,
rejection of bad files, mask/saturation/extras, streamed writes and lazy reads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import edit_h5, small_data_config, synthetic_scan
from ptycho_torch.cxi import CountsReader, read_cxi, write_cxi
from ptycho_torch.dataset import DataFileError, PtychoData
from ptycho_torch.simulate import simulate_dataset

DET = "/entry_1/instrument_1/detector_1"
SRC = "/entry_1/instrument_1/source_1"
OURS = "/entry_1/ptycho_torch"
COUNTS = f"{DET}/data"
PROBE = f"{SRC}/illumination"
POSITIONS = f"{OURS}/probe_position_px"
E_CHARGE = 1.602176634e-19  # J per eV (exact, SI)


# ----------------------------------------------------------------- round trip and layout

def test_round_trip_is_exact(cxi_scan):
    path, d = cxi_scan
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


def test_header_only_read(cxi_scan):
    path, d = cxi_scan
    head = read_cxi(path, load_counts=False)
    assert head.counts.shape == (0, 8, 8)
    assert head.positions_px.tobytes() == d.positions_px.tobytes()


def test_cxi_layout_units_and_soft_link(cxi_scan):
    path, d = cxi_scan
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


def test_translation_is_minus_probe_position_in_metres(cxi_scan):
    """CXI translation is the *sample* translation: (x, y, z) = -(col, row, 0) * pixel."""
    path, d = cxi_scan
    with h5py.File(path, "r") as f:
        t = f["/entry_1/sample_1/geometry_1/translation"][()]
    assert t.shape == (6, 3)
    rows, cols = d.positions_px[:, 0], d.positions_px[:, 1]
    np.testing.assert_allclose(t[:, 0], -cols * 2.1e-8, rtol=1e-15)
    np.testing.assert_allclose(t[:, 1], -rows * 2.1e-8, rtol=1e-15)
    np.testing.assert_array_equal(t[:, 2], 0.0)


# ----------------------------------------------------------------- determinism

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = small_data_config()
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


# ----------------------------------------------------------------- rejected files

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

BAD_DETECTOR = {
    "mask wrong shape": (lambda f: f.__setitem__(f"{DET}/mask", np.zeros((4, 4), np.uint32)),
                         f"{DET}/mask"),
    "mask float": (lambda f: f.__setitem__(f"{DET}/mask", np.zeros((8, 8))), f"{DET}/mask"),
    "mask negative": (lambda f: f.__setitem__(f"{DET}/mask", -np.ones((8, 8), np.int32)),
                      f"{DET}/mask"),
    "saturation text": (lambda f: f[COUNTS].attrs.__setitem__("saturation_level", "high"),
                        "saturation_level"),
    "saturation negative": (lambda f: f[COUNTS].attrs.__setitem__("saturation_level", -3.0),
                            "saturation_level"),
    "extras wrong length": (lambda f: f.__setitem__(f"{OURS}/extras/scan_index", np.arange(4)),
                            f"{OURS}/extras/scan_index"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES) + sorted(BAD_DETECTOR))
def test_bad_dataset_is_rejected_naming_its_path(cxi_scan, case):
    path, _ = cxi_scan
    edit, dataset = {**BAD_FILES, **BAD_DETECTOR}[case]
    edit_h5(path, edit)
    with pytest.raises(DataFileError) as err:
        read_cxi(path)
    assert dataset in str(err.value) and str(path) in str(err.value)


def test_truncated_file_is_rejected(cxi_scan):
    path, _ = cxi_scan
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match="HDF5|truncated") as err:
        read_cxi(path)
    assert str(path) in str(err.value)


def test_non_hdf5_file_is_rejected(tmp_path):
    path = tmp_path / "notes.cxi"
    path.write_text("this is not HDF5\n")
    with pytest.raises(DataFileError, match="not a readable HDF5") as err:
        read_cxi(path)
    assert str(path) in str(err.value)


def test_missing_file_is_rejected(tmp_path):
    path = tmp_path / "nowhere.cxi"
    with pytest.raises(DataFileError, match="file not found") as err:
        read_cxi(path)
    assert str(path) in str(err.value)


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    d = synthetic_scan()
    bad = replace(d, counts=np.zeros((6, 8, 8), np.float32), probe=None)  # fails mid-write
    with pytest.raises(Exception):
        write_cxi(tmp_path / "x.cxi", bad)
    assert list(tmp_path.iterdir()) == []


def test_attrs_json_round_trip_keeps_plain_strings(tmp_path):
    d = replace(synthetic_scan(), attrs={"text": "[not json", "list_text": "[1, 2]", "n": 3,
                                     "nested": {"a": [1, 2.5, None]}})
    write_cxi(tmp_path / "a.cxi", d)
    back = read_cxi(tmp_path / "a.cxi").attrs
    assert back == d.attrs
    assert isinstance(back["list_text"], str)
    with h5py.File(tmp_path / "a.cxi", "r") as f:  # stored as JSON text, as documented
        assert json.loads(f[OURS].attrs["nested"]) == {"a": [1, 2.5, None]}


# ----------------------------------------------------------------- mask, saturation, extras

def _with_detector(d: PtychoData) -> PtychoData:
    mask = np.zeros((8, 8), np.uint32)
    mask[3:5, 3:5] = 0x11
    mask[0, 7] = 0x9
    return replace(d, mask=mask, saturation_counts=60.0,
                   extras={"scan_index": np.arange(6) % 2, "xcoords_start": np.linspace(0, 1, 6)})


def test_round_trip_keeps_mask_saturation_and_extras(tmp_path):
    d = _with_detector(synthetic_scan())
    write_cxi(tmp_path / "m.cxi", d)
    back = read_cxi(tmp_path / "m.cxi")
    assert back.mask.dtype == np.uint32 and np.array_equal(back.mask, d.mask)
    assert back.saturation_counts == 60.0
    assert set(back.extras) == set(d.extras)
    for k in d.extras:
        assert back.extras[k].dtype == d.extras[k].dtype
        assert back.extras[k].tobytes() == d.extras[k].tobytes()
    assert np.array_equal(back.valid_pixels(), d.mask == 0)
    with h5py.File(tmp_path / "m.cxi", "r") as f:
        assert f[f"{DET}/mask"].dtype == np.uint32
        assert f[COUNTS].attrs["saturation_level"] == 60.0
    plain = read_cxi(_synthetic_path(tmp_path))
    assert plain.mask is None and plain.saturation_counts == 0.0 and plain.extras == {}
    assert plain.valid_pixels().all()


def _synthetic_path(tmp_path: Path) -> Path:
    write_cxi(tmp_path / "plain.cxi", synthetic_scan())
    return tmp_path / "plain.cxi"


# ----------------------------------------------------------------- streaming

def test_streamed_write_equals_in_memory_write(tmp_path):
    d = synthetic_scan(n=150)
    write_cxi(tmp_path / "a.cxi", d)
    blocks = (d.counts[i:i + 37] for i in range(0, 150, 37))
    write_cxi(tmp_path / "b.cxi", replace(d, counts=np.zeros((0, 8, 8), np.float32)), blocks)
    assert _sha(tmp_path / "a.cxi") == _sha(tmp_path / "b.cxi")
    with pytest.raises(ValueError, match="140 patterns of counts for 150"):
        write_cxi(tmp_path / "c.cxi", replace(d, counts=np.zeros((0, 8, 8), np.float32)),
                  [d.counts[:140]])
    assert not (tmp_path / "c.cxi").exists()


def test_counts_are_chunked_and_compressed(cxi_scan):
    path, _ = cxi_scan
    with h5py.File(path, "r") as f:
        ds = f[COUNTS]
        assert ds.chunks == (6, 8, 8) and ds.compression == "gzip" and ds.shuffle


def test_counts_reader_streams_blocks_and_batches(tmp_path):
    d = synthetic_scan(n=200)
    write_cxi(tmp_path / "big.cxi", d)
    with CountsReader(tmp_path / "big.cxi") as counts:
        assert len(counts) == 200 and counts.shape == (200, 8, 8)
        assert counts.chunk_patterns == 64
        starts = []
        for start, block in counts.blocks(48):
            assert block.dtype == np.float32 and len(block) <= 48
            assert np.array_equal(block, d.counts[start:start + 48])
            starts.append(start)
        assert starts == [0, 48, 96, 144, 192]
        idx = np.array([[150, 3], [3, 77], [199, 0]])  # any order, repeats, any shape
        assert np.array_equal(counts[idx], d.counts[idx])
        assert np.array_equal(counts[-1], d.counts[-1]) and np.array_equal(counts[5:9],
                                                                           d.counts[5:9])
        assert counts.mean() == pytest.approx(d.counts.mean(dtype=np.float64), rel=1e-12)
        with pytest.raises(IndexError):
            counts[np.array([200])]
    with pytest.raises(DataFileError, match="file not found"):
        CountsReader(tmp_path / "none.cxi")


def test_counts_reader_reports_a_truncated_file(tmp_path):
    d = synthetic_scan(n=400)
    d = replace(d, counts=np.random.default_rng(0).uniform(0, 1e6, (400, 8, 8)).astype(
        np.float32))  # incompressible, so the counts are the end of the file
    write_cxi(tmp_path / "t.cxi", d)
    raw = (tmp_path / "t.cxi").read_bytes()
    with CountsReader(tmp_path / "t.cxi") as counts:
        assert counts[0].shape == (8, 8)
    (tmp_path / "t.cxi").write_bytes(raw[: int(len(raw) * 0.9)])
    try:
        reader = CountsReader(tmp_path / "t.cxi")
    except DataFileError as exc:  # the header may already be cut
        assert str(tmp_path / "t.cxi") in str(exc)
        return
    with reader, pytest.raises(DataFileError, match="truncated") as err:
        for _ in reader.blocks():
            pass
    assert COUNTS in str(err.value)
