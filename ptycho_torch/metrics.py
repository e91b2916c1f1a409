"""Alignment-aware image-quality metrics for ptychographic reconstructions (numpy + scikit-image).

Objects are complex ``[H, W]`` arrays already cropped to the scanned region. A ptychographic
object is only defined up to a global phase offset, (optionally) a linear phase ramp, a small
translation and an overall amplitude scale: :func:`align` removes these and reports what it
removed; :func:`score` computes metrics on the result. Units: pixels (px), radians, cycles/px.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity  # not its PSNR: that module imports scipy.stats
from skimage.registration import phase_cross_correlation


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two 2-D arrays of equal shape, got {a.shape} and {b.shape}")


def _centred_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column pixel coordinates [h, w] relative to the array centre."""
    h, w = shape
    return np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")


def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def fourier_shift_image(x: np.ndarray, shift: tuple[float, float], pad: int = 32) -> np.ndarray:
    """Shift ``x`` [H, W] by ``shift`` (rows, cols) px (positive: towards higher indices).

    FFT phase-ramp shift of ``x`` reflect-padded by ``pad`` px, so the edge jump of a
    non-periodic crop does not ring across the image; the ``|shift|``-wide border is
    still not real data. Returns complex128 [H, W].
    """
    x = np.asarray(x, dtype=np.complex128)
    if shift[0] == 0 and shift[1] == 0:
        return x.copy()
    p = max(0, min(pad, x.shape[0] - 1, x.shape[1] - 1))
    out = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(np.pad(x, p, mode="reflect")), shift))
    return out[p : p + x.shape[0], p : p + x.shape[1]]


def _ramp_gradient(d: np.ndarray) -> np.ndarray:
    """Phase gradient (rows, cols) rad/px of ``d`` [h, w]: angle of sum d[i+1]*conj(d[i]).

    Amplitude-weighted and immune to 2*pi wrapping for |gradient| < pi rad/px.
    """
    return np.array([np.angle(np.vdot(d[:-1, :], d[1:, :])), np.angle(np.vdot(d[:, :-1], d[:, 1:]))])


def register_shift(recon: np.ndarray, truth: np.ndarray, upsample: int = 50, max_iter: int = 6) -> tuple[float, float]:
    """Sub-pixel shift (rows, cols) px that aligns ``recon`` [H, W] to ``truth`` [H, W].

    Applying it with :func:`fourier_shift_image` to ``recon`` aligns it (it is minus the
    displacement of recon). Precision 1/``upsample`` px; ignores phase offset, ramp, scale.
    """
    _check_pair(recon, truth)
    # Complex images, not amplitudes: |cross-correlation| ignores global phase and scale,
    # and weak-amplitude (phase) objects still register (amplitude-only registration was
    # off by pixels on noisy phase objects). Hann window: crops are not periodic. Plain
    # (not "phase"-normalised) correlation: whitening weights noise-dominated high
    # frequencies equally and failed with noise. A phase ramp shifts the spectrum and
    # wrecks complex correlation, so the (Hann-weighted) ramp of recon*conj(truth) is
    # removed, for registration only. The window biases the shift towards 0 in proportion
    # to the residual, so iterate: shift recon by the running estimate and re-register.
    r, t = np.asarray(recon, dtype=np.complex128), np.asarray(truth, dtype=np.complex128)
    win = _hann2d(t.shape)
    t_w = (t - t.mean()) * win
    y, x = _centred_grid(t.shape)
    total, g = np.zeros(2), np.zeros(2)
    for _ in range(max_iter):
        moved = fourier_shift_image(r * np.exp(-1j * (g[0] * y + g[1] * x)), (total[0], total[1]))
        dg = _ramp_gradient(moved * np.conj(t) * win)
        g += dg
        moved = moved * np.exp(-1j * (dg[0] * y + dg[1] * x))
        step = phase_cross_correlation(t_w, (moved - moved.mean()) * win, upsample_factor=upsample, normalization=None)[0]
        total += step
        if np.abs(step).max() < 1.0 / upsample:
            break
    return float(total[0]), float(total[1])


def _fit_ramp(d: np.ndarray) -> tuple[float, float, float]:
    """Fit the phase plane c + gr*y + gc*x (centred coordinates) of ``d`` = r*conj(t) [h, w].

    Coarse: :func:`_ramp_gradient` (wrap-immune). Refined: least squares weighted by
    sqrt|d| on the residual wrapped phase, then small and wrap-free. Returns (gr, gc, c).
    """
    g = _ramp_gradient(d)
    y, x = _centred_grid(d.shape)
    d = d * np.exp(-1j * (g[0] * y + g[1] * x))
    c = float(np.angle(d.sum()))
    res = np.angle(d * np.exp(-1j * c)).ravel()
    w = np.sqrt(np.abs(d)).ravel()
    design = np.stack([np.ones_like(res), y.ravel(), x.ravel()], axis=1) * w[:, None]
    dc, dgr, dgc = np.linalg.lstsq(design, res * w, rcond=None)[0]
    return float(g[0] + dgr), float(g[1] + dgc), c + float(dc)


