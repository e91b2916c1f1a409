"""PtychoPINN NPZ data files: :func:`read_npz`, :func:`write_npz`.

Layout: ``diffraction`` (legacy ``diff3d``) float32 amplitudes ``sqrt(counts)``
``[n, N, N]`` (legacy ``[N, N, n]``), ``probeGuess`` complex ``[N, N]`` (``[K, N, N]``
for ``K >= 2`` incoherent probe modes, an extension; one mode stays 2-D), ``objectGuess``
complex ``[H, W]`` (optional), ``xcoords``/``ycoords`` ``[n]``. Assumed convention
(PtychoPINN's ``get_image_patches``: pad the object by N/2, translate by ``-(x, y)``, crop
N x N): the probe centre of pattern ``k`` is ``objectGuess[ycoords[k], xcoords[k]]``, i.e.
our ``probe_position_px = (ycoords, xcoords)`` with no offset, in objectGuess pixels.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch import physics
from ptycho_torch.config import DataConfig
from ptycho_torch.dataset import DataFileError, PtychoData, frame_for
from ptycho_torch.files import atomic_path

PROBE = "probeGuess"
POSITIONS = "xcoords/ycoords"
NPZ_AMPLITUDE_KEYS = ("diffraction", "diff3d")
NPZ_EXTRA_KEYS = ("scan_index", "xcoords_start", "ycoords_start")


def _npz_array(z: Any, key: str, ndim: int | tuple[int, ...], kinds: str,
               where: str) -> np.ndarray:
    """Array ``key`` of an open NPZ with ``ndim`` dims (or one of them) and a dtype kind in
    ``kinds``."""
    if key not in z.files:
        raise DataFileError(f"{where}: missing array {key}")
    try:
        arr = z[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataFileError(f"{where}: {key} cannot be read without pickle ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFileError(f"{where}: {key} cannot be read ({exc}): truncated file?") from None
    if arr.ndim not in np.atleast_1d(ndim):
        raise DataFileError(f"{where}: {key} has shape {arr.shape}, expected {ndim} dimensions")
    if arr.dtype.kind not in kinds:
        raise DataFileError(f"{where}: {key} has dtype {arr.dtype}, expected kind {kinds!r}")
    return arr


def _open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    """``path`` opened as an NPZ archive (no pickle); raises :class:`DataFileError` naming
    the file when it is missing, not a zip archive, or a single ``.npy`` array."""
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable NPZ file ({exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataFileError(f"{path}: not an NPZ archive (a single .npy array?)")
    return z


def read_npz(path: str | Path, geometry: DataConfig | None = None) -> PtychoData:
    """Import a PtychoPINN NPZ data set (see the module notes for the layout and convention).

    * counts = amplitude**2 in float32 (``diffraction``, else ``diff3d``; a legacy
      ``[N, N, n]`` array, recognised by ``probeGuess``'s shape, is transposed),
      rounded to whole numbers when all squares are whole to float32 precision;
      amplitudes must be finite and non-negative (float64 amplitudes are rounded to
      float32, the format's type, so only float32 files round-trip exactly). If the
      file's amplitudes were normalised rather than photon counts, so are the counts:
      the Poisson loss then sees the wrong noise level.
    * positions (row, col) = (``ycoords``, ``xcoords``) in ``objectGuess`` pixels. Without
      ``objectGuess`` the object frame is the smallest holding every patch; should a
      patch then start left of/above pixel 0, all positions are moved by the integer
      ``attrs["npz_position_offset_px"]`` (undone on export, to float64 rounding).
    * ``probeGuess`` is kept as is (its scale is the file's); ``objectGuess`` becomes
      the ground truth that inference scores against.
    * NPZ files hold no geometry: energy, distance and detector pixel come from
      ``geometry`` (default :class:`DataConfig`), the object pixel from those.

    What :func:`write_npz` needs to rebuild the file (key names, layout, dtypes) is
    kept in ``attrs``; ``scan_index``/``xcoords_start``/``ycoords_start`` in ``extras``.
    Raises :class:`DataFileError` naming the file and the array.
    """
    where, geometry = str(path), geometry or DataConfig()
    with _open_npz(path) as z:
        key = next((k for k in NPZ_AMPLITUDE_KEYS if k in z.files), None)
        if key is None:
            raise DataFileError(f"{where}: missing array diffraction (or legacy diff3d)")
        amp = _npz_array(z, key, 3, "fiu", where)
        probe = physics.single_mode(_npz_array(z, PROBE, (2, 3), "c", where))
        x = _npz_array(z, "xcoords", 1, "fiu", where)
        y = _npz_array(z, "ycoords", 1, "fiu", where)
        obj = _npz_array(z, "objectGuess", 2, "c", where) if "objectGuess" in z.files else None
        extras = {k: _npz_array(z, k, 1, "fiub", where) for k in NPZ_EXTRA_KEYS if k in z.files}
    if probe.ndim == 3 and (not len(probe) or probe.shape[1] != probe.shape[2]):
        raise DataFileError(f"{where}: {PROBE} has shape {probe.shape}, expected [N, N] or "
                            "[K, N, N] (K >= 1 probe modes)")
    amp, layout = _amplitudes_nNN(amp, probe.shape[-2:], key, where)
    n, N = amp.shape[0], amp.shape[-1]
    _check_npz_shapes(where, key, n, N, probe, x, y, extras)
    if not np.isfinite(amp).all() or (amp < 0).any():
        raise DataFileError(f"{where}: {key} holds NaN, infinite or negative amplitudes")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataFileError(f"{where}: xcoords/ycoords hold NaN or infinite positions")
    counts, rounded = _counts_from_amplitudes(amp.astype(np.float32))
    positions = np.stack([y, x], axis=1).astype(np.float64)
    offset = np.zeros(2)
    if obj is None:
        offset = np.maximum(0.0, np.ceil(N / 2 - positions.min(axis=0)))
        positions = positions + offset
    pixel = physics.object_pixel_size_m(geometry.energy_eV, geometry.detector_distance_m,
                                        geometry.detector_pixel_size_m, N)
    attrs = {"source_file": Path(path).name, "npz_amplitude_key": key, "npz_layout": layout,
             "npz_dtypes": {"amplitude": str(amp.dtype), "probeGuess": str(probe.dtype),
                            "xcoords": str(x.dtype), "ycoords": str(y.dtype),
                            **({"objectGuess": str(obj.dtype)} if obj is not None else {})}}
    if offset.any():
        attrs["npz_position_offset_px"] = offset.tolist()
    attrs["npz_counts_rounded"] = rounded
    return PtychoData(
        counts=counts, probe=probe.astype(np.complex64), positions_px=positions,
        object_shape=obj.shape if obj is not None else frame_for(positions, N),
        energy_eV=geometry.energy_eV, detector_distance_m=geometry.detector_distance_m,
        detector_pixel_size_m=geometry.detector_pixel_size_m, object_pixel_size_m=pixel,
        ground_truth=obj.astype(np.complex64) if obj is not None else None, attrs=attrs,
        extras=extras)


def _counts_from_amplitudes(amp: np.ndarray) -> tuple[np.ndarray, bool]:
    """float32 counts ``amp**2``, rounded to whole numbers when every square is one to
    float32 precision (amplitudes stored as sqrt(photon counts)); and whether rounded.

    Either way ``sqrt(counts)`` in float32 gives ``amp`` back exactly: ``sqrt(a*a) == a``
    in binary floating point, and ``sqrt`` of the rounded integer is the correctly
    rounded value the file's amplitude came from.
    """
    squares = np.square(amp)
    whole = np.rint(squares)
    if np.all(np.abs(squares - whole) <= 4 * np.spacing(np.maximum(whole, np.float32(1)))):
        return whole, True
    return squares, False


def _amplitudes_nNN(amp: np.ndarray, probe_shape: tuple[int, ...], key: str,
                    where: str) -> tuple[np.ndarray, str]:
    """Amplitudes as ``[n, N, N]`` and the file's layout (``"nNN"`` or legacy ``"NNn"``).

    The layout is recognised by ``probeGuess``'s shape ``(N, N)``; an ambiguous
    ``[N, N, N]`` array is read as the standard ``[n, N, N]``.
    """
    if amp.shape[1:] == probe_shape and amp.shape[1] == amp.shape[2]:
        return amp, "nNN"
    if amp.shape[:2] == probe_shape and amp.shape[0] == amp.shape[1]:
        return np.ascontiguousarray(np.moveaxis(amp, -1, 0)), "NNn"
    raise DataFileError(f"{where}: {key} has shape {amp.shape}, expected [n, N, N] (or legacy "
                        f"[N, N, n]) with N x N = probeGuess's {probe_shape}")


def _check_npz_shapes(where: str, key: str, n: int, N: int, probe: np.ndarray, x: np.ndarray,
                      y: np.ndarray, extras: dict[str, np.ndarray]) -> None:
    """Coordinates and extras must hold one value per pattern; N must be even and > 0."""
    if n == 0 or N % 2:
        raise DataFileError(f"{where}: {key} holds {n} patterns of {N} x {N} px, expected "
                            "n > 0 and an even N")
    for name, arr in (("xcoords", x), ("ycoords", y), *extras.items()):
        if arr.shape != (n,):
            raise DataFileError(f"{where}: {name} has shape {arr.shape}, expected ({n},) for "
                                f"{n} patterns in {key}")


def write_npz(path: str | Path, d: PtychoData) -> None:
    """Export ``d`` in the PtychoPINN NPZ layout (uncompressed ``np.savez``), atomically.

    Amplitudes ``sqrt(counts)`` as float32 under ``diffraction`` ``[n, N, N]``,
    ``probeGuess``, ``objectGuess`` (the ground truth, when there is one),
    ``xcoords``/``ycoords`` = (col, row) positions, and :attr:`PtychoData.extras`. A
    data set imported by :func:`read_npz` keeps its key name, layout and dtypes
    (from ``attrs``), so import then export reproduces the file's arrays exactly
    (``sqrt(a*a) == a`` holds exactly in binary floating point).
    """
    N = d.counts.shape[-1]
    if d.probe.shape[-2:] != (N, N) or d.probe.ndim not in (2, 3) or not len(d.probe):
        raise DataFileError(f"{path}: {PROBE} has shape {d.probe.shape}, expected ({N}, {N}) "
                            f"like the patterns (or (K, {N}, {N}): K >= 1 probe modes); "
                            "nothing written")
    attrs = d.attrs
    dtypes = attrs.get("npz_dtypes", {})
    offset = np.asarray(attrs.get("npz_position_offset_px", [0.0, 0.0]), dtype=np.float64)
    amp = np.sqrt(d.counts.astype(np.float32))
    if attrs.get("npz_layout") == "NNn":
        amp = np.ascontiguousarray(np.moveaxis(amp, 0, -1))
    pos = d.positions_px - offset if offset.any() else d.positions_px
    arrays = {attrs.get("npz_amplitude_key", "diffraction"):
              amp.astype(dtypes.get("amplitude", "float32")),
              "probeGuess": physics.single_mode(d.probe).astype(
                  dtypes.get("probeGuess", "complex64")),
              "xcoords": pos[:, 1].astype(dtypes.get("xcoords", "float64")),
              "ycoords": pos[:, 0].astype(dtypes.get("ycoords", "float64"))}
    if d.ground_truth is not None:
        arrays["objectGuess"] = d.ground_truth.astype(dtypes.get("objectGuess", "complex64"))
    arrays.update(d.extras)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_npz_probe(path: str | Path) -> np.ndarray:
    """The probe :data:`PROBE` as stored: a complex or real 2-D array (or 3-D: modes),
    any size."""
    with _open_npz(path) as z:
        return _npz_array(z, PROBE, (2, 3), "cf", str(path))
