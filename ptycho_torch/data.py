"""Ptychography data sets in memory and on disk (CXI 1.6 HDF5, PtychoPINN NPZ).

CXI layout (SI units), see DESIGN.md:

* ``/entry_1/instrument_1/detector_1/data``: float32 ``[n, N, N]`` counts, DC centred
  (``/entry_1/data_1/data`` is a soft link to it).
* ``/entry_1/instrument_1/source_1/illumination``: complex64 ``[N, N]`` probe that
  carries the photon scale: expected counts are ``|F(P * O_patch)|^2``.
* ``/entry_1/sample_1/geometry_1/translation``: ``[n, 3]`` metres. The CXI spec
  defines it as the *sample* translation, so it is minus the probe position:
  ``translation = -(col * dx, row * dx, 0)`` with ``dx`` the object pixel size.
* ``/entry_1/ptycho_torch/probe_position_px``: float64 ``[n, 2]`` probe centre
  ``(row, col)`` in object pixels: the unambiguous copy that we read back. A CXI file
  from another program (no ``/entry_1/ptycho_torch``) is read from ``translation``
  instead (sign: see :func:`read_cxi`), with the object pixel from the geometry.
* attributes of ``/entry_1/ptycho_torch``: ``object_shape``, ``object_pixel_size_m``
  and :attr:`PtychoData.attrs`; non-scalar attributes are stored as JSON text and
  listed in the ``json_attrs`` attribute, so :func:`read_cxi` decodes them again.
* ``/entry_1/instrument_1/detector_1/mask``: uint32 ``[N, N]`` pixel mask with the CXI
  bit convention (0 = good; bit 0 ``0x1`` invalid, ``0x2`` saturated, ``0x8`` dead,
  ``0x10`` shadowed, e.g. by a beamstop); masked pixels hold 0 counts. Optional on read.
* attribute ``saturation_level`` of ``.../detector_1/data``: counts at which the
  detector saturates (recorded counts are clipped there); absent = no saturation.
* ``/entry_1/ptycho_torch/extras/<name>``: per-pattern arrays ``[n]`` carried along
  (e.g. a PtychoPINN NPZ's ``scan_index``, or the true positions of a scan simulated with
  position errors), see :attr:`PtychoData.extras`.
* ``/entry_1/ptycho_torch/true_probe``: complex64 ``[N, N]``, optional: the probe a scan
  was simulated with when the file records another one (``data.probe.given_*``).

PtychoPINN NPZ (:func:`read_npz`, :func:`write_npz`): ``diffraction`` (legacy
``diff3d``) float32 amplitudes ``sqrt(counts)`` ``[n, N, N]`` (legacy ``[N, N, n]``),
``probeGuess`` complex ``[N, N]``, ``objectGuess`` complex ``[H, W]`` (optional),
``xcoords``/``ycoords`` ``[n]``. Assumed convention (PtychoPINN's
``get_image_patches``: pad the object by N/2, translate by ``-(x, y)``, crop N x N):
the probe centre of pattern ``k`` is ``objectGuess[ycoords[k], xcoords[k]]``, i.e.
our ``probe_position_px = (ycoords, xcoords)`` with no offset, in objectGuess pixels.

Large data: :class:`CountsReader` reads the counts lazily, chunk by chunk, so a data
set larger than memory can be streamed (see its docstring).
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import h5py
import numpy as np
import torch

from ptycho_torch import physics
from ptycho_torch.config import DataConfig
from ptycho_torch.files import atomic_path

ELECTRON_VOLT_J = 1.602176634e-19
DETECTOR = "/entry_1/instrument_1/detector_1"
SOURCE = "/entry_1/instrument_1/source_1"
OURS = "/entry_1/ptycho_torch"
EXTRAS = f"{OURS}/extras"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
MAX_FRAME_PX = 32768  # largest object frame side a translation may span
# CXI pixel-mask bits (CXI 1.6 / Cheetah convention): 0 = good pixel
MASK_INVALID, MASK_SATURATED, MASK_DEAD, MASK_SHADOWED = 0x1, 0x2, 0x8, 0x10


@dataclass(frozen=True)
class PtychoData:
    """One scan: counts ``[n, N, N]``, probe ``[N, N]``, positions ``[n, 2]`` (row, col px)."""
    counts: np.ndarray
    probe: np.ndarray
    positions_px: np.ndarray
    object_shape: tuple[int, int]
    energy_eV: float
    detector_distance_m: float
    detector_pixel_size_m: float
    object_pixel_size_m: float
    ground_truth: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None  # uint32 [N, N], CXI mask bits, 0 = good pixel
    saturation_counts: float = 0.0  # recorded counts are clipped here (0 = no saturation)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-pattern arrays [n]
    true_probe: np.ndarray | None = None  # complex [N, N]: simulated with it, given `probe`

    @property
    def N(self) -> int:
        return int(self.counts.shape[-1])

    def valid_pixels(self) -> np.ndarray:
        """Bool ``[N, N]``: pixels whose counts measure the pattern (mask bit-free).

        Saturated pixels vary per pattern: also drop ``counts >= saturation_counts``
        when :attr:`saturation_counts` > 0.
        """
        if self.mask is None:
            return np.ones((self.N, self.N), bool)
        return self.mask == 0


def write_atomic_h5(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Create HDF5 ``path`` atomically (:func:`ptycho_torch.files.atomic_path`);
    ``fill(h5file)`` writes the content."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        fill(f)


def write_cxi(path: str | Path, d: PtychoData,
              counts_blocks: Iterable[np.ndarray] | None = None) -> None:
    """Write ``d`` as a CXI 1.6 file (chunked, compressed counts), atomically.

    ``counts_blocks`` streams the counts instead of ``d.counts`` (give a ``[0, N, N]``
    placeholder there): consecutive ``[b, N, N]`` blocks that together hold one
    pattern per position, so a data set larger than memory can be written.
    """
    n, N = len(d.positions_px), d.counts.shape[-1]
    if counts_blocks is None:
        counts_blocks = [d.counts]

    def fill(f: h5py.File) -> None:
        f["cxi_version"] = 160
        det = f.create_group(DETECTOR)
        data = det.create_dataset("data", shape=(n, N, N), dtype=np.float32,
                                  chunks=(max(1, min(n, 64)), N, N), compression="gzip",
                                  compression_opts=4, shuffle=True)
        _fill_blocks(data, counts_blocks)
        if d.saturation_counts > 0:
            data.attrs["saturation_level"] = float(d.saturation_counts)
        if d.mask is not None:
            det["mask"] = np.asarray(d.mask, dtype=np.uint32)
        det["distance"] = d.detector_distance_m
        det["x_pixel_size"] = d.detector_pixel_size_m
        det["y_pixel_size"] = d.detector_pixel_size_m
        f.create_group("/entry_1/data_1")["data"] = h5py.SoftLink(f"{DETECTOR}/data")
        src = f.create_group(SOURCE)
        src["energy"] = d.energy_eV * ELECTRON_VOLT_J
        src["illumination"] = d.probe.astype(np.complex64)
        rc = d.positions_px * d.object_pixel_size_m
        translation = np.stack([-rc[:, 1], -rc[:, 0], np.zeros(n)], axis=1)
        f.create_group("/entry_1/sample_1/geometry_1")["translation"] = translation
        ours = f.create_group(OURS)
        ours["probe_position_px"] = d.positions_px.astype(np.float64)
        if d.ground_truth is not None:
            ours["ground_truth_object"] = d.ground_truth.astype(np.complex64)
        if d.true_probe is not None:
            ours["true_probe"] = d.true_probe.astype(np.complex64)
        for name, values in d.extras.items():
            ours[f"extras/{name}"] = np.asarray(values)
        ours.attrs["object_shape"] = np.asarray(d.object_shape, dtype=np.int64)
        ours.attrs["object_pixel_size_m"] = d.object_pixel_size_m
        encoded = []
        for key, value in d.attrs.items():
            if np.isscalar(value):
                ours.attrs[key] = value
            else:
                ours.attrs[key] = json.dumps(value)
                encoded.append(key)
        if encoded:
            ours.attrs["json_attrs"] = json.dumps(encoded)
    write_atomic_h5(Path(path), fill)


def _fill_blocks(data: h5py.Dataset, blocks: Iterable[np.ndarray]) -> None:
    """Write consecutive ``[b, N, N]`` blocks into ``data [n, N, N]``; they must fill it."""
    start = 0
    for block in blocks:
        if block.ndim != 3 or block.shape[1:] != data.shape[1:]:
            raise ValueError(f"counts block of shape {block.shape}, expected [b, {data.shape[1]}, "
                             f"{data.shape[2]}]")
        if start + len(block) > len(data):
            raise ValueError(f"more counts than the {len(data)} positions")
        data[start:start + len(block)] = block
        start += len(block)
    if start != len(data):
        raise ValueError(f"{start} patterns of counts for {len(data)} positions")


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and dataset."""


