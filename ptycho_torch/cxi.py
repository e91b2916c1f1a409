"""CXI 1.6 (HDF5) data files: :func:`read_cxi`, :func:`write_cxi` and lazy counts
(:class:`CountsReader`).

Layout (SI units):

* ``/entry_1/instrument_1/detector_1/data``: float32 ``[n, N, N]`` counts, DC centred
  (``/entry_1/data_1/data`` is a soft link to it).
* ``/entry_1/instrument_1/source_1/illumination``: complex64 ``[N, N]`` probe that
  carries the photon scale: expected counts are ``|F(P * O_patch)|^2``; a partially
  coherent probe is ``[K, N, N]`` (``K >= 2`` incoherent modes, intensities add).
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
* ``/entry_1/ptycho_torch/true_probe``: complex64 ``[N, N]`` (or ``[K, N, N]``), optional:
  the probe a scan was simulated with when the file records another one
  (``data.probe.given_*``), and the true modes of a partially coherent simulation.

Large data: :class:`CountsReader` reads the counts lazily, chunk by chunk, so a data
set larger than memory can be streamed (see its docstring).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import h5py
import numpy as np

from ptycho_torch import physics
from ptycho_torch.dataset import DataFileError, PtychoData, frame_for
from ptycho_torch.files import atomic_path

ELECTRON_VOLT_J = 1.602176634e-19
DETECTOR = "/entry_1/instrument_1/detector_1"
SOURCE = "/entry_1/instrument_1/source_1"
OURS = "/entry_1/ptycho_torch"
EXTRAS = f"{OURS}/extras"
PROBE = f"{SOURCE}/illumination"
POSITIONS = f"{OURS}/probe_position_px"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
MAX_FRAME_PX = 32768  # largest object frame side a translation may span


def write_atomic_h5(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Create HDF5 ``path`` atomically (:func:`ptycho_torch.files.atomic_path`);
    ``fill(h5file)`` writes the content."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        fill(f)


def write_cxi(path: str | Path, d: PtychoData,
              counts_blocks: Iterable[np.ndarray] | None = None) -> None:
    """Write ``d`` as a CXI 1.6 file (chunked, compressed counts), atomically; a probe
    that is neither ``[N, N]`` nor ``[K, N, N]`` raises :class:`DataFileError` first.

    ``counts_blocks`` streams the counts instead of ``d.counts`` (give a ``[0, N, N]``
    placeholder there): consecutive ``[b, N, N]`` blocks that together hold one
    pattern per position, so a data set larger than memory can be written.
    """
    n, N = len(d.positions_px), d.counts.shape[-1]
    for name, probe in ((PROBE, d.probe), (f"{OURS}/true_probe", d.true_probe)):
        if probe is not None:  # refused before anything is written
            _check_probe_shape(probe, N, f"{path}: {name}")
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
        src["illumination"] = physics.single_mode(d.probe).astype(np.complex64)
        rc = d.positions_px * d.object_pixel_size_m
        translation = np.stack([-rc[:, 1], -rc[:, 0], np.zeros(n)], axis=1)
        f.create_group("/entry_1/sample_1/geometry_1")["translation"] = translation
        ours = f.create_group(OURS)
        ours["probe_position_px"] = d.positions_px.astype(np.float64)
        if d.ground_truth is not None:
            ours["ground_truth_object"] = d.ground_truth.astype(np.complex64)
        if d.true_probe is not None:
            ours["true_probe"] = physics.single_mode(d.true_probe).astype(np.complex64)
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


def _require(f: h5py.File, path: str, ndim: int | tuple[int, ...], kinds: str,
             where: str) -> h5py.Dataset:
    """The dataset at ``path`` with ``ndim`` dims (or one of them) and a dtype kind in
    ``kinds`` (e.g. 'fc')."""
    if path not in f or not isinstance(f[path], h5py.Dataset):
        raise DataFileError(f"{where}: missing dataset {path}")
    ds = f[path]
    if ds.ndim not in np.atleast_1d(ndim):
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


def _open_cxi(path: str | Path, **options: Any) -> h5py.File:
    """``path`` opened read-only with h5py (``options``: e.g. the chunk cache); raises
    :class:`DataFileError` naming the file when it is missing or not HDF5."""
    try:
        return h5py.File(path, "r", **options)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable HDF5/CXI file ({exc})") from None


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
    with _open_cxi(path) as f:
        counts_ds = _require(f, f"{DETECTOR}/data", 3, "fiu", where)
        probe = _require(f, PROBE, (2, 3), "c", where)[()]
        n, N, N2 = counts_ds.shape
        if n == 0 or N != N2:
            raise DataFileError(f"{where}: {DETECTOR}/data has shape {counts_ds.shape}, "
                                "expected [n > 0, N, N]")
        energy_eV = _scalar(f, f"{SOURCE}/energy", where) / ELECTRON_VOLT_J
        distance = _scalar(f, f"{DETECTOR}/distance", where)
        pixel = _scalar(f, f"{DETECTOR}/x_pixel_size", where)
        if OURS in f:
            attrs = dict(f[OURS].attrs)
            pos = _require(f, POSITIONS, 2, "fiu", where)[()].astype(np.float64)
        else:  # a CXI file from another program
            attrs = {"object_pixel_size_m": physics.object_pixel_size_m(energy_eV, distance,
                                                                         pixel, N)}
            pos, attrs["cxi_position_offset_px"] = _translation_positions(
                f, n, N, attrs["object_pixel_size_m"], translation, where)
            attrs["position_source"] = f"{TRANSLATION} ({translation} positions)"
        _check_probe_shape(probe, N, f"{where}: {PROBE}")
        if pos.shape != (n, 2):
            raise DataFileError(f"{where}: {POSITIONS} has shape {pos.shape}, "
                                f"expected ({n}, 2) for {n} patterns")
        try:
            counts = counts_ds[()] if load_counts else np.zeros((0, N, N), np.float32)
        except OSError as exc:
            raise DataFileError(f"{where}: {DETECTOR}/data cannot be read ({exc}): "
                                "truncated file?") from None
        gt_path = f"{OURS}/ground_truth_object"
        gt = _require(f, gt_path, 2, "c", where)[()] if gt_path in f else None
        true_probe = (_require(f, f"{OURS}/true_probe", (2, 3), "c", where)[()]
                      if f"{OURS}/true_probe" in f else None)
        if true_probe is not None:
            _check_probe_shape(true_probe, N, f"{where}: {OURS}/true_probe")
        mask = _read_mask(f, N, where)
        saturation = _saturation(counts_ds, where)
        extras = _read_extras(f, n, where)
        for key in json.loads(attrs.pop("json_attrs", "[]")):
            attrs[key] = json.loads(attrs[key])
        shape = tuple(int(v) for v in attrs.pop("object_shape", gt.shape if gt is not None
                                                 else frame_for(pos, N)))
        if "object_pixel_size_m" not in attrs:
            raise DataFileError(f"{where}: attribute object_pixel_size_m missing on {OURS}")
        return PtychoData(
            counts=counts.astype(np.float32),
            probe=physics.single_mode(probe).astype(np.complex64),
            positions_px=pos, object_shape=shape,
            energy_eV=energy_eV, detector_distance_m=distance, detector_pixel_size_m=pixel,
            object_pixel_size_m=float(attrs.pop("object_pixel_size_m")),
            ground_truth=gt, attrs=attrs, mask=mask, saturation_counts=saturation,
            extras=extras,
            true_probe=None if true_probe is None else physics.single_mode(true_probe))


def _check_probe_shape(probe: np.ndarray, N: int, what: str) -> None:
    """A probe ``[N, N]`` or modes ``[K >= 1, N, N]`` like the patterns, else a
    :class:`DataFileError` starting with ``what`` (the file and dataset)."""
    if probe.shape[-2:] != (N, N) or probe.ndim == 3 and probe.shape[0] < 1:
        raise DataFileError(f"{what} has shape {probe.shape}, expected ({N}, {N}) like the "
                            f"patterns (or (K, {N}, {N}): K >= 1 probe modes)")


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
    frame = frame_for(positions, N)
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



def read_cxi_probe(path: str | Path) -> np.ndarray:
    """The probe at :data:`PROBE` as stored: a complex or real 2-D array (or 3-D: modes),
    any size."""
    with _open_cxi(path) as f:
        return _require(f, PROBE, (2, 3), "cf", str(path))[()]


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
        self._file = _open_cxi(path, rdcc_nbytes=int(chunk_cache_mb * 2 ** 20),
                              rdcc_nslots=100003)
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
