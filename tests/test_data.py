"""CXI files: exact round trip, layout and units, determinism, and rejection of bad files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.config import DataConfig, ExperimentConfig, ProbeConfig, ScanConfig
from ptycho_torch.data import (CountsReader, DataFileError, PtychoData, check_data_file,
                               read_cxi, read_data, read_npz, write_cxi, write_npz)
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


# ----------------------------------------------------------------- mask, saturation, extras

def _with_detector(d: PtychoData) -> PtychoData:
    mask = np.zeros((8, 8), np.uint32)
    mask[3:5, 3:5] = 0x11
    mask[0, 7] = 0x9
    return replace(d, mask=mask, saturation_counts=60.0,
                   extras={"scan_index": np.arange(6) % 2, "xcoords_start": np.linspace(0, 1, 6)})


def test_round_trip_keeps_mask_saturation_and_extras(tmp_path):
    d = _with_detector(_synthetic())
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
    write_cxi(tmp_path / "plain.cxi", _synthetic())
    return tmp_path / "plain.cxi"


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


@pytest.mark.parametrize("case", sorted(BAD_DETECTOR))
def test_bad_mask_saturation_or_extras_are_rejected(cxi, case):
    path, _ = cxi
    edit, name = BAD_DETECTOR[case]
    _edit(path, edit)
    with pytest.raises(DataFileError) as err:
        read_cxi(path)
    assert name in str(err.value) and str(path) in str(err.value)


# ----------------------------------------------------------------- streaming

def test_streamed_write_equals_in_memory_write(tmp_path):
    d = _synthetic(n=150)
    write_cxi(tmp_path / "a.cxi", d)
    blocks = (d.counts[i:i + 37] for i in range(0, 150, 37))
    write_cxi(tmp_path / "b.cxi", replace(d, counts=np.zeros((0, 8, 8), np.float32)), blocks)
    assert _sha(tmp_path / "a.cxi") == _sha(tmp_path / "b.cxi")
    with pytest.raises(ValueError, match="140 patterns of counts for 150"):
        write_cxi(tmp_path / "c.cxi", replace(d, counts=np.zeros((0, 8, 8), np.float32)),
                  [d.counts[:140]])
    assert not (tmp_path / "c.cxi").exists()


def test_counts_are_chunked_and_compressed(cxi):
    path, _ = cxi
    with h5py.File(path, "r") as f:
        ds = f[COUNTS]
        assert ds.chunks == (6, 8, 8) and ds.compression == "gzip" and ds.shuffle


def test_counts_reader_streams_blocks_and_batches(tmp_path):
    d = _synthetic(n=200)
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
    d = _synthetic(n=400)
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


# ----------------------------------------------------------------- PtychoPINN NPZ

def _ptychopinn_npz(path: Path, *, N: int = 16, n: int = 12, legacy: bool = False,
                    with_object: bool = True, extras: bool = False, noise: bool = True,
                    coords_dtype=np.float64, seed: int = 0) -> dict[str, np.ndarray]:
    """A data set written the way PtychoPINN's get_image_patches sees it: pad the object
    by N/2, translate by -(x, y) (integer here), crop N x N; amplitudes sqrt(counts)."""
    rng = np.random.default_rng(seed)
    H = W = 48
    obj = ((0.5 + 0.5 * rng.uniform(size=(H, W))) * np.exp(1j * rng.uniform(-1, 1, (H, W))))
    probe = np.zeros((N, N), complex)
    probe[N // 4: 3 * N // 4, N // 4: 3 * N // 4] = 30.0 * np.exp(1j * rng.uniform(-1, 1, (N // 2,
                                                                                         N // 2)))
    x = rng.integers(N // 2, W - N // 2, n).astype(float)
    y = rng.integers(N // 2, H - N // 2, n).astype(float)
    padded = np.pad(obj, N // 2)
    amps = []
    for xi, yi in zip(x.astype(int), y.astype(int)):
        patch = padded[yi:yi + N, xi:xi + N]  # translate by -(x, y), crop [:N, :N]
        inten = np.abs(np.fft.fftshift(np.fft.fft2(probe * patch, norm="ortho"))) ** 2
        amps.append(np.sqrt(rng.poisson(inten) if noise else inten))
    amp = np.stack(amps).astype(np.float32)
    arrays = {("diff3d" if legacy else "diffraction"):
              np.ascontiguousarray(np.moveaxis(amp, 0, -1)) if legacy else amp,
              "probeGuess": probe.astype(np.complex64),
              "xcoords": x.astype(coords_dtype), "ycoords": y.astype(coords_dtype)}
    if with_object:
        arrays["objectGuess"] = obj.astype(np.complex64)
    if extras:
        arrays.update(scan_index=np.zeros(n, np.int64), xcoords_start=x - 0.25,
                      ycoords_start=y + 0.5)
    np.savez(path, **arrays)
    return arrays


def test_npz_convention_positions_are_probe_centres_in_object_pixels(tmp_path):
    """counts = amplitude^2 and (row, col) = (ycoords, xcoords): our own forward model on
    the imported object at the imported positions gives the file's intensities."""
    arrays = _ptychopinn_npz(tmp_path / "a.npz", noise=False)
    d = read_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(d.positions_px, np.stack([arrays["ycoords"],
                                                            arrays["xcoords"]], 1))
    np.testing.assert_array_equal(d.counts, arrays["diffraction"] ** 2)
    model = physics.forward_intensity(
        torch.from_numpy(d.probe.astype(np.complex128)),
        physics.extract_patches(torch.from_numpy(d.ground_truth.astype(np.complex128)),
                                torch.from_numpy(d.positions_px), 16)).numpy()
    np.testing.assert_allclose(model, d.counts, rtol=1e-4, atol=1e-3 * d.counts.max())
    assert d.object_shape == (48, 48) and d.N == 16
    assert d.energy_eV == DataConfig().energy_eV  # geometry from the config: NPZ has none
    assert d.object_pixel_size_m == pytest.approx(physics.object_pixel_size_m(
        8000.0, 2.0, 75e-6, 16), rel=1e-12)
    assert read_data(tmp_path / "a.npz").positions_px.tobytes() == d.positions_px.tobytes()


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("variant", [
    {}, {"legacy": True}, {"extras": True}, {"noise": False}, {"coords_dtype": np.float32},
    {"with_object": False},
])
def test_npz_import_then_export_is_equal_to_the_original(tmp_path, variant):
    original = _ptychopinn_npz(tmp_path / "in.npz", **variant)
    if not variant.get("with_object", True):  # positions left of pixel 0: offset, undone
        original["xcoords"] = original["xcoords"] - 20.0
        np.savez(tmp_path / "in.npz", **original)
    d = read_npz(tmp_path / "in.npz")
    write_npz(tmp_path / "out.npz", d)
    out = _npz_arrays(tmp_path / "out.npz")
    assert set(out) == set(original)
    for key, value in original.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape, key
        assert out[key].tobytes() == value.tobytes(), key
    assert d.attrs["npz_counts_rounded"] == variant.get("noise", True)