def _require(f: h5py.File, path: str, ndim: int, kinds: str, where: str) -> h5py.Dataset:
    """The dataset at ``path`` with ``ndim`` dims and a dtype kind in ``kinds`` (e.g. 'fc')."""
    if path not in f or not isinstance(f[path], h5py.Dataset):
        raise DataFileError(f"{where}: missing dataset {path}")
    ds = f[path]
    if ds.ndim != ndim:
        raise DataFileError(f"{where}: {path} has shape {ds.shape}, expected {ndim} dimensions")
    if ds.dtype.kind not in kinds:
        raise DataFileError(f"{where}: {path} has dtype {ds.dtype}, expected kind {kinds!r}")
    return ds


def _scalar(f: h5py.File, path: str, where: str) -> float:
    """A finite positive number stored at dataset ``path``."""
    if path not in f or not isinstance(f[path], h5py.Dataset):
        raise DataFileError(f"{where}: missing dataset {path}")
    ds = f[path]
    if ds.dtype.kind not in "fiu" or ds.size != 1:
        raise DataFileError(f"{where}: {path} must hold one number, got {ds.dtype} {ds.shape}")
    value = float(ds[()])
    if not (math.isfinite(value) and value > 0):
        raise DataFileError(f"{where}: {path} must be positive and finite, got {value}")
    return value


