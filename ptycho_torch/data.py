"""The one place that picks a data file's format: :func:`data_format` (by the suffix), and
what goes through it: :func:`read_data`, :func:`read_probe`, :func:`check_data_file`, and
the measured scans of ``data.source: file`` (:func:`measured_sets`).

The data type is :class:`ptycho_torch.dataset.PtychoData`; the formats are CXI 1.6 HDF5
(:mod:`ptycho_torch.cxi`) and PtychoPINN NPZ (:mod:`ptycho_torch.npz`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ptycho_torch import cxi, npz
from ptycho_torch.config import DataConfig
from ptycho_torch.dataset import DataFileError, PtychoData, select_patterns
from ptycho_torch.photon_scale import rescale_probe

FORMATS = {".cxi": "cxi", ".h5": "cxi", ".hdf5": "cxi", ".npz": "npz"}  # suffix -> format


def data_format(path: str | Path) -> str:
    """``"cxi"`` or ``"npz"``: the format of data file ``path``, by its suffix (any case,
    see :data:`FORMATS`); raises :class:`DataFileError` naming the file for another one."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataFileError(f"{path}: unknown data format {suffix or '(no suffix)'!r}, "
                            f"expected a file ending in {', '.join(FORMATS)}")
    return FORMATS[suffix]


def read_data(path: str | Path, geometry: DataConfig | None = None) -> PtychoData:
    """A data set from a CXI/HDF5 file or a PtychoPINN ``.npz`` (:func:`data_format`);
    ``geometry`` gives an NPZ its geometry and a foreign CXI its translation convention,
    and with ``geometry.probe_rescale`` the probe is fitted to the counts' photon scale
    (:func:`ptycho_torch.photon_scale.rescale_probe`)."""
    if data_format(path) == "npz":
        d = npz.read_npz(path, geometry)
    else:
        d = cxi.read_cxi(path, translation=geometry.cxi_translation if geometry else "sample")
    return rescale_probe(d) if geometry is not None and geometry.probe_rescale else d


def read_probe(path: str | Path) -> tuple[np.ndarray, str]:
    """The probe of a data file as stored (complex or real, 2-D, any size) and the name of
    its dataset or array, for messages."""
    if data_format(path) == "npz":
        return npz.read_npz_probe(path), npz.PROBE
    return cxi.read_cxi_probe(path), cxi.PROBE


def check_data_file(path: str | Path, cfg, role: str = "train") -> list[str]:
    """Problems that make ``path`` unusable with config ``cfg`` (empty list = fine).

    Checks readability, datasets, N against ``data.N``, enough positions for
    ``training.batch_size``, finite positions inside the object frame, a finite
    probe, and counts (no NaN, no negatives), streaming a CXI file's counts in chunks.
    With ``cfg=None`` (an invalid config) the checks against the config are skipped.
    A ``.npz`` file is read whole by :func:`ptycho_torch.npz.read_npz` (geometry from
    ``cfg.data``).
    """
    try:
        fmt = data_format(path)
        d = (npz.read_npz(path, cfg.data if cfg else None) if fmt == "npz"
             else cxi.read_cxi(path, load_counts=False))
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
    module = npz if fmt == "npz" else cxi
    if not np.isfinite(d.probe).all():
        problems.append(f"{role} data: {module.PROBE} in {path} holds NaN or infinite values")
    lo = d.positions_px - d.N / 2
    hi = d.positions_px + d.N / 2 + 1
    if not np.isfinite(d.positions_px).all():
        problems.append(f"{role} data: {module.POSITIONS} in {path} holds NaN or infinite "
                        "positions")
    elif (lo < 0).any() or (hi > np.asarray(d.object_shape)).any():
        problems.append(f"{role} data: {module.POSITIONS} in {path} has positions whose "
                        f"patch leaves the object frame {d.object_shape}")
    if fmt == "npz":  # read_npz has refused NaN, infinite and negative amplitudes
        return problems
    return problems + _counts_problems(path, role)


def _counts_problems(path: str | Path, role: str) -> list[str]:
    """NaN, infinite or negative counts in a CXI file, streamed in blocks of 256 patterns
    (the first problem found), or the read error of a truncated file."""
    try:
        with cxi.CountsReader(path) as counts:
            for start, block in counts.blocks(256):
                bad = ("NaN or infinite" if not np.isfinite(block).all() else
                       "negative" if (block < 0).any() else "")
                if bad:
                    return [f"{role} data: {cxi.DETECTOR}/data in {path} holds {bad} counts "
                            f"(first in patterns {start}..{start + 255})"]
    except DataFileError as exc:
        return [f"{role} data: {exc}"]
    return []


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
