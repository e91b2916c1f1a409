"""One ptychographic scan in memory: :class:`PtychoData`, the error a bad data file raises,
and what belongs to the type (CXI mask bits, pattern selection, true positions).

The file formats live beside it: :mod:`ptycho_torch.cxi` (CXI 1.6 HDF5) and
:mod:`ptycho_torch.npz` (PtychoPINN NPZ); :func:`ptycho_torch.data.read_data` picks one by
the file's suffix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# CXI pixel-mask bits (CXI 1.6 / Cheetah convention): 0 = good pixel
MASK_INVALID, MASK_SATURATED, MASK_DEAD, MASK_SHADOWED = 0x1, 0x2, 0x8, 0x10


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and dataset."""


@dataclass(frozen=True)
class PtychoData:
    """One scan: counts ``[n, N, N]``, probe ``[N, N]`` (or ``K >= 2`` incoherent modes
    ``[K, N, N]``, :func:`ptycho_torch.physics.probe_modes`), positions ``[n, 2]`` (row, col
    px)."""
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
    true_probe: np.ndarray | None = None  # complex [N, N] / [K, N, N]: simulated with it

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


def frame_for(positions: np.ndarray, N: int) -> tuple[int, int]:
    """Smallest object frame ``(H, W)`` (px) holding every ``N x N`` patch centred at
    positions ``[n, 2]`` (row, col px)."""
    hi = np.ceil(positions.max(axis=0) + N / 2 + 1).astype(int)
    return int(hi[0]), int(hi[1])


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
