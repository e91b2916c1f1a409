"""Reconstruction quality without ground truth: data consistency and half-data FRC.

Measured data have no ground truth, so a reconstruction is judged by two standard checks.

**Data consistency (R-factor).** The reconstructed object ``O [H, W]`` and the probe
``P [N, N]`` predict the counts at scan position ``j`` through the forward model,
``lam_j = |F(P * A_j O)|^2`` (:func:`ptycho_torch.physics.forward_intensity`; ``A_j`` the
bilinear patch extraction used in training and stitching; no rescaling: the probe carries
the photon scale). Over the valid detector pixels ``u`` (mask 0, below saturation)::

    R_j = sum_u |sqrt(I_j(u)) - sqrt(lam_j(u))| / sum_u sqrt(I_j(u))     (per position)
    R   = sum_j,u |sqrt(I) - sqrt(lam)|        / sum_j,u sqrt(I)         (overall)

``R = 0`` for a perfect fit to noise-free data. With Poisson counts even the true object
and probe leave a residual: the *noise floor* ``R_noise = sum E|sqrt(K) - sqrt(lam)| /
sum sqrt(I)`` with ``K ~ Poisson(lam)``, evaluated at the predicted ``lam``
(:func:`poisson_sqrt_deviation`; the expectation tends to ``1/sqrt(2 pi) = 0.399`` per
pixel for bright pixels and to ``sqrt(lam)`` for dark ones). ``R / R_noise`` near 1 means
the reconstruction explains the data down to their photon noise.

**Half-data FRC.** The scan is split into two interleaved halves (a checkerboard of cells
one scan step wide, :func:`interleaved_halves`); each half is reconstructed on its own (the
network sees only that half's patterns, its patches are stitched and calibrated on that
half's counts), so the two reconstructions share the object but neither the noise nor the
position-dependent errors of the reconstruction. Their Fourier ring correlation
(:func:`ptycho_torch.metrics.frc`, complex images, over the region both halves scan, after
removing the global phase, phase ramp and amplitude scale between them) falls where those
dominate; the resolution is where it crosses the 1/7 threshold or the 1/2-bit threshold of
van Heel & Schatz (J. Struct. Biol. 151:250, 2005),
:func:`ptycho_torch.metrics.half_bit_threshold`. It measures consistency, not accuracy:
artefacts on each half's scan lattice show up as a negative FRC near the lattice
frequencies, and a model that ignored its input would agree with itself; read it together
with the R-factor.

:func:`data_consistency` is the one R-factor of every method; :func:`assess_reconstruction`
runs both and draws the figure for any method (:func:`assess`: the infer step's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import special

from ptycho_torch import physics
from ptycho_torch.config import InferenceConfig
from ptycho_torch.dataset import PtychoData, select_patterns
from ptycho_torch.grouping import interleaved_halves
from ptycho_torch.metrics import align, frc, frc_threshold_crossing, half_bit_threshold
from ptycho_torch.stitch import scanned_region, stitch

BRIGHT_LIMIT = 1.0 / math.sqrt(2.0 * math.pi)  # E|sqrt(K)-sqrt(lam)| for lam -> infinity
MIN_FRC_SIDE_PX = 8  # smallest side of the region a half-data FRC is computed on
NETWORK_HALVES = "each half predicted, stitched and calibrated alone"


# ----------------------------------------------------------------- data consistency

def predicted_counts(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray,
                     batch: int = 1024) -> np.ndarray:
    """Expected counts ``[n, N, N]`` float64 of object ``[H, W]`` and probe ``[N, N]`` at
    probe centres ``positions [n, 2]`` (px): ``|F(P * A_j O)|^2``, in complex128 (probe
    modes ``[K, N, N]``: ``sum_k |F(P_k * A_j O)|^2``)."""
    o = torch.from_numpy(np.asarray(obj, dtype=np.complex128))
    p = torch.from_numpy(np.asarray(probe, dtype=np.complex128))
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float64))
    N = p.shape[-1]
    return torch.cat([physics.forward_intensity(p, physics.extract_patches(o, pos[s:s + batch], N))
                      for s in range(0, len(pos), batch)]).numpy()


def _deviation_exact(lam: np.ndarray, chunk: int = 64) -> np.ndarray:
    """``E|sqrt(K) - sqrt(lam)|``, ``K ~ Poisson(lam)``, for ``lam [m]`` > 0 (sorted, so a
    chunk's windows are alike): pmf sums over ``k`` within 12 standard deviations (+ 12)."""
    out = np.empty_like(lam)
    for s in range(0, len(lam), chunk):
        part = lam[s:s + chunk, None]
        width = 12 * np.sqrt(part) + 12
        k = np.maximum(0.0, np.floor(part - width)) + np.arange(int(2 * width.max()) + 2)
        pmf = np.exp(special.xlogy(k, part) - part - special.gammaln(k + 1))  # Poisson
        out[s:s + chunk] = (pmf * np.abs(np.sqrt(k) - np.sqrt(part))).sum(1)
    return out


def poisson_sqrt_deviation(lam: np.ndarray) -> np.ndarray:
    """``E|sqrt(K) - sqrt(lam)|`` for ``K ~ Poisson(lam)``, elementwise (``lam`` in counts).

    Exact pmf sums on a table of ``lam`` (1e-6 .. 1e5 counts; every integer and 8 steps
    between them up to 256, where the expectation has a kink at each integer), interpolated
    in log-log: relative error below 2e-3. ``sqrt(lam) + lam`` below the table (the first
    terms of the series) and :data:`BRIGHT_LIMIT` above it (the normal limit; within 1e-6).
    """
    nodes = np.concatenate([np.geomspace(1e-6, 1.0, 300, endpoint=False),
                            1.0 + np.arange(255 * 8) / 8, np.geomspace(256.0, 1e5, 30)])
    table = _deviation_exact(nodes)
    lam = np.asarray(lam, dtype=np.float64)
    inside = np.clip(lam, nodes[0], nodes[-1])
    out = np.exp(np.interp(np.log(inside), np.log(nodes), np.log(table)))
    out = np.where(lam < nodes[0], np.sqrt(np.maximum(lam, 0)) + np.maximum(lam, 0), out)
    return np.where(lam > nodes[-1], BRIGHT_LIMIT, out)


def valid_mask(data: PtychoData) -> np.ndarray:
    """Bool ``[n, N, N]``: pixels that measure the pattern (mask 0, below saturation)."""
    valid = np.broadcast_to(data.valid_pixels(), data.counts.shape)
    if data.saturation_counts > 0:
        valid = valid & (data.counts < data.saturation_counts)
    return valid


def r_factor(counts: np.ndarray, predicted: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """R-factor of measured ``counts`` against ``predicted`` counts ``[n, N, N]`` over the
    ``valid`` pixels ``[n, N, N]`` (see the module notes): overall and per position, with
    the Poisson noise floor of each. Per-position values are lists over the n patterns."""
    root = np.sqrt(np.where(valid, counts, 0.0))
    residual = np.where(valid, np.abs(root - np.sqrt(np.maximum(predicted, 0.0))), 0.0)
    floor = np.where(valid, poisson_sqrt_deviation(np.maximum(predicted, 0.0)), 0.0)
    total = root.sum(axis=(1, 2))
    per = residual.sum(axis=(1, 2)) / np.maximum(total, 1e-30)
    per_floor = floor.sum(axis=(1, 2)) / np.maximum(total, 1e-30)
    overall, noise = float(residual.sum() / total.sum()), float(floor.sum() / total.sum())
    return {"r_factor": overall, "r_factor_poisson_expected": noise,
            "r_factor_over_noise": overall / noise if noise > 0 else math.inf,
            "per_position": per.tolist(), "per_position_poisson_expected": per_floor.tolist(),
            "definition": "R = sum|sqrt(I_meas) - sqrt(I_pred)| / sum sqrt(I_meas) over valid "
                          "pixels; I_pred = |F(P * patch of the stitched object)|^2; "
                          "poisson_expected = sum E|sqrt(K) - sqrt(I_pred)|, K ~ Poisson(I_pred), "
                          "over the same denominator"}


# ----------------------------------------------------------------- half-data FRC

def half_frc(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """FRC of two complex reconstructions ``a``, ``b`` ``[h, w]`` of the same region.

    ``b``'s global phase, linear phase ramp and amplitude scale relative to ``a`` are
    removed first (:func:`ptycho_torch.metrics.align`, no registration: both come from
    the same positions). Crossings in cycles/px (0.5: never below the threshold).
    """
    aligned, ref, info = align(b, a, register=False, remove_ramp=True)
    freq, curve = frc(ref, aligned)
    bit = half_bit_threshold(ref.shape)
    return {"freq_cycles_per_px": freq.tolist(), "frc": curve.tolist(),
            "half_bit_threshold": bit.tolist(),
            "frc_1_7_cycles_per_px": frc_threshold_crossing(freq, curve, 1.0 / 7.0),
            "frc_half_bit_cycles_per_px": frc_threshold_crossing(freq, curve, bit),
            "alignment": info}


def half_data_frc_of(data: PtychoData, reconstruct_half: Callable[[PtychoData], np.ndarray],
                     how: str) -> dict[str, Any]:
    """Reconstruct the two :func:`interleaved_halves` of ``data`` separately with
    ``reconstruct_half(subset) -> object [H, W]`` (complex, the frame of ``data``) and
    compare them (:func:`half_frc`) over the intersection of their scanned regions.

    Resolutions in px and nm (object pixel of ``data``); ``how`` says how each half was
    reconstructed. Raises ``ValueError`` when the scan does not split into two halves or
    the region both scan is under :data:`MIN_FRC_SIDE_PX` on a side.
    """
    first = interleaved_halves(data.positions_px)
    if first.all() or not first.any():
        raise ValueError(f"the {len(first)} positions do not split into two halves")
    halves = [select_patterns(data, first), select_patterns(data, ~first)]
    boxes = [scanned_region(h.positions_px) for h in halves]
    region = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(*boxes))
    if min(r.stop - r.start for r in region) < MIN_FRC_SIDE_PX:
        raise ValueError(f"the region both halves scan, {[r.stop - r.start for r in region]} px, "
                         f"is smaller than {MIN_FRC_SIDE_PX} px")
    objects = [reconstruct_half(h) for h in halves]
    out = half_frc(objects[0][region], objects[1][region])
    for key in ("1_7", "half_bit"):  # None: below the threshold from the first ring on
        f = out[f"frc_{key}_cycles_per_px"]
        out[f"resolution_{key}_px"] = 1.0 / f if f > 0 else None
        out[f"resolution_{key}_nm"] = data.object_pixel_size_m * 1e9 / f if f > 0 else None
    out.update({"halves": [int(first.sum()), int((~first).sum())],
                "region": {"rows": [region[0].start, region[0].stop],
                           "cols": [region[1].start, region[1].stop]},
                "split": "checkerboard of square cells one scan step (median distance to the 4 "
                         f"nearest positions) wide; {how}"})
    return out


def half_data_frc(data: PtychoData, predict: Callable[[PtychoData], torch.Tensor],
                  cfg: InferenceConfig) -> dict[str, Any]:
    """The PINN's :func:`half_data_frc_of`: ``predict(subset)`` returns the network's
    patches ``[m, N, N]`` for a subset of the patterns (grouped within it), stitched and
    calibrated on that subset's counts with ``cfg``."""
    return half_data_frc_of(data, network_half(predict, data, cfg), NETWORK_HALVES)


def network_half(predict: Callable[[PtychoData], torch.Tensor], data: PtychoData,
                 cfg: InferenceConfig) -> Callable[[PtychoData], np.ndarray]:
    """A network's reconstruction of one half of ``data``: its patches ``predict(half)``
    ``[m, N, N]`` stitched and calibrated on that half's counts into the object ``[H, W]``."""
    def one_half(h: PtychoData) -> np.ndarray:
        return stitch(predict(h), h.positions_px, data.object_shape, data.probe, cfg,
                      h.counts)[0]
    return one_half


# ----------------------------------------------------------------- every method's entry

def data_consistency(obj: np.ndarray, data: PtychoData, probe: np.ndarray | None = None,
                     positions: np.ndarray | None = None) -> dict[str, Any]:
    """The R-factor of a reconstruction against the measured counts of ``data``, with its
    Poisson noise floor (:func:`r_factor`): the one place every method (PINN, supervised
    baseline, iterative, hybrid) gets it from.

    ``obj [H, W]`` complex in the frame of ``data``; ``probe [N, N]`` (our unitary FFT
    convention, carrying the photon scale) and probe centres ``positions [n, 2]`` (row, col
    object px) are those the method ended with (refined / corrected), None: the data's.
    """
    probe = data.probe if probe is None else probe
    positions = data.positions_px if positions is None else positions
    return r_factor(data.counts, predicted_counts(obj, probe, positions), valid_mask(data))


def assess_reconstruction(obj: np.ndarray, data: PtychoData, figure: Path,
                          reconstruct_half: Callable[[PtychoData], np.ndarray] | None,
                          why_not: str, how: str = "", probe: np.ndarray | None = None,
                          positions: np.ndarray | None = None) -> dict[str, Any]:
    """Quality of any method's reconstruction ``obj [H, W]`` of ``data`` without ground
    truth: ``{"data_consistency": data_consistency(...), "half_data_frc": ...}``.

    The half-data FRC comes from :func:`half_data_frc_of` with ``reconstruct_half`` (the
    method run on one half of the scan; ``how`` describes it), or is ``{"skipped":
    why_not}`` when ``reconstruct_half`` is None, or says why a half could not be made.
    ``probe [N, N]`` and ``positions [n, 2]`` px: those the method ended with (None: the
    data's). Draws ``figure`` (PNG, :func:`quality_figure`).
    """
    consistency = data_consistency(obj, data, probe, positions)
    if reconstruct_half is None:
        halves = {"skipped": why_not}
    else:
        try:
            halves = half_data_frc_of(data, reconstruct_half, how)
        except ValueError as exc:  # e.g. a half with fewer positions than a group needs
            halves = {"skipped": f"half-data FRC not computed: {exc}"}
    quality_figure(figure, obj, data.positions_px if positions is None else positions,
                   consistency, halves)
    return {"data_consistency": consistency, "half_data_frc": halves}


def assess(obj: np.ndarray, data: PtychoData, predict: Callable[[PtychoData], torch.Tensor],
           cfg: InferenceConfig, figure: Path) -> dict[str, Any]:
    """The infer step's (PINN or supervised network) :func:`assess_reconstruction` of
    ``obj [H, W]``: the probe ``data.probe`` (the trained one, if trained), the data's
    positions, and the half-data FRC of the network's patches (``predict``, see
    :func:`half_data_frc`) unless ``cfg.half_data_frc`` is off."""
    return assess_reconstruction(
        obj, data, figure, network_half(predict, data, cfg) if cfg.half_data_frc else None,
        "half-data FRC not computed: inference.half_data_frc is false", NETWORK_HALVES)


def key_numbers(q: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of :func:`assess`'s result, for a step summary."""
    c, h = q["data_consistency"], q["half_data_frc"]
    out = {"r_factor": c["r_factor"], "r_factor_poisson_expected": c["r_factor_poisson_expected"]}
    if "skipped" in h:
        return {**out, "half_data_frc": h["skipped"]}
    return {**out, "half_frc_1_7_cycles_per_px": h["frc_1_7_cycles_per_px"],
            "half_frc_half_bit_cycles_per_px": h["frc_half_bit_cycles_per_px"],
            "half_frc_resolution_half_bit_nm": h["resolution_half_bit_nm"]}


def quality_figure(path: Path, obj: np.ndarray, positions: np.ndarray,
                   consistency: dict[str, Any], halves: dict[str, Any]) -> None:
    """Left: per-position R-factor (colour) at the probe centres ``positions [n, 2]`` (row,
    col object px) over ``|obj|`` ``[H, W]``, i.e. where the fit is poor. Right: the
    half-data FRC and its thresholds."""
    import matplotlib.pyplot as plt

    from ptycho_torch.figures import save
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.0), layout="constrained")
    left.imshow(np.abs(obj), cmap="gray")
    rows, cols = positions[:, 0], positions[:, 1]
    dots = left.scatter(cols, rows, c=consistency["per_position"], cmap="inferno", s=18,
                        edgecolors="none")
    plt.colorbar(dots, ax=left, fraction=0.046, pad=0.04, label="R-factor of the pattern")
    left.set_xlabel("column (object px)")
    left.set_ylabel("row (object px)")
    left.set_title(f"data consistency: R = {consistency['r_factor']:.4f} "
                   f"(Poisson noise alone: {consistency['r_factor_poisson_expected']:.4f})",
                   fontsize=9)
    if "skipped" in halves:
        right.set_axis_off()
        right.text(0.5, 0.5, halves["skipped"], ha="center", va="center", wrap=True, fontsize=9)
    else:
        freq = np.asarray(halves["freq_cycles_per_px"])
        right.plot(freq, halves["frc"], lw=1.5, label="half-data FRC")
        right.plot(freq[1:], halves["half_bit_threshold"][1:], "k--", lw=1, label="1/2-bit")
        right.axhline(1 / 7, color="k", ls=":", lw=1, label="1/7")
        right.set_xlim(0, 0.5)
        right.set_ylim(min(-0.1, float(np.min(halves["frc"]))), 1.05)
        right.set_xlabel("spatial frequency (cycles/px)")
        right.set_ylabel("FRC")
        right.grid(alpha=0.3)
        right.legend(fontsize=8, loc="lower left")
        nm = {k: "none" if halves[f"resolution_{k}_nm"] is None else
              f"{halves[f'resolution_{k}_nm']:.0f} nm" for k in ("half_bit", "1_7")}
        right.set_title(f"two interleaved halves {halves['halves']}: resolution "
                        f"{nm['half_bit']} (1/2-bit), {nm['1_7']} (1/7)", fontsize=9)
    save(fig, path)
