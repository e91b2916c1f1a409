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
  ``(row, col)`` in object pixels: the unambiguous copy that we read back.
* attributes of ``/entry_1/ptycho_torch``: ``object_shape``, ``object_pixel_size_m``
  and :attr:`PtychoData.attrs`; non-scalar attributes are stored as JSON text and
  listed in the ``json_attrs`` attribute, so :func:`read_cxi` decodes them again.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ELECTRON_VOLT_J = 1.602176634e-19
DETECTOR = "/entry_1/instrument_1/detector_1"
SOURCE = "/entry_1/instrument_1/source_1"
OURS = "/entry_1/ptycho_torch"


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

    @property
    def N(self) -> int:
        return int(self.counts.shape[-1])


def write_atomic_h5(path: Path, fill) -> None:
    """Create HDF5 ``path`` through a temporary file; ``fill(h5file)`` writes the content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            fill(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_cxi(path: str | Path, d: PtychoData) -> None:
    """Write ``d`` as a CXI 1.6 file (chunked, compressed counts), atomically."""
    def fill(f: h5py.File) -> None:
        f["cxi_version"] = 160
        det = f.create_group(DETECTOR)
        n, N, _ = d.counts.shape
        det.create_dataset("data", data=d.counts.astype(np.float32), chunks=(min(n, 64), N, N),
                           compression="gzip", compression_opts=4, shuffle=True)
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


def read_cxi(path: str | Path, *, load_counts: bool = True) -> PtychoData:
    """Read a CXI file written by :func:`write_cxi` (or any CXI with the same datasets).

    With ``load_counts=False`` the counts are an empty ``[0, N, N]`` array (header only).
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
        pos = _require(f, f"{OURS}/probe_position_px", 2, "fiu", where)[()].astype(np.float64)
        n, N, N2 = counts_ds.shape
        if n == 0 or N != N2:
            raise DataFileError(f"{where}: {DETECTOR}/data has shape {counts_ds.shape}, "
                                "expected [n > 0, N, N]")
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
        attrs = dict(f[OURS].attrs)
        for key in json.loads(attrs.pop("json_attrs", "[]")):
            attrs[key] = json.loads(attrs[key])
        shape = tuple(int(v) for v in attrs.pop("object_shape", gt.shape if gt is not None
                                                 else _frame_for(pos, N)))
        if "object_pixel_size_m" not in attrs:
            raise DataFileError(f"{where}: attribute object_pixel_size_m missing on {OURS}")
        return PtychoData(
            counts=counts.astype(np.float32), probe=probe.astype(np.complex64),
            positions_px=pos, object_shape=shape,
            energy_eV=_scalar(f, f"{SOURCE}/energy", where) / ELECTRON_VOLT_J,
            detector_distance_m=_scalar(f, f"{DETECTOR}/distance", where),
            detector_pixel_size_m=_scalar(f, f"{DETECTOR}/x_pixel_size", where),
            object_pixel_size_m=float(attrs.pop("object_pixel_size_m")),
            ground_truth=gt, attrs=attrs)


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
    """
    try:
        d = read_cxi(path, load_counts=False)
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
    if not np.isfinite(d.probe).all():
        problems.append(f"{role} data: {SOURCE}/illumination in {path} holds NaN or "
                        "infinite values")
    lo = d.positions_px - d.N / 2
    hi = d.positions_px + d.N / 2 + 1
    if not np.isfinite(d.positions_px).all():
        problems.append(f"{role} data: {OURS}/probe_position_px in {path} holds NaN or "
                        "infinite positions")
    elif (lo < 0).any() or (hi > np.asarray(d.object_shape)).any():
        problems.append(f"{role} data: {OURS}/probe_position_px in {path} has positions whose "
                        f"patch leaves the object frame {d.object_shape}")
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