def test_npz_through_cxi_and_back_is_exact(tmp_path):
    original = _ptychopinn_npz(tmp_path / "in.npz", extras=True)
    write_cxi(tmp_path / "mid.cxi", read_npz(tmp_path / "in.npz"))
    write_npz(tmp_path / "out.npz", read_cxi(tmp_path / "mid.cxi"))
    out = _npz_arrays(tmp_path / "out.npz")
    assert set(out) == set(original)
    for key, value in original.items():
        assert out[key].dtype == value.dtype and out[key].tobytes() == value.tobytes(), key


def test_cxi_to_npz_and_back_keeps_integer_counts(tmp_path):
    d = simulate_dataset(_small_data_config(), 44, (5, 0))
    write_npz(tmp_path / "s.npz", d)
    back = read_npz(tmp_path / "s.npz")
    assert back.counts.tobytes() == d.counts.tobytes()
    assert back.positions_px.tobytes() == d.positions_px.tobytes()
    assert back.probe.tobytes() == d.probe.tobytes()
    assert back.ground_truth.tobytes() == d.ground_truth.tobytes()
    z = _npz_arrays(tmp_path / "s.npz")
    assert z["diffraction"].dtype == np.float32
    np.testing.assert_array_equal(z["diffraction"], np.sqrt(d.counts))


def _npz_edit(path: Path, **changes) -> None:
    arrays = _npz_arrays(path)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