def read_cxi(path: str | Path, *, load_counts: bool = True,
             translation: str = "sample") -> PtychoData:
    """Read a CXI file written by :func:`write_cxi` (or any CXI with the same datasets).

    A CXI file from another program (no ``/entry_1/ptycho_torch`` group) gets its probe
    positions from ``/entry_1/sample_1/geometry_1/translation`` and its object pixel from
    the geometry (:func:`_translation_positions`; ``translation``: what that dataset holds,
    ``"sample"`` as the CXI spec defines it or ``"probe"`` positions). With
    ``load_counts=False`` the counts are an empty ``[0, N, N]`` array (header only).
    """
    where = str(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise DataFileError(f"{where}: file not found") from None
    except OSError as exc:
        raise DataFileError(f"{where}: not a readable HDF5/CXI file ({exc})") from None
    with f:
        counts_ds = _require(f, f"{DETECTOR}/data", 3, "fiu", where)
        probe = _require(f, f"{SOURCE}/illumination", 2, "c", where)[()]
        n, N, N2 = counts_ds.shape
        if n == 0 or N != N2:
            raise DataFileError(f"{where}: {DETECTOR}/data has shape {counts_ds.shape}, "
                                "expected [n > 0, N, N]")
        energy_eV = _scalar(f, f"{SOURCE}/energy", where) / ELECTRON_VOLT_J
        distance = _scalar(f, f"{DETECTOR}/distance", where)
        pixel = _scalar(f, f"{DETECTOR}/x_pixel_size", where)
        if OURS in f:
            attrs = dict(f[OURS].attrs)
            pos = _require(f, f"{OURS}/probe_position_px", 2, "fiu", where)[()].astype(np.float64)
        else:  # a CXI file from another program
            attrs = {"object_pixel_size_m": _object_pixel(DataConfig(
                energy_eV=energy_eV, detector_distance_m=distance, detector_pixel_size_m=pixel), N)}
            pos, attrs["cxi_position_offset_px"] = _translation_positions(
                f, n, N, attrs["object_pixel_size_m"], translation, where)
            attrs["position_source"] = f"{TRANSLATION} ({translation} positions)"
        if probe.shape != (N, N):
            raise DataFileError(f"{where}: {SOURCE}/illumination has shape {probe.shape}, "
                                f"expected ({N}, {N}) like the patterns")
        if pos.shape != (n, 2):
            raise DataFileError(f"{where}: {OURS}/probe_position_px has shape {pos.shape}, "
                                f"expected ({n}, 2) for {n} patterns")
        try:
            counts = counts_ds[()] if load_counts else np.zeros((0, N, N), np.float32)
        except OSError as exc:
            raise DataFileError(f"{where}: {DETECTOR}/data cannot be read ({exc}): "
                                "truncated file?") from None
        gt_path = f"{OURS}/ground_truth_object"
        gt = _require(f, gt_path, 2, "c", where)[()] if gt_path in f else None
        true_probe = (_require(f, f"{OURS}/true_probe", 2, "c", where)[()]
                      if f"{OURS}/true_probe" in f else None)
        mask = _read_mask(f, N, where)
        saturation = _saturation(counts_ds, where)
        extras = _read_extras(f, n, where)
        for key in json.loads(attrs.pop("json_attrs", "[]")):
            attrs[key] = json.loads(attrs[key])
        shape = tuple(int(v) for v in attrs.pop("object_shape", gt.shape if gt is not None
                                                 else _frame_for(pos, N)))
        if "object_pixel_size_m" not in attrs:
            raise DataFileError(f"{where}: attribute object_pixel_size_m missing on {OURS}")
        return PtychoData(
            counts=counts.astype(np.float32), probe=probe.astype(np.complex64),
            positions_px=pos, object_shape=shape,
            energy_eV=energy_eV, detector_distance_m=distance, detector_pixel_size_m=pixel,
            object_pixel_size_m=float(attrs.pop("object_pixel_size_m")),
            ground_truth=gt, attrs=attrs, mask=mask, saturation_counts=saturation,
            extras=extras, true_probe=true_probe)


def _translation_positions(f: h5py.File, n: int, N: int, pixel_m: float, translation: str,
                           where: str) -> tuple[np.ndarray, list[float]]:
    """Probe centres ``[n, 2]`` (row, col object px) from :data:`TRANSLATION` ``[n, 2 or 3]``
    (metres, x = column, y = row) and the integer offset ``[2]`` (px) added to them.

    ``translation`` ``"sample"`` (the CXI spec: the sample's translation, minus the probe
    position, as :func:`write_cxi` stores it) or ``"probe"`` (the probe position). The
    positions are shifted by a whole number of pixels so that the first patch starts at
    the frame's edge; a scan wider than :data:`MAX_FRAME_PX` is refused (units not metres?).
    """
    t = _require(f, TRANSLATION, 2, "fiu", where)[()].astype(np.float64)
    if t.shape[0] != n or t.shape[1] not in (2, 3):
        raise DataFileError(f"{where}: {TRANSLATION} has shape {t.shape}, expected ({n}, 3) "
                            f"for {n} patterns")
    if not np.isfinite(t).all():
        raise DataFileError(f"{where}: {TRANSLATION} holds NaN or infinite values")
    xy = (-t if translation == "sample" else t)[:, :2] / pixel_m
    positions = xy[:, ::-1]
    offset = np.ceil(N / 2 - positions.min(axis=0))
    positions = positions + offset
    frame = _frame_for(positions, N)
    if max(frame) > MAX_FRAME_PX:
        span = np.ptp(t[:, :2], axis=0)
        raise DataFileError(f"{where}: {TRANSLATION} spans {span[0]:.4g} m x {span[1]:.4g} m, "
                            f"{frame[1]} x {frame[0]} object pixels of {pixel_m * 1e9:.4g} nm: "
                            f"more than {MAX_FRAME_PX} px; the translation must be in metres")
    return positions, offset.tolist()


def _read_mask(f: h5py.File, N: int, where: str) -> np.ndarray | None:
    """The optional CXI pixel mask ``[N, N]`` (uint32), checked."""
    path = f"{DETECTOR}/mask"
    if path not in f:
        return None
    mask = _require(f, path, 2, "iub", where)[()]
    if mask.shape != (N, N):
        raise DataFileError(f"{where}: {path} has shape {mask.shape}, expected ({N}, {N}) "
                            "like the patterns")
    if mask.dtype.kind == "i" and (mask < 0).any():
        raise DataFileError(f"{where}: {path} holds negative values, expected CXI mask bits")
    return mask.astype(np.uint32)


def _saturation(counts_ds: h5py.Dataset, where: str) -> float:
    """The ``saturation_level`` attribute of the counts (0.0 when absent)."""
    value = counts_ds.attrs.get("saturation_level")
    if value is None:
        return 0.0
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DataFileError(f"{where}: attribute saturation_level of {DETECTOR}/data must be a "
                            f"positive number, got {counts_ds.attrs.get('saturation_level')!r}")
    return value


def _read_extras(f: h5py.File, n: int, where: str) -> dict[str, np.ndarray]:
    """Per-pattern arrays under ``/entry_1/ptycho_torch/extras``; each must be ``[n]``."""
    if EXTRAS not in f:
        return {}
    extras = {}
    for name, ds in f[EXTRAS].items():
        if not isinstance(ds, h5py.Dataset) or ds.shape != (n,):
            raise DataFileError(f"{where}: {EXTRAS}/{name} must be a dataset of shape ({n},)")
        extras[name] = ds[()]
    return extras


def _frame_for(positions: np.ndarray, N: int) -> tuple[int, int]:
    """Smallest object frame holding every patch of positions ``[n, 2]``."""
    hi = np.ceil(positions.max(axis=0) + N / 2 + 1).astype(int)
    return int(hi[0]), int(hi[1])


def check_data_file(path: str | Path, cfg, role: str = "train") -> list[str]:
    """Problems that make ``path`` unusable with config ``cfg`` (empty list = fine).

    Checks readability, datasets, N against ``data.N``, enough positions for
    ``training.batch_size``, finite positions inside the object frame, a finite
    probe, and counts (no NaN, no negatives), streaming the counts in chunks.
    With ``cfg=None`` (an invalid config) the checks against the config are skipped.
    A ``.npz`` file is read whole by :func:`read_npz` (geometry from ``cfg.data``).
    """
    npz = Path(path).suffix.lower() == ".npz"
    try:
        d = read_npz(path, cfg.data if cfg else None) if npz else read_cxi(path, load_counts=False)
    except DataFileError as exc:
        return [f"{role} data: {exc}"]
    problems = []
    if cfg is not None and d.N != cfg.data.N:
        problems.append(f"data.N: {cfg.data.N} does not match the {role} data's pattern size "
                        f"{d.N} px in {path}")
    n = len(d.positions_px)
    if cfg is not None and n < cfg.training.batch_size and role == "train":
        problems.append(f"training.batch_size: {cfg.training.batch_size} exceeds the "
                        f"{n} scan positions in {path}")
    if cfg is not None and cfg.model.gridsize > 1 and n < cfg.model.n_neighbours:
        problems.append(f"model.n_neighbours: grouping needs at least {cfg.model.n_neighbours} "
                        f"scan positions, the {role} data in {path} have {n}")
    if cfg is not None and role == "train":  # validation split, n_groups, oversampling
        from ptycho_torch.grouping import grouping_problems
        problems += [f"{p} (in {path})" for p in grouping_problems(n, cfg)]
    probe_at, positions_at = (("probeGuess", "xcoords/ycoords") if npz else
                              (f"{SOURCE}/illumination", f"{OURS}/probe_position_px"))
    if not np.isfinite(d.probe).all():
        problems.append(f"{role} data: {probe_at} in {path} holds NaN or infinite values")
    lo = d.positions_px - d.N / 2
    hi = d.positions_px + d.N / 2 + 1
    if not np.isfinite(d.positions_px).all():
        problems.append(f"{role} data: {positions_at} in {path} holds NaN or infinite positions")
    elif (lo < 0).any() or (hi > np.asarray(d.object_shape)).any():
        problems.append(f"{role} data: {positions_at} in {path} has positions whose "
                        f"patch leaves the object frame {d.object_shape}")
    if npz:  # read_npz has refused NaN, infinite and negative amplitudes
        return problems
    try:
        with h5py.File(path, "r") as f:
            ds = f[f"{DETECTOR}/data"]
            for start in range(0, ds.shape[0], 256):
                block = ds[start:start + 256]
                if not np.isfinite(block).all():
                    problems.append(f"{role} data: {DETECTOR}/data in {path} holds NaN or "
                                    f"infinite counts (first in patterns {start}..{start + 255})")
                    break
                if (block < 0).any():
                    problems.append(f"{role} data: {DETECTOR}/data in {path} holds negative "
                                    f"counts (first in patterns {start}..{start + 255})")
                    break
    except OSError as exc:
        problems.append(f"{role} data: {DETECTOR}/data in {path} cannot be read ({exc}): "
                        "truncated file?")
    return problems


# ----------------------------------------------------------------- PtychoPINN NPZ

NPZ_AMPLITUDE_KEYS = ("diffraction", "diff3d")
NPZ_EXTRA_KEYS = ("scan_index", "xcoords_start", "ycoords_start")


def _npz_array(z: Any, key: str, ndim: int, kinds: str, where: str) -> np.ndarray:
    """Array ``key`` of an open NPZ with ``ndim`` dims and a dtype kind in ``kinds``."""
    if key not in z.files:
        raise DataFileError(f"{where}: missing array {key}")
    try:
        arr = z[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataFileError(f"{where}: {key} cannot be read without pickle ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFileError(f"{where}: {key} cannot be read ({exc}): truncated file?") from None
    if arr.ndim != ndim:
        raise DataFileError(f"{where}: {key} has shape {arr.shape}, expected {ndim} dimensions")
    if arr.dtype.kind not in kinds:
        raise DataFileError(f"{where}: {key} has dtype {arr.dtype}, expected kind {kinds!r}")
    return arr


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
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(f"{where}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{where}: not a readable NPZ file ({exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataFileError(f"{where}: not an NPZ archive (a single .npy array?)")
    with z:
        key = next((k for k in NPZ_AMPLITUDE_KEYS if k in z.files), None)
        if key is None:
            raise DataFileError(f"{where}: missing array diffraction (or legacy diff3d)")
        amp = _npz_array(z, key, 3, "fiu", where)
        probe = _npz_array(z, "probeGuess", 2, "c", where)
        x = _npz_array(z, "xcoords", 1, "fiu", where)
        y = _npz_array(z, "ycoords", 1, "fiu", where)
        obj = _npz_array(z, "objectGuess", 2, "c", where) if "objectGuess" in z.files else None
        extras = {k: _npz_array(z, k, 1, "fiub", where) for k in NPZ_EXTRA_KEYS if k in z.files}
    amp, layout = _amplitudes_nNN(amp, probe.shape, key, where)
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
    pixel = _object_pixel(geometry, N)
    attrs = {"source_file": Path(path).name, "npz_amplitude_key": key, "npz_layout": layout,
             "npz_dtypes": {"amplitude": str(amp.dtype), "probeGuess": str(probe.dtype),
                            "xcoords": str(x.dtype), "ycoords": str(y.dtype),
                            **({"objectGuess": str(obj.dtype)} if obj is not None else {})}}
    if offset.any():
        attrs["npz_position_offset_px"] = offset.tolist()
    attrs["npz_counts_rounded"] = rounded
    return PtychoData(
        counts=counts, probe=probe.astype(np.complex64), positions_px=positions,
        object_shape=obj.shape if obj is not None else _frame_for(positions, N),
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


def _object_pixel(geometry: DataConfig, N: int) -> float:
    """Object pixel size (m) of the far-field geometry ``lambda z / (N dx)``."""
    wavelength = 1.239841984e-6 / geometry.energy_eV
    return wavelength * geometry.detector_distance_m / (N * geometry.detector_pixel_size_m)


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
    attrs = d.attrs
    dtypes = attrs.get("npz_dtypes", {})
    offset = np.asarray(attrs.get("npz_position_offset_px", [0.0, 0.0]), dtype=np.float64)
    amp = np.sqrt(d.counts.astype(np.float32))
    if attrs.get("npz_layout") == "NNn":
        amp = np.ascontiguousarray(np.moveaxis(amp, 0, -1))
    pos = d.positions_px - offset if offset.any() else d.positions_px
    arrays = {attrs.get("npz_amplitude_key", "diffraction"):
              amp.astype(dtypes.get("amplitude", "float32")),
              "probeGuess": d.probe.astype(dtypes.get("probeGuess", "complex64")),
              "xcoords": pos[:, 1].astype(dtypes.get("xcoords", "float64")),
              "ycoords": pos[:, 0].astype(dtypes.get("ycoords", "float64"))}
    if d.ground_truth is not None:
        arrays["objectGuess"] = d.ground_truth.astype(dtypes.get("objectGuess", "complex64"))
    arrays.update(d.extras)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_data(path: str | Path, geometry: DataConfig | None = None) -> PtychoData:
    """A data set from a CXI/HDF5 file or a PtychoPINN ``.npz`` (chosen by the suffix);
    ``geometry`` gives an NPZ its geometry and a foreign CXI its translation convention,
    and with ``geometry.probe_rescale`` the probe is fitted to the counts' photon scale
    (:func:`rescale_probe`)."""
    if Path(path).suffix.lower() == ".npz":
        d = read_npz(path, geometry)
    else:
        d = read_cxi(path, translation=geometry.cxi_translation if geometry else "sample")
    return rescale_probe(d) if geometry is not None and geometry.probe_rescale else d


# ----------------------------------------------------------------- the probe's photon scale

# A passive object (|O| <= 1) passes at most the probe's photons: the brightest patterns
# hold at most ``sum |P|^2`` (plus Poisson noise), and some part of a sample usually passes
# more than this share of them. A probe outside the range is rescaled.
BRIGHTEST_TRANSMISSION_MIN = 0.05
BRIGHTEST_QUANTILE = 0.99  # "brightest": this quantile of the patterns (robust to outliers)


def plausible_transmission(totals: np.ndarray) -> tuple[float, float]:
    """The range of the brightest patterns' share of the probe's photons that an object
    explains, for per-pattern counts ``totals [n]``: :data:`BRIGHTEST_TRANSMISSION_MIN` to
    1 + 4 Poisson sigma of the brightest patterns' counts."""
    brightest = float(np.quantile(totals, BRIGHTEST_QUANTILE))
    return BRIGHTEST_TRANSMISSION_MIN, 1.0 + 4.0 / math.sqrt(max(brightest, 1.0))


def brightest_transmission(d: PtychoData) -> float:
    """``r``: the counts of the brightest patterns (the :data:`BRIGHTEST_QUANTILE` of the
    per-pattern totals) over the counts the bare probe would give, both on the valid
    pixels: ``sum_valid c_k / sum_valid |F P|^2``. A passive object gives ``r <= 1`` (up to
    Poisson noise); ``r`` is the intensity transmission of the scan's brightest part."""
    valid = d.valid_pixels()
    bare = physics.far_field(torch.from_numpy(d.probe.astype(np.complex128))).abs().square()
    totals = np.where(valid, d.counts, 0).sum(axis=(1, 2), dtype=np.float64)
    return float(np.quantile(totals, BRIGHTEST_QUANTILE) / bare.numpy()[valid].sum())


def rescale_probe(d: PtychoData) -> PtychoData:
    """``d`` with its probe at the counts' photon scale, recorded in ``attrs["probe_scale"]``.

    The probe is kept when the brightest patterns (:func:`brightest_transmission`) hold
    between :data:`BRIGHTEST_TRANSMISSION_MIN` and 1 (+ 4 Poisson sigma) of its photons: an
    object of unknown mean transmission explains that, and training (or the calibration of
    the stitched patches) resolves it. Otherwise the probe's scale cannot be the counts' (a
    probe from another program's normalisation) and it is scaled so that the brightest
    patterns hold exactly its photons: the least change that a passive object can explain.
    A probe already rescaled (re-read) keeps its record."""
    r = brightest_transmission(d)
    lower, upper = plausible_transmission(d.counts.sum(axis=(1, 2), dtype=np.float64))
    if lower <= r <= upper:
        record = d.attrs.get("probe_scale") or {"factor": 1.0, "applied": False}
        return replace(d, attrs={**d.attrs, "probe_scale": record})
    given = float(np.sum(np.abs(d.probe.astype(np.complex128)) ** 2))
    record = {"factor": r, "applied": True, "given_probe_photons": given,
              "probe_photons": given * r, "brightest_transmission_given": r,
              "rule": f"brightest patterns held {r:.4g} x the given probe's photons, outside "
                      f"[{BRIGHTEST_TRANSMISSION_MIN}, {upper:.4g}]: probe scaled so that they "
                      "hold exactly its photons"}
    probe = (d.probe.astype(np.complex128) * math.sqrt(r)).astype(np.complex64)
    return replace(d, probe=probe, attrs={**d.attrs, "probe_scale": record})


def true_positions(d: PtychoData) -> np.ndarray | None:
    """The true probe centres ``[n, 2]`` (row, col px) of a scan simulated with position
    errors (extras ``true_position_row_px``/``col_px``), else None (not known)."""
    if "true_position_row_px" not in d.extras:
        return None
    return np.stack([d.extras["true_position_row_px"], d.extras["true_position_col_px"]], 1)


def select_patterns(d: PtychoData, index: np.ndarray) -> PtychoData:
    """The patterns ``index`` (indices or a bool mask ``[n]``) of ``d``: counts, positions and
    extras are subset; probe, object frame, geometry, ground truth and mask are kept."""
    return replace(d, counts=d.counts[index], positions_px=d.positions_px[index],
                   extras={k: v[index] for k, v in d.extras.items()})


def measured_sets(cfg: DataConfig) -> tuple[PtychoData, PtychoData]:
    """Training and test sets of ``data.source: file``.

    ``train_file`` and ``test_file``; without a test file, the ``test_fraction`` of
    ``train_file``'s positions with the largest column positions (a band along the right
    edge of the scan) is held out as the test set, or, with ``test_fraction`` 0, the test
    set is the training scan itself (the PINN learns without ground truth, so it may
    reconstruct the very scan it was trained on). ``attrs`` record the source and split.
    """
    train = read_data(cfg.train_file, cfg)
    train = replace(train, attrs={**train.attrs, "source_file": cfg.train_file})
    if cfg.test_file:
        test = read_data(cfg.test_file, cfg)
        return train, replace(test, attrs={**test.attrs, "source_file": cfg.test_file})
    if cfg.test_fraction == 0:
        return train, train
    n = len(train.positions_px)
    by_column = np.lexsort((train.positions_px[:, 0], train.positions_px[:, 1]))
    held = np.zeros(n, bool)
    held[by_column[n - math.ceil(cfg.test_fraction * n):]] = True
    split = {"test_fraction": cfg.test_fraction, "rule": "largest column positions held out"}
    return tuple(replace(select_patterns(train, keep),
                         attrs={**train.attrs, "split": {**split, "part": part}})
                 for keep, part in ((~held, "train"), (held, "test")))


# ----------------------------------------------------------------- user images and probes

def load_image(path: str | Path) -> np.ndarray:
    """A 2-D float64 image from PNG/TIFF (scikit-image) or NPY; colour becomes grey.

    Raises :class:`DataFileError` naming the file for anything that is not a finite
    real 2-D image (complex arrays too: give amplitude and phase as two images).
    """
    where, suffix = str(path), Path(path).suffix.lower()
    if not Path(path).is_file():
        raise DataFileError(f"{where}: file not found")
    try:
        if suffix == ".npy":
            img = np.load(path, allow_pickle=False)
        else:
            import warnings
            from skimage import io
            with warnings.catch_warnings():  # imageio's plugin probing warns on odd files
                warnings.simplefilter("ignore", DeprecationWarning)
                img = io.imread(path)
    except Exception as exc:  # noqa: BLE001 - every reader error means "not an image"
        raise DataFileError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") \
            from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4) and img.dtype.kind in "uif":
        from skimage.color import rgb2gray
        img = rgb2gray(img[..., :3])
    if img.ndim != 2 or img.dtype.kind not in "uifb" or min(img.shape) < 2:
        raise DataFileError(f"{where}: expected a real 2-D image (grey or RGB), got dtype "
                            f"{img.dtype} shape {img.shape}")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise DataFileError(f"{where}: the image holds NaN or infinite values")
    return img


def load_probe(path: str | Path, N: int) -> np.ndarray:
    """A complex128 probe ``[N, N]`` from a CXI/HDF5 file (``source_1/illumination``), a
    PtychoPINN NPZ (``probeGuess``) or an NPY array; its scale is left as stored.
    """
    where, suffix = str(path), Path(path).suffix.lower()
    if not Path(path).is_file():
        raise DataFileError(f"{where}: file not found")
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                probe = _npz_array(z, "probeGuess", 2, "cf", where)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
            raise DataFileError(f"{where}: not a readable NPZ file ({exc})") from None
        name = "probeGuess"
    elif suffix == ".npy":
        try:
            probe = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataFileError(f"{where}: not a readable NPY file ({exc})") from None
        name = "the array"
    else:
        name = f"{SOURCE}/illumination"
        try:
            with h5py.File(path, "r") as f:
                probe = _require(f, name, 2, "cf", where)[()]
        except OSError as exc:
            raise DataFileError(f"{where}: not a readable HDF5/CXI file ({exc})") from None
    if probe.ndim != 2 or probe.shape != (N, N) or probe.dtype.kind not in "cf":
        raise DataFileError(f"{where}: {name} has dtype {probe.dtype} shape {probe.shape}, "
                            f"expected a complex ({N}, {N}) probe (data.N = {N})")
    probe = probe.astype(np.complex128)
    if not np.isfinite(probe).all() or not np.abs(probe).any():
        raise DataFileError(f"{where}: {name} holds NaN/infinite values or is all zero")
    return probe


# ----------------------------------------------------------------- streaming counts

class CountsReader:
    """Lazy, read-only counts ``[n, N, N]`` of a CXI file, read in HDF5 chunks.

    Keeps the file open (use as a context manager) and never loads more than asked::

        with CountsReader("train.cxi") as counts:
            scale = math.sqrt(counts.mean())          # one streaming pass (input scale)
            for start, block in counts.blocks(1024):  # float32 [b, N, N], file order
                ...
            batch = counts[groups[idx]]               # any index array: [B, C, N, N]

    HDF5 decompresses whole chunks (64 patterns in our files), so file order is
    cheapest: iterate anchors in (shuffled) blocks of consecutive patterns rather
    than uniformly at random. Scan neighbours are close in file order, so a block
    of anchors plus their group members is a short contiguous range;
    ``chunk_cache_mb`` keeps recently decompressed chunks for such re-reads and is
    what bounds the memory (besides the blocks asked for). With data-loader worker
    processes, open one reader per worker (h5py handles do not survive a fork).
    """

    def __init__(self, path: str | Path, chunk_cache_mb: float = 16.0):
        self.path = str(path)
        try:
            self._file = h5py.File(path, "r", rdcc_nbytes=int(chunk_cache_mb * 2 ** 20),
                                   rdcc_nslots=100003)
        except FileNotFoundError:
            raise DataFileError(f"{path}: file not found") from None
        except OSError as exc:
            raise DataFileError(f"{path}: not a readable HDF5/CXI file ({exc})") from None
        self._ds = _require(self._file, f"{DETECTOR}/data", 3, "fiu", self.path)

    def __enter__(self) -> "CountsReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._ds.shape)

    @property
    def chunk_patterns(self) -> int:
        """Patterns per HDF5 chunk (the natural block size)."""
        return int(self._ds.chunks[0]) if self._ds.chunks else 64

    def __len__(self) -> int:
        return int(self._ds.shape[0])

    def __getitem__(self, index: int | slice | np.ndarray) -> np.ndarray:
        """float32 counts of one pattern, a slice or an index array (any order, repeats)."""
        try:
            if isinstance(index, (int, np.integer, slice)):
                return self._ds[index].astype(np.float32)
            idx = np.asarray(index, dtype=np.int64)
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise IndexError(f"index out of range for {len(self)} patterns")
            idx = idx % max(len(self), 1)
            unique, inverse = np.unique(idx, return_inverse=True)
            return self._ds[unique].astype(np.float32)[inverse.reshape(idx.shape)]
        except OSError as exc:
            raise DataFileError(f"{self.path}: {DETECTOR}/data cannot be read ({exc}): "
                                "truncated file?") from None

    def blocks(self, size: int | None = None, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first index, float32 counts [b, N, N])`` in file order, ``b <= size``."""
        size = size or self.chunk_patterns
        stop = len(self) if stop is None else stop
        for s in range(start, stop, size):
            yield s, self[s:min(s + size, stop)]

    def mean(self) -> float:
        """Mean counts per pixel over the whole data set (one streaming pass, float64)."""
        total = sum(float(b.sum(dtype=np.float64)) for _, b in self.blocks(4 * self.chunk_patterns))
        return total / max(1, int(np.prod(self.shape)))
