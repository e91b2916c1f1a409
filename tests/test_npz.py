"""PtychoPINN NPZ files (ptycho_torch/npz.py): the position convention, exact import/export
round trips (also through CXI), and rejection of bad or unreadable files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import npz_arrays, npz_edit, ptychopinn_npz, small_data_config
from ptycho_torch import physics
from ptycho_torch.config import DataConfig
from ptycho_torch.cxi import read_cxi, write_cxi
from ptycho_torch.dataset import DataFileError
from ptycho_torch.npz import read_npz, write_npz
from ptycho_torch.simulate import simulate_dataset


def test_npz_convention_positions_are_probe_centres_in_object_pixels(tmp_path):
    """counts = amplitude^2 and (row, col) = (ycoords, xcoords): our own forward model on
    the imported object at the imported positions gives the file's intensities."""
    arrays = ptychopinn_npz(tmp_path / "a.npz", noise=False)
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


@pytest.mark.parametrize("variant", [
    {}, {"legacy": True}, {"extras": True}, {"noise": False}, {"coords_dtype": np.float32},
    {"with_object": False},
])
def test_npz_import_then_export_is_equal_to_the_original(tmp_path, variant):
    original = ptychopinn_npz(tmp_path / "in.npz", **variant)
    if not variant.get("with_object", True):  # positions left of pixel 0: offset, undone
        original["xcoords"] = original["xcoords"] - 20.0
        np.savez(tmp_path / "in.npz", **original)
    d = read_npz(tmp_path / "in.npz")
    write_npz(tmp_path / "out.npz", d)
    out = npz_arrays(tmp_path / "out.npz")
    assert set(out) == set(original)
    for key, value in original.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape, key
        assert out[key].tobytes() == value.tobytes(), key
    assert d.attrs["npz_counts_rounded"] == variant.get("noise", True)


def test_npz_through_cxi_and_back_is_exact(tmp_path):
    original = ptychopinn_npz(tmp_path / "in.npz", extras=True)
    write_cxi(tmp_path / "mid.cxi", read_npz(tmp_path / "in.npz"))
    write_npz(tmp_path / "out.npz", read_cxi(tmp_path / "mid.cxi"))
    out = npz_arrays(tmp_path / "out.npz")
    assert set(out) == set(original)
    for key, value in original.items():
        assert out[key].dtype == value.dtype and out[key].tobytes() == value.tobytes(), key


def test_cxi_to_npz_and_back_keeps_integer_counts(tmp_path):
    d = simulate_dataset(small_data_config(), 44, (5, 0))
    write_npz(tmp_path / "s.npz", d)
    back = read_npz(tmp_path / "s.npz")
    assert back.counts.tobytes() == d.counts.tobytes()
    assert back.positions_px.tobytes() == d.positions_px.tobytes()
    assert back.probe.tobytes() == d.probe.tobytes()
    assert back.ground_truth.tobytes() == d.ground_truth.tobytes()
    z = npz_arrays(tmp_path / "s.npz")
    assert z["diffraction"].dtype == np.float32
    np.testing.assert_array_equal(z["diffraction"], np.sqrt(d.counts))


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
    arrays = ptychopinn_npz(path)
    change, name = BAD_NPZ[case]
    if change in ("nan", "negative"):
        amp = arrays["diffraction"].copy()
        amp[3, 4, 5] = np.nan if change == "nan" else -1.0
        change = {"diffraction": amp}
    npz_edit(path, **change)
    with pytest.raises(DataFileError) as err:
        read_npz(path)
    assert name in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "not npz", "single npy", "missing"])
def test_unreadable_npz_is_rejected(tmp_path, damage):
    path = tmp_path / "bad.npz"
    ptychopinn_npz(path)
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
