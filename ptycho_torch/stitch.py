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
from threadpoolctl import threadpool_limits

from ptycho_torch import physics
from ptycho_torch.config import InferenceConfig
from ptycho_torch.model import ValidPixels, poisson_loss


def pair_overlaps(patches: torch.Tensor, positions: torch.Tensor, pairs: torch.Tensor,
                  weight: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Overlaps ``c_ij = <A_d^T(w p_i), w p_j>`` for index pairs ``[m, 2]`` -> ``[m]`` complex,
    in ``p_j``'s frame: ``p_j`` at an integer position (not interpolated), ``p_i`` placed
    (bilinearly, :func:`physics.place_patches`) at the relative position ``d = pos_i - pos_j``.

    Computed by adjointness as ``<w p_i, A_d v_j>``: ``v_j`` is ``w p_j`` zero-padded to an
    ``S x S`` canvas and ``A_d`` cuts ``p_i``'s frame out of it; one ``N x N`` interpolated
    gather per pair, the canvases stacked into one tall image.
    """
    n, N = patches.shape[0], patches.shape[-1]
    wp = weight * patches
    shift = positions[pairs[:, 0]] - positions[pairs[:, 1]]  # [m, 2]
    pad = int(math.ceil(float(shift.abs().max()))) + 2
    S = N + 2 * pad
    canvases = wp.new_zeros((n, S, S))
    canvases[:, pad:pad + N, pad:pad + N] = wp
    canvases = canvases.reshape(n * S, S)
    centre = shift + pad + N / 2
    centre[:, 0] += S * pairs[:, 1].to(centre.dtype)  # row offset of canvas j
    out = []
    for s in range(0, len(pairs), chunk):
        cut = physics.extract_patches(canvases, centre[s:s + chunk], N)
        out.append((wp[pairs[s:s + chunk, 0]] * cut.conj()).sum((-2, -1)))
    return torch.cat(out)


def synchronise_phases(patches: torch.Tensor, positions: np.ndarray, weight: torch.Tensor,
                       neighbours: int = 8) -> torch.Tensor:
    """Rotate patches ``[n, N, N]`` by one global phase each so that overlaps agree.

    Pairwise overlaps ``c_ij`` of each patch with its ``neighbours`` nearest
    form a sparse Hermitian matrix ``H`` (``c_ij ~ |c| e^{i(t_i - t_j)}``); its
    leading eigenvector (Lanczos, from a fixed start: deterministic; to 1e-6, i.e.
    phases to ~1e-7 rad) is ``e^{i t}`` up to one global phase. The overlaps are
    computed in single precision (relative error ~1e-7, several times faster).
    """
    n = len(patches)
    if n < 3:
        return patches
    _, nn_idx = cKDTree(positions).query(positions, k=min(neighbours + 1, n))
    pairs = np.stack([np.repeat(np.arange(n), nn_idx.shape[1] - 1), nn_idx[:, 1:].ravel()], 1)
    pairs_t = torch.from_numpy(np.unique(np.sort(pairs, axis=1), axis=0))  # (i < j), sorted
    c = pair_overlaps(patches.to(torch.complex64), torch.from_numpy(positions), pairs_t,
                      weight.to(torch.float32)).to(torch.complex128).numpy()
    diag = (weight * patches).abs().square().sum((-2, -1)).numpy()
    i, j = pairs_t[:, 0].numpy(), pairs_t[:, 1].numpy()
    H = sparse.coo_matrix((np.concatenate([c, c.conj(), diag]),
                           (np.concatenate([i, j, np.arange(n)]),
                            np.concatenate([j, i, np.arange(n)]))), shape=(n, n)).tocsr()
    with threadpool_limits(1, user_api="blas"):  # tiny vectors: BLAS threads only spin
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
                      counts: torch.Tensor, valid: torch.Tensor | None, iterations: int,
                      lr: float) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Per-patch complex factors ``[n]`` and a global ramp ``[2]`` (rad/px) fitted to the counts.

    Minimises the Poisson NLL of ``counts [n, N, N]`` over the ``valid`` pixels (bool
    broadcasting to the counts, :class:`ValidPixels`; None = all) predicted from the stitched
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
                            counts, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.exp(log_factor.detach()), 0.01 * g.detach(), losses


def stitch(patches: torch.Tensor, positions: np.ndarray, shape: tuple[int, int],
           probe: np.ndarray, cfg: InferenceConfig,
           counts: np.ndarray | None = None,
           pixels: ValidPixels = ValidPixels()) -> tuple[np.ndarray, dict]:
    """Object ``[H, W]`` complex64 from patches ``[n, N, N]`` at ``positions [n, 2]`` (px).

    Weighted average ``sum_i A_i^T(w p_i) / sum_i A_i^T(w)`` with ``A_i`` the
    (sub-pixel) patch extraction of :mod:`ptycho_torch.physics` and ``w = |P|^2``
    (``probe_weighted``) or 1 (``uniform``). Pixels no patch covers are 0. With
    ``counts [n, N, N]`` and ``cfg.calibration_iterations > 0`` the phases are
    calibrated on the data's valid ``pixels`` (:func:`calibrate_patches`; give
    ``ValidPixels.of(data)`` for data with a detector mask or saturation). Returns the
    object and a JSON-able record of what was done.
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
        counts_t = torch.from_numpy(counts)
        factors, ramp, losses = calibrate_patches(
            patches, pos, shape, weight, den, torch.from_numpy(probe), counts_t, pixels(counts_t),
            cfg.calibration_iterations, cfg.calibration_learning_rate)
        patches = patches * factors[:, None, None]
        record.update({"calibration_iterations": cfg.calibration_iterations,
                       "calibration_loss_first_last": [losses[0], losses[-1]],
                       "calibration_ramp_rad_per_px": ramp.tolist()})
    obj = _average(patches, pos, shape, weight, den) * _ramp(shape, ramp)
    return obj.numpy().astype(np.complex64), record


def illumination(probe: np.ndarray, positions: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Summed probe intensity ``sum_i A_i^T |P|^2`` float64 ``[H, W]`` for ``positions [n, 2]``
    (px): with the probe's photon scale, the incident photons per object pixel."""
    inten = torch.from_numpy(np.abs(probe).astype(np.float64) ** 2)
    return physics.place_patches(inten.expand(len(positions), -1, -1),
                                 torch.from_numpy(positions), shape).numpy()


def scanned_region(positions: np.ndarray) -> tuple[slice, slice]:
    """Rows/cols spanned by the probe centres: the region every metric is computed on."""
    lo = [int(v) for v in np.ceil(positions.min(axis=0))]
    hi = [int(v) + 1 for v in np.floor(positions.max(axis=0))]
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])