BAD_NPZ = {
    "missing diffraction": ({"diffraction": None}, "diffraction"),
    "missing probeGuess": ({"probeGuess": None}, "probeGuess"),
    "missing xcoords": ({"xcoords": None}, "xcoords"),
    "diffraction 2-D": ({"diffraction": np.ones((12, 256), np.float32)}, "diffraction"),
    "diffraction wrong N": ({"diffraction": np.ones((12, 8, 8), np.float32)}, "diffraction"),
    "diffraction text": ({"diffraction": np.full((12, 16, 16), "1")}, "diffraction"),
    "probe real": ({"probeGuess": np.ones((16, 16), np.float32)}, "probeGuess"),
    "coords too short": ({"ycoords": np.ones(11)}, "ycoords"),
    "extras wrong length": ({"scan_index": np.zeros(3, np.int64)}, "scan_index"),
    "NaN amplitude": ("nan", "diffraction"),
    "negative amplitude": ("negative", "diffraction"),
    "NaN coordinate": ({"xcoords": np.full(12, np.nan)}, "xcoords"),
    "object array": ({"objectGuess": np.array([None] * 4, dtype=object)}, "objectGuess"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_is_rejected_naming_the_array(tmp_path, case):
    path = tmp_path / "bad.npz"
    arrays = _ptychopinn_npz(path)
    change, name = BAD_NPZ[case]
    if change in ("nan", "negative"):
        amp = arrays["diffraction"].copy()
        amp[3, 4, 5] = np.nan if change == "nan" else -1.0
        change = {"diffraction": amp}
    _npz_edit(path, **change)
    with pytest.raises(DataFileError) as err:
        read_npz(path)
    assert name in str(err.value) and str(path) in str(err.value)


def test_npz_positions_outside_the_object_are_named_by_the_npz_arrays(tmp_path):
    path = tmp_path / "off.npz"
    arrays = _ptychopinn_npz(path)
    x = arrays["xcoords"].copy()
    x[2] = 46.0  # a 16 px patch centred there leaves the 48 px objectGuess
    _npz_edit(path, xcoords=x)
    (problem,) = check_data_file(path, _cfg(N=16))
    assert "xcoords/ycoords" in problem and str(path) in problem
    assert "leaves the object frame (48, 48)" in problem


@pytest.mark.parametrize("damage", ["truncated", "not npz", "single npy", "missing"])
def test_unreadable_npz_is_rejected(tmp_path, damage):
    path = tmp_path / "bad.npz"
    _ptychopinn_npz(path)
    if damage == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "not npz":
        path.write_text("hello\n")
    elif damage == "single npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    else:
        path.unlink()
    with pytest.raises(DataFileError) as err:
        read_npz(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------- the probe's photon scale

def _lit_scan(probe_factor: float, n: int = 200, N: int = 16, seed: int = 4) -> PtychoData:
    """Patterns of a flat object of intensity transmission ``t_k`` uniform in [0.4, 1]:
    Poisson counts of ``t_k |F P|^2`` (``P``: a 3 px Gaussian of 1e5 photons), given with
    the probe times ``sqrt(probe_factor)`` (another program's normalisation)."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.meshgrid(np.arange(N) - N / 2, np.arange(N) - N / 2))
    probe = np.exp(-r ** 2 / 18.0).astype(np.complex128)
    probe *= np.sqrt(1e5 / np.square(np.abs(probe)).sum())
    bare = physics.far_field(torch.from_numpy(probe)).abs().square().numpy()
    t = rng.uniform(0.4, 1.0, n)
    d = _synthetic(n, N, seed)
    return replace(d, counts=rng.poisson(t[:, None, None] * bare).astype(np.float32),
                   probe=(probe * np.sqrt(probe_factor)).astype(np.complex64))


@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_a_probe_off_by_a_factor_is_rescaled_to_the_counts(tmp_path, factor):
    true = _lit_scan(1.0)
    given = _lit_scan(factor)
    write_cxi(tmp_path / "off.cxi", given)
    d = read_data(tmp_path / "off.cxi", DataConfig(N=16))
    photons = np.square(np.abs(d.probe.astype(np.complex128))).sum()
    true_photons = np.square(np.abs(true.probe.astype(np.complex128))).sum()
    # the brightest patterns pass ~all of the probe's photons (t_k up to 1): the true scale
    assert photons == pytest.approx(true_photons, rel=0.02)
    record = d.attrs["probe_scale"]
    assert record["applied"] is True
    assert record["factor"] == pytest.approx(photons / record["given_probe_photons"], rel=1e-5)
    assert record["factor"] == pytest.approx(1 / factor, rel=0.02)
    assert np.allclose(np.angle(d.probe), np.angle(given.probe), atol=1e-6)  # shape kept
    write_cxi(tmp_path / "again.cxi", d)  # re-read: consistent now, the record is kept
    again = read_data(tmp_path / "again.cxi", DataConfig(N=16))
    assert np.array_equal(again.probe, d.probe) and again.attrs["probe_scale"] == record


def test_a_probe_that_fits_the_counts_is_kept_and_rescaling_can_be_turned_off(tmp_path):
    write_cxi(tmp_path / "ok.cxi", _lit_scan(1.0))
    kept = read_data(tmp_path / "ok.cxi", DataConfig(N=16))
    assert np.array_equal(kept.probe, _lit_scan(1.0).probe)
    assert kept.attrs["probe_scale"] == {"factor": 1.0, "applied": False}
    write_cxi(tmp_path / "off.cxi", _lit_scan(1e3))
    as_given = read_data(tmp_path / "off.cxi", DataConfig(N=16, probe_rescale=False))
    assert np.array_equal(as_given.probe, _lit_scan(1e3).probe)
    assert "probe_scale" not in as_given.attrs
