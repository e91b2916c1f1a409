"""Stitching predicted patches into the full object.

A diffraction pattern does not measure the global phase of its patch, so the
network's patches disagree on it. Two steps fix that, neither using ground truth:

1. :func:`synchronise_phases` finds one phase per patch that makes overlapping
   patches agree, all at once (angular synchronisation: the leading eigenvector
   of the Hermitian matrix of pairwise overlaps). Small systematic errors in the
   patches' phase gradients still add up to a drift across the object.
2. :func:`calibrate_patches` then adjusts one complex factor per patch (its
   global phase and amplitude scale) and one global phase ramp (``2n + 2``
   numbers; the shapes of the patches are untouched) so that the *stitched*
   object best explains the measured counts (Poisson NLL through the same
   forward model as training). The stitched object couples neighbours, so the
   data do determine these constants there.

:func:`stitch` forms the weighted average on the object canvas.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import eigsh
from scipy.spatial import cKDTree

from ptycho_torch import physics
from ptycho_torch.config import InferenceConfig
from ptycho_torch.model import poisson_loss


def pair_overlaps(patches: torch.Tensor, positions: torch.Tensor, pairs: torch.Tensor,
                  weight: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``c_ij = <A_i^T(w p_i), A_j^T(w p_j)>`` for index pairs ``[m, 2]`` -> ``[m]`` complex.

    Each pair gets its own small canvas: ``p_j`` at its centre (an integer
    position: no interpolation), ``p_i`` displaced by ``pos_i - pos_j``.
    """
    N = patches.shape[-1]
    out = []
    for s in range(0, len(pairs), chunk):
        i, j = pairs[s:s + chunk, 0], pairs[s:s + chunk, 1]
        shift = positions[i] - positions[j]  # [b, 2]
        M = N + 2 * (int(math.ceil(float(shift.abs().max()))) + 2)
        row0 = M * torch.arange(len(i), dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.0])
        a = physics.place_patches(weight * patches[i], M // 2 + shift + row0, (len(i) * M, M))
        b = physics.place_patches(weight * patches[j], M // 2 + row0, (len(i) * M, M))
        out.append((a * b.conj()).reshape(len(i), M * M).sum(1))
    return torch.cat(out)


def synchronise_phases(patches: torch.Tensor, positions: np.ndarray, weight: torch.Tensor,
                       neighbours: int = 8) -> torch.Tensor:
    """Rotate patches ``[n, N, N]`` by one global phase each so that overlaps agree.

    Pairwise overlaps ``c_ij`` of each patch with its ``neighbours`` nearest
    form a sparse Hermitian matrix ``H`` (``c_ij ~ |c| e^{i(t_i - t_j)}``); its
    leading eigenvector (Lanczos, from a fixed start: deterministic) is
    ``e^{i t}`` up to one global phase.
    """
    n = len(patches)
    if n < 3:
        return patches
    _, nn_idx = cKDTree(positions).query(positions, k=min(neighbours + 1, n))
    pairs = {(min(i, j), max(i, j)) for i, row in enumerate(nn_idx) for j in row[1:]}
    pairs_t = torch.tensor(sorted(pairs), dtype=torch.long)
    c = pair_overlaps(patches, torch.from_numpy(positions), pairs_t, weight).numpy()
    diag = (weight * patches).abs().square().sum((-2, -1)).numpy()
    i, j = pairs_t[:, 0].numpy(), pairs_t[:, 1].numpy()
    H = sparse.coo_matrix((np.concatenate([c, c.conj(), diag]),
                           (np.concatenate([i, j, np.arange(n)]),
                            np.concatenate([j, i, np.arange(n)]))), shape=(n, n)).tocsr()
    _, vec = eigsh(H, k=1, which="LA", v0=np.ones(n, dtype=complex))
    v = torch.from_numpy(vec[:, 0])
    return patches * (v.conj() / v.abs().clamp_min(1e-30))[:, None, None]


def _average(patches: torch.Tensor, pos: torch.Tensor, shape: tuple[int, int],
             weight: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``sum_i A_i^T(w p_i) / den`` with ``den = sum_i A_i^T(w)`` clamped, zero where uncovered."""
    num = physics.place_patches(weight * patches, pos, shape)
    return torch.where(den > 1e-3, num / den.clamp_min(1e-3), 0)


def _ramp(shape: tuple[int, int], gradient: torch.Tensor) -> torch.Tensor:
    """``exp(i (g_r * row + g_c * col))`` over ``shape``; ``gradient`` in rad/px."""
    rows = torch.arange(shape[0], dtype=torch.float64)[:, None]
    cols = torch.arange(shape[1], dtype=torch.float64)[None, :]
    return torch.exp(1j * (gradient[0] * rows + gradient[1] * cols))


def calibrate_patches(patches: torch.Tensor, pos: torch.Tensor, shape: tuple[int, int],
                      weight: torch.Tensor, den: torch.Tensor, probe: torch.Tensor,
                      counts: torch.Tensor, iterations: int,
                      lr: float) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Per-patch complex factors ``[n]`` and a global ramp ``[2]`` (rad/px) fitted to the counts.

    Minimises the Poisson NLL of ``counts [n, N, N]`` predicted from the stitched
    object ``average(p_i exp(a_i + i t_i)) * e^{i g.x}`` with Adam; returns the
    factors ``exp(a + i t)``, ``g`` and the loss per iteration. The ramp is
    optimised in units of 0.01 rad/px so that one learning rate suits all.
    """
    log_factor = torch.zeros(len(patches), dtype=torch.complex128, requires_grad=True)
    g = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_factor, g], lr=lr)
    probe, counts, N = probe.to(torch.complex128), counts.to(torch.float64), patches.shape[-1]
    losses = []
    for _ in range(iterations):
        scaled = patches * torch.exp(log_factor)[:, None, None]
        obj = _average(scaled, pos, shape, weight, den) * _ramp(shape, 0.01 * g)
        loss = poisson_loss(physics.forward_intensity(probe, physics.extract_patches(obj, pos, N)),
                            counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.exp(log_factor.detach()), 0.01 * g.detach(), losses


def stitch(patches: torch.Tensor, positions: np.ndarray, shape: tuple[int, int],
           probe: np.ndarray, cfg: InferenceConfig,
           counts: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Object ``[H, W]`` complex64 from patches ``[n, N, N]`` at ``positions [n, 2]`` (px).

    Weighted average ``sum_i A_i^T(w p_i) / sum_i A_i^T(w)`` with ``A_i`` the
    (sub-pixel) patch extraction of :mod:`ptycho_torch.physics` and ``w = |P|^2``
    (``probe_weighted``) or 1 (``uniform``). Pixels no patch covers are 0. With
    ``counts [n, N, N]`` and ``cfg.calibration_iterations > 0`` the phases are
    calibrated on the data (:func:`calibrate_patches`). Returns the object and a
    JSON-able record of what was done.
    """
    pos = torch.from_numpy(positions)
    weight = torch.from_numpy(np.abs(probe) ** 2) if cfg.stitch == "probe_weighted" \
        else torch.ones(probe.shape)
    weight = (weight / weight.max()).to(torch.float64)
    patches = patches.to(torch.complex128)
    den = physics.place_patches(weight.expand(len(pos), -1, -1), pos, shape)
    record: dict = {"stitch": cfg.stitch, "phase_sync": cfg.phase_sync}
    if cfg.phase_sync:
        patches = synchronise_phases(patches, positions, weight)
    ramp = torch.zeros(2, dtype=torch.float64)
    if counts is not None and cfg.calibration_iterations > 0:
        factors, ramp, losses = calibrate_patches(
            patches, pos, shape, weight, den, torch.from_numpy(probe), torch.from_numpy(counts),
            cfg.calibration_iterations, cfg.calibration_learning_rate)
        patches = patches * factors[:, None, None]
        record.update({"calibration_iterations": cfg.calibration_iterations,
                       "calibration_loss_first_last": [losses[0], losses[-1]],
                       "calibration_ramp_rad_per_px": ramp.tolist()})
    obj = _average(patches, pos, shape, weight, den) * _ramp(shape, ramp)
    return obj.numpy().astype(np.complex64), record


def scanned_region(positions: np.ndarray) -> tuple[slice, slice]:
    """Rows/cols spanned by the probe centres: the region every metric is computed on."""
    lo = [int(v) for v in np.ceil(positions.min(axis=0))]
    hi = [int(v) + 1 for v in np.floor(positions.max(axis=0))]
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])