def align(
    recon: np.ndarray, truth: np.ndarray, *, register: bool = True, remove_ramp: bool = False,
    upsample: int = 50, margin: int | None = None, max_shift_px: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Remove the ptychographic ambiguities of ``recon`` [H, W] relative to ``truth`` [H, W].

    (1) Register and Fourier-shift recon (with ``remove_ramp`` a coarse ramp is removed
    first, as a ramp kinks at the padded edge and rings); (2) crop ``margin`` px off every
    side of both (default ceil(max|shift|)+1 if ``register``, else 0) to drop the shifted-in
    border; (3) remove the global phase angle(sum(r*conj(t))); (4) if ``remove_ramp``, remove
    a plane phase ramp (:func:`_fit_ramp`); (5) scale so mean|r| == mean|t|.
    Returns (aligned recon, cropped truth), complex128 [H-2m, W-2m], and a JSON-serialisable
    dict such that aligned = amplitude_scale * exp(-1j*(phase_offset_rad + gr*y + gc*x)) *
    fourier_shift_image(recon, shift_px)[m:-m, m:-m] (y, x centred on the cropped region;
    up to edge ringing): shift_px [dr, dc], phase_offset_rad (wrapped to (-pi, pi]),
    phase_ramp_rad_per_px [gr, gc] or None, amplitude_scale, crop_px (m).
    With known probe and positions a reconstruction has no translation ambiguity, only
    small calibration offsets: a registered shift beyond ``max_shift_px`` (a poor
    reconstruction matching noise) is not applied and is reported as ``rejected_shift_px``.
    """
    _check_pair(recon, truth)
    r = np.asarray(recon, dtype=np.complex128)
    g0 = _ramp_gradient(r * np.conj(truth)) if remove_ramp else np.zeros(2)
    y, x = _centred_grid(r.shape)
    shift = register_shift(r, truth, upsample) if register else (0.0, 0.0)
    rejected = None
    if max(abs(shift[0]), abs(shift[1])) > max_shift_px:
        rejected, shift = [shift[0], shift[1]], (0.0, 0.0)
    r = fourier_shift_image(r * np.exp(-1j * (g0[0] * y + g0[1] * x)), shift)
    if margin is None:
        margin = math.ceil(max(abs(shift[0]), abs(shift[1]))) + 1 if register and rejected is None else 0
    h, w = r.shape
    if margin < 0 or 2 * margin >= min(h, w):
        raise ValueError(f"margin {margin} px invalid for shape {r.shape}")
    crop = (slice(margin, h - margin), slice(margin, w - margin))
    r, t = r[crop], np.asarray(truth, dtype=np.complex128)[crop]
    offset = float(np.angle(np.vdot(t, r)))
    r = r * np.exp(-1j * offset)
    ramp = None
    if remove_ramp:
        gr, gc, c = _fit_ramp(r * np.conj(t))
        y, x = _centred_grid(r.shape)
        r = r * np.exp(-1j * (c + gr * y + gc * x))
        offset += c - float(g0 @ shift)  # the pre-shift ramp g0.u is g0.(y - shift) after it
        ramp = [float(g0[0] + gr), float(g0[1] + gc)]
    scale = float(np.abs(t).mean() / np.abs(r).mean())
    info = {"shift_px": [shift[0], shift[1]], "phase_offset_rad": float(np.angle(np.exp(1j * offset))),
            "phase_ramp_rad_per_px": ramp, "amplitude_scale": scale, "crop_px": int(margin),
            "rejected_shift_px": rejected}
    return r * scale, t, info


def frc(a: np.ndarray, b: np.ndarray, *, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two real or complex images [H, W] of equal shape.

    Means are subtracted and (if ``window``) a separable Hann window applied, so the
    edge-discontinuity cross of the spectrum does not correlate spuriously. Rings are
    1/N wide, N = min(H, W) (no square crop needed); frequencies above 0.5 are dropped.
    Returns (freq [N//2+1] in cycles/px, 0..0.5; FRC [N//2+1], 0 for empty rings).
    """
    _check_pair(a, b)
    h, w = a.shape
    win = _hann2d((h, w)) if window else 1.0
    fa, fb = np.fft.fft2((a - a.mean()) * win), np.fft.fft2((b - b.mean()) * win)
    ring, rings = _rings((h, w))

    def ring_sum(v: np.ndarray) -> np.ndarray:
        return np.bincount(ring, weights=v.ravel(), minlength=rings + 1)[: rings]

    num = ring_sum(np.real(fa * np.conj(fb)))
    den = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    n = min(h, w)
    return np.arange(rings) / n, np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _rings(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """FRC ring index [H*W] of every FFT pixel of an image ``shape`` (rings 1/N wide,
    N = min(H, W); pixels beyond 0.5 cycles/px get index N//2 + 1) and the ring count N//2 + 1."""
    h, w = shape
    n = min(h, w)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    ring = np.rint(np.hypot(fy, fx) * n).astype(int).ravel()
    return np.minimum(ring, n // 2 + 1), n // 2 + 1


def half_bit_threshold(shape: tuple[int, int]) -> np.ndarray:
    """The 1/2-bit FRC threshold [N//2+1] of :func:`frc` rings for images ``shape``:
    ``(0.2071 + 1.9102 / sqrt(n_r)) / (1.2071 + 0.9102 / sqrt(n_r))``, ``n_r`` pixels in
    ring r (van Heel & Schatz, J. Struct. Biol. 151:250, 2005)."""
    ring, rings = _rings(shape)
    root = np.sqrt(np.maximum(np.bincount(ring, minlength=rings + 1)[:rings], 1))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def frc_threshold_crossing(freq: np.ndarray, curve: np.ndarray,
                           threshold: float | np.ndarray) -> float:
    """First frequency (cycles/px) where ``curve`` drops below ``threshold`` (a number, or
    one value per ring such as :func:`half_bit_threshold`), linearly interpolated; 0.5 if it
    never drops below. The DC ring (index 0) carries no information (:func:`frc` subtracts
    the means): it counts as 1, never a crossing, only the start of the interpolation."""
    margin = np.concatenate([[1.0], curve[1:]]) - threshold
    below = np.nonzero(margin[1:] < 0)[0]
    if below.size == 0:
        return 0.5
    i = int(below[0]) + 1
    f0, f1, m0, m1 = freq[i - 1], freq[i], margin[i - 1], margin[i]
    if m0 <= 0:  # below at the first ring and at DC too: nothing is resolved
        return float(f0)
    return float(f0 + m0 * (f1 - f0) / (m0 - m1))


def frc50(a: np.ndarray, b: np.ndarray) -> float:
    """FRC resolution (cycles/px) of images [H, W] at the 0.5 threshold."""
    return frc_threshold_crossing(*frc(a, b), 0.5)


def frc_1_7(a: np.ndarray, b: np.ndarray) -> float:
    """FRC resolution (cycles/px) of images [H, W] at the 1/7 threshold."""
    return frc_threshold_crossing(*frc(a, b), 1.0 / 7.0)


def image_metrics(recon_real: np.ndarray, truth_real: np.ndarray) -> dict:
    """Metrics of a real image [H, W] against its reference [H, W] (same units).

    Plain floats: mae, mse, psnr (dB; inf for identical images) and ssim (both with
    data_range = truth.max() - truth.min()), frc50 and frc_1_7 (cycles/px).
    """
    r, t = np.asarray(recon_real, dtype=np.float64), np.asarray(truth_real, dtype=np.float64)
    _check_pair(r, t)
    data_range = float(t.max() - t.min())
    mse = float(np.mean((r - t) ** 2))
    freq, curve = frc(r, t)
    return {
        "mae": float(np.mean(np.abs(r - t))),
        "mse": mse,
        "psnr": math.inf if mse == 0 else float(10 * np.log10(data_range ** 2 / mse)),
        "ssim": float(structural_similarity(t, r, data_range=data_range)),
        "frc50": frc_threshold_crossing(freq, curve, 0.5),
        "frc_1_7": frc_threshold_crossing(freq, curve, 1.0 / 7.0),
    }


def score(recon: np.ndarray, truth: np.ndarray, *, register: bool = True, remove_ramp: bool = False) -> dict:
    """Align ``recon`` [H, W] to ``truth`` [H, W] (:func:`align`) and score amplitude and phase.

    Phase metrics compare angle(t) with angle(t) + angle(r*conj(t)), i.e. the truth phase
    plus the *wrapped* difference, so a 2*pi wrap does not count as an error. ``frc_curves``
    holds the FRC curves behind ``frc50`` / ``frc_1_7`` (lists over ``freq_cycles_per_px``).
    """
    r, t, info = align(recon, truth, register=register, remove_ramp=remove_ramp)
    phase_t = np.angle(t)
    phase_r = phase_t + np.angle(r * np.conj(t))
    freq, amp_curve = frc(np.abs(r), np.abs(t))
    return {
        "amplitude": image_metrics(np.abs(r), np.abs(t)),
        "phase": image_metrics(phase_r, phase_t),
        "alignment": info,
        "region_shape": [int(t.shape[0]), int(t.shape[1])],
        "frc_curves": {"freq_cycles_per_px": freq.tolist(), "amplitude": amp_curve.tolist(),
                       "phase": frc(phase_r, phase_t)[1].tolist()},
    }


def apply_alignment(recon: np.ndarray, truth: np.ndarray, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """Redo the alignment ``info`` of ``recon`` [H, W] that :func:`align` (or :func:`score`)
    made without ramp removal: shift, crop, global phase, amplitude scale.

    Returns (aligned recon, cropped truth), complex128 [H-2m, W-2m] with m = ``crop_px``:
    the arrays the metrics were computed on.
    """
    _check_pair(recon, truth)
    if info["phase_ramp_rad_per_px"] is not None:
        raise ValueError("apply_alignment: alignments with a removed phase ramp are not supported")
    r = fourier_shift_image(recon, (info["shift_px"][0], info["shift_px"][1]))
    m = info["crop_px"]
    crop = (slice(m, r.shape[0] - m), slice(m, r.shape[1] - m))
    scale = info["amplitude_scale"] * np.exp(-1j * info["phase_offset_rad"])
    return scale * r[crop], np.asarray(truth, dtype=np.complex128)[crop]


def position_rms_error(positions: np.ndarray, true: np.ndarray) -> float:
    """RMS distance (px) between ``positions`` and ``true`` ``[n, 2]`` after removing their
    mean offset: a common shift of all positions only translates the object, which
    :func:`align` removes, so it is no error of the scan."""
    error = positions - true
    return float(np.sqrt(np.mean(np.sum(np.square(error - error.mean(axis=0)), axis=1))))


def probe_error(probe: np.ndarray, true: np.ndarray) -> float:
    """Relative error ``min_c ||c P - P_true|| / ||P_true||`` of a probe ``[N, N]``, with the
    complex factor ``c`` that minimises it: no measurement fixes a probe's global phase, and
    an object ``a O`` with a probe ``P / a`` gives the same counts, so neither is an error of
    its shape (the photon scale is reported apart, :func:`probe_photon_ratio`).

    When either has several modes (``[K, N, N]``, :func:`coherence_error`) the error of
    their mutual coherence: any unitary mixing of incoherent modes gives the same counts, so
    modes are not compared one by one."""
    if probe.ndim == 3 and len(probe) > 1 or true.ndim == 3 and len(true) > 1:
        return coherence_error(probe, true)
    p = probe.reshape(true.shape[-2:]).astype(np.complex128)
    t = true.reshape(true.shape[-2:]).astype(np.complex128)
    norm = np.vdot(p, p).real
    c = np.vdot(p, t) / norm if norm > 0 else 0.0
    return float(np.linalg.norm(c * p - t) / np.linalg.norm(t))


def coherence_error(probe: np.ndarray, true: np.ndarray) -> float:
    """Relative error ``min_c ||c J - J_true||_F / ||J_true||_F`` (``c >= 0``) of the mutual
    coherence ``J = sum_k P_k P_k^H`` (an ``N^2 x N^2`` matrix) of probe modes ``[K, N, N]``
    (or ``[N, N]``): invariant to the modes' phases and to any unitary mixing of them, which
    leave every expected count unchanged. Computed from the ``K x K`` Gram matrices
    (``<J_a, J_b>_F = ||M_a M_b^H||_F^2``, ``M`` the modes as rows); 0 for the same set of
    modes, 1 for modes orthogonal to the true ones."""
    p = probe.reshape(-1, true.shape[-2] * true.shape[-1]).astype(np.complex128)
    t = true.reshape(-1, p.shape[1]).astype(np.complex128)
    a, b = (np.linalg.norm(p.conj() @ p.T) ** 2, np.linalg.norm(p.conj() @ t.T) ** 2)
    total = np.linalg.norm(t.conj() @ t.T) ** 2
    return float(math.sqrt(max(total - (b * b / a if a > 0 else 0.0), 0.0) / total))


def probe_photon_ratio(probe: np.ndarray, true: np.ndarray) -> float:
    """``sum |P|^2 / sum |P_true|^2``: the probe's photons against the true probe's."""
    return float(np.sum(np.abs(probe.astype(np.complex128)) ** 2)
                 / np.sum(np.abs(true.astype(np.complex128)) ** 2))
