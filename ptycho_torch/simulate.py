"""Simulate ptychographic data sets: object, probe, scan, detector -> CXI.

``python -m ptycho_torch.simulate --config-json '{...}' --train-out train.cxi
--test-out test.cxi --report-dir DIR`` writes a training and a test data set
of *different* objects (seeds ``[seed, 0]`` and ``[seed, 1]``), or, with
``data.source: file``, converts ``data.train_file``/``data.test_file`` (CXI or
PtychoPINN NPZ; without a test file, a split of the training scan, see
:func:`ptycho_torch.data.measured_sets`) to those two CXI files, simulating nothing.

Photon scaling: the noise-free intensities ``|F(P * O_patch)|^2`` of all patterns
are scaled by one factor ``s`` so that the mean total expected counts per pattern
(whole detector, before beamstop, dead pixels and saturation) equal ``nphotons``;
the stored probe is ``sqrt(s) * P`` (``P`` of unit norm), so the stored probe and
object reproduce the expected counts directly through
:func:`ptycho_torch.physics.forward_intensity`, and ``sum |P_stored|^2`` is the
photon count incident per exposure.

Sub-pixel positions: scan positions lie on a 1/8-pixel lattice and the object is
sampled there exactly, by Fourier interpolation (:func:`fourier_patches` explains
why not bilinearly, as the model does). Generated objects (``grf``, ``lines``) are
periodic by construction; an image object is mirror-extended first so that its
periodic continuation has no edge jump.

Determinism: one seed gives byte-identical files. The object, the scan, the
detector mask and the Poisson noise draw from independent streams of
``numpy.random.SeedSequence(seed)``, and the noise is drawn in fixed blocks of
patterns, whatever the number of threads.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ptycho_torch import cli, physics
from ptycho_torch.config import (DataConfig, DetectorConfig, ExperimentConfig, ObjectConfig,
                                 ProbeConfig, ScanConfig)
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.cxi import write_cxi
from ptycho_torch.data import measured_sets, read_probe
from ptycho_torch.dataset import (MASK_DEAD, MASK_INVALID, MASK_SHADOWED, DataFileError,
                                  PtychoData)
from ptycho_torch.evidence import StepReport

SUBPIXEL_STEPS = 8      # scan positions are multiples of 1/8 px
NOISE_BLOCK = 256       # patterns per Poisson block (fixed: part of the random stream)
# Bytes of patches per forward-model batch and of sub-pixel shifted object copies at a
# time: cache-sized, so each batch is gathered, multiplied, transformed and squared while
# it is still in cache (docs/findings.md has the measurements; the output does not depend
# on them).
PATCH_BUDGET = 1 << 20
SHIFT_BUDGET = 2 << 20


# ----------------------------------------------------------------- objects

def _normalise(x: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] (a constant image becomes 0)."""
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def random_field(size: int, slope: float, cutoff_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth real Gaussian random field ``[size, size]`` in [0, 1], periodic.

    Power spectrum ``|k|^-slope`` for spatial frequencies below ``1/cutoff_px``.
    """
    k = np.fft.fftfreq(size)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    kk[0, 0] = 1.0 / size
    filt = kk ** (-slope / 2) * np.exp(-(kk * cutoff_px) ** 2)
    noise = rng.standard_normal((size, size))
    return _normalise(np.fft.ifft2(np.fft.fft2(noise) * filt).real)


def lines_image(size: int, blur_px: float, rng: np.random.Generator, n_lines: int = 0) -> np.ndarray:
    """PtychoPINN-style "lines": random straight segments, Gaussian-blurred (periodic), in [0, 1]."""
    img = np.zeros((size, size))
    for _ in range(n_lines or size // 2):
        (r0, c0), (r1, c1) = rng.uniform(0, size, (2, 2))
        t = np.linspace(0, 1, 2 * size)
        img[np.clip((r0 + t * (r1 - r0)).astype(int), 0, size - 1),
            np.clip((c0 + t * (c1 - c0)).astype(int), 0, size - 1)] += 1
    k = np.fft.fftfreq(size)
    gauss = np.exp(-2 * (math.pi * blur_px) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    return _normalise(np.fft.ifft2(np.fft.fft2(img) * gauss).real)


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


def image_field(path: str, size: int) -> np.ndarray:
    """The image at ``path`` as a ``[size, size]`` field in [0, 1]: centre-cropped to a
    square, resampled (linear, anti-aliased when shrinking), rescaled min..max."""
    from skimage.transform import resize
    img = load_image(path)
    side = min(img.shape)
    r0, c0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    square = img[r0:r0 + side, c0:c0 + side]
    if side != size:
        square = resize(square, (size, size), order=1, mode="reflect",
                        anti_aliasing=side > size)
    return _normalise(square)


def make_object(size: int, cfg: ObjectConfig, rng: np.random.Generator) -> np.ndarray:
    """Complex object ``[size, size]`` with amplitude and phase in the configured ranges."""
    if cfg.kind == "grf":
        amp = random_field(size, cfg.spectral_slope, cfg.feature_size_px, rng)
        phase = random_field(size, cfg.spectral_slope, cfg.feature_size_px, rng)
    elif cfg.kind == "lines":
        amp = 1.0 - lines_image(size, cfg.feature_size_px, rng)
        phase = lines_image(size, cfg.feature_size_px, rng)
    else:
        amp = image_field(cfg.amplitude_file, size)
        phase = image_field(cfg.phase_file, size) if cfg.phase_file else np.full_like(amp, 0.5)
    amplitude = cfg.amplitude_min + (cfg.amplitude_max - cfg.amplitude_min) * amp
    return amplitude * np.exp(1j * cfg.phase_max_rad * (2 * phase - 1))


def mirror_extend(obj: np.ndarray) -> np.ndarray:
    """``[2H, 2W]``: ``obj`` and its mirror images, a periodic continuation without edge jumps.

    ``obj`` stays at ``[0:H, 0:W]``, so positions are unchanged.
    """
    wide = np.concatenate([obj, obj[:, ::-1]], axis=1)
    return np.concatenate([wide, wide[::-1, :]], axis=0)


# ----------------------------------------------------------------- probes

def load_probe(path: str | Path, N: int) -> np.ndarray:
    """A complex128 probe ``[N, N]`` (or modes ``[K, N, N]``) from a data file
    (:func:`ptycho_torch.data.read_probe`:
    a CXI file's ``source_1/illumination``, a PtychoPINN NPZ's ``probeGuess``) or an NPY
    array; its scale is left as stored.
    """
    where = str(path)
    if not Path(path).is_file():
        raise DataFileError(f"{where}: file not found")
    if Path(path).suffix.lower() == ".npy":
        try:
            probe, name = np.load(path, allow_pickle=False), "the array"
        except (OSError, ValueError, EOFError) as exc:
            raise DataFileError(f"{where}: not a readable NPY file ({exc})") from None
    else:
        probe, name = read_probe(path)
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (N, N) or not len(probe) \
            or probe.dtype.kind not in "cf":
        raise DataFileError(f"{where}: {name} has dtype {probe.dtype} shape {probe.shape}, "
                            f"expected a complex ({N}, {N}) probe or (K, {N}, {N}) modes "
                            f"(data.N = {N})")
    probe = probe.astype(np.complex128)
    if not np.isfinite(probe).all() or not np.abs(probe).any():
        raise DataFileError(f"{where}: {name} holds NaN/infinite values or is all zero")
    return probe


def make_probe(cfg: DataConfig, pixel_m: float) -> np.ndarray:
    """Unit-power probe ``[N, N]`` complex128 centred at pixel ``(N/2, N/2)``, or with
    ``data.probe.modes`` K > 1 its K orthogonal modes ``[K, N, N]`` (power fractions
    :func:`ptycho_torch.physics.mode_powers`, :func:`ptycho_torch.physics.hermite_modes`),
    their summed power 1. A file's modes are kept as they are (rescaled); their number
    must be ``modes``."""
    p, lam = cfg.probe, physics.wavelength_m(cfg.energy_eV)
    if p.kind == "focused_disk":
        probe = physics.focused_disk_probe(cfg.N, p.pupil_radius_px, p.defocus_m, lam, pixel_m)
    elif p.kind == "gaussian":
        probe = physics.gaussian_probe(cfg.N, p.fwhm_px, p.defocus_m, lam, pixel_m)
    else:
        probe = torch.from_numpy(physics.single_mode(load_probe(p.file, cfg.N)))
        if probe.ndim == 3 and len(probe) != p.modes:
            raise ConfigError([f"data.probe.modes: {p.modes}, but {p.file} holds "
                               f"{len(probe)} probe modes"])
    if probe.ndim == 2 and p.modes > 1:
        probe = physics.hermite_modes(probe, physics.mode_powers(p.modes, p.mode_power_ratio))
    return (probe / probe.abs().square().sum().sqrt()).numpy()


# ----------------------------------------------------------------- scans

def given_probe(probe: np.ndarray, cfg: ProbeConfig, energy_eV: float,
                pixel_m: float) -> np.ndarray:
    """The probe a file records for the true ``probe [N, N]`` (complex64): propagated by
    ``given_defocus_m`` further, shifted by ``given_shift_px`` along both axes (Fourier
    shift, periodic) and its amplitude times ``given_amplitude_factor``."""
    out = torch.from_numpy(probe.astype(np.complex128))
    if cfg.given_defocus_m:
        out = physics.fresnel_propagate(out, cfg.given_defocus_m,
                                        physics.wavelength_m(energy_eV), pixel_m)
    field = out.numpy()
    if cfg.given_shift_px:
        f = np.fft.fftfreq(field.shape[0])
        ramp = np.exp(-2j * np.pi * cfg.given_shift_px * (f[:, None] + f[None, :]))
        field = np.fft.ifft2(np.fft.fft2(field) * ramp)
    return (field * cfg.given_amplitude_factor).astype(np.complex64)


def has_probe_error(cfg: ProbeConfig) -> bool:
    return bool(cfg.given_defocus_m or cfg.given_shift_px or cfg.given_amplitude_factor != 1.0)


def scan_step(cfg: ScanConfig, probe: np.ndarray) -> float:
    """Step between neighbours (object px): ``step_px``, or ``(1 - overlap) x`` the probe
    diameter of :func:`ptycho_torch.physics.probe_diameter_px` when ``overlap > 0``."""
    if cfg.overlap <= 0:
        return cfg.step_px
    step = (1 - cfg.overlap) * physics.probe_diameter_px(torch.from_numpy(probe))
    if step < 0.5:
        raise ConfigError([f"data.scan.overlap: {cfg.overlap} gives a step of {step:.3f} px "
                           "(below 0.5 px) for this probe"])
    return step


def _bounds(size: int, N: int, margin: float) -> tuple[float, float]:
    """Range of probe centres whose patch (+1 px for bilinear sampling) fits, less ``margin``."""
    return N / 2 + margin, size - N / 2 - 1 - margin


def raster_positions(size: int, N: int, cfg: ScanConfig, rng: np.random.Generator,
                     step: float | None = None) -> np.ndarray:
    """Probe centres ``[n, 2]`` (row, col px) on a jittered raster inside a ``size`` object.

    Every patch, jitter included, stays inside ``[0, size)`` with a 1 px margin
    for bilinear sampling.
    """
    step = cfg.step_px if step is None else step
    lo, hi = _bounds(size, N, cfg.jitter_px)
    n_side = int(math.floor((hi - lo) / step)) + 1
    axis = lo + step * np.arange(n_side)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    pos = np.stack([rows.ravel(), cols.ravel()], axis=1)
    return pos + rng.uniform(-cfg.jitter_px, cfg.jitter_px, pos.shape)


def fermat_positions(size: int, N: int, cfg: ScanConfig, rng: np.random.Generator,
                     step: float) -> np.ndarray:
    """Fermat (golden-angle) spiral from the object centre, ``[n, 2]`` (row, col px).

    Point ``k`` sits at radius ``c sqrt(k)``, angle ``k * 137.5 deg``; ``c = step /
    sqrt(pi)`` gives one position per ``step^2``, the density of a raster. Points
    whose jittered patch would leave the object are dropped.
    """
    lo, hi = _bounds(size, N, cfg.jitter_px)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    c = step / math.sqrt(math.pi)
    k = np.arange(int(math.ceil(2 * (half / c) ** 2)) + 1)
    r, theta = c * np.sqrt(k), k * math.pi * (3 - math.sqrt(5))
    pos = centre + np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    pos = pos[(np.abs(pos - centre) <= half + 1e-9).all(axis=1)]
    return pos + rng.uniform(-cfg.jitter_px, cfg.jitter_px, pos.shape)


def random_positions(size: int, N: int, rng: np.random.Generator, step: float) -> np.ndarray:
    """Uniform random probe centres ``[n, 2]``, as many as a raster of ``step`` would hold."""
    lo, hi = _bounds(size, N, 0.0)
    n = (int(math.floor((hi - lo) / step)) + 1) ** 2
    return rng.uniform(lo, hi, (n, 2))


def scan_positions(size: int, N: int, cfg: ScanConfig, rng: np.random.Generator,
                   step: float) -> np.ndarray:
    """Probe centres ``[n, 2]`` (row, col px) of the configured scan, on the 1/8-px lattice."""
    if cfg.kind == "raster":
        pos = raster_positions(size, N, cfg, rng, step)
    elif cfg.kind == "fermat":
        pos = fermat_positions(size, N, cfg, rng, step)
    else:
        pos = random_positions(size, N, rng, step)
    lo, hi = _bounds(size, N, 0.0)
    return np.clip(np.round(pos * SUBPIXEL_STEPS) / SUBPIXEL_STEPS, lo, hi)


def recorded_positions(true: np.ndarray, cfg: ScanConfig, rng: np.random.Generator,
                       bounds: tuple[float, float]) -> np.ndarray:
    """The positions ``[n, 2]`` (px) a file records for probe centres ``true [n, 2]``: the
    scan scaled by ``1 + position_scale_error`` and rotated by ``position_rotation_error_deg``
    about its centre, plus Gaussian errors of ``position_error_px`` per axis, kept inside
    ``bounds`` (the object frame)."""
    centre = true.mean(axis=0)
    angle = math.radians(cfg.position_rotation_error_deg)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    out = centre + (1.0 + cfg.position_scale_error) * (true - centre) @ turn.T
    out = out + rng.normal(0.0, cfg.position_error_px, true.shape)
    return np.clip(out, *bounds)


def has_position_errors(cfg: ScanConfig) -> bool:
    return bool(cfg.position_error_px or cfg.position_scale_error
                or cfg.position_rotation_error_deg)


# ----------------------------------------------------------------- detector

def detector_mask(N: int, cfg: DetectorConfig, rng: np.random.Generator) -> np.ndarray:
    """CXI pixel mask ``[N, N]`` uint32: beamstop disk around DC and random dead pixels."""
    mask = np.zeros((N, N), np.uint32)
    k = np.arange(N) - N // 2
    if cfg.beamstop_radius_px > 0:
        stop = k[:, None] ** 2 + k[None, :] ** 2 <= cfg.beamstop_radius_px ** 2
        mask[stop] |= MASK_INVALID | MASK_SHADOWED
    n_dead = int(round(cfg.bad_pixel_fraction * N * N))
    if n_dead:
        dead = rng.choice(N * N, size=n_dead, replace=False)
        mask.flat[dead] |= MASK_INVALID | MASK_DEAD
    return mask


def apply_detector(counts: np.ndarray, mask: np.ndarray, saturation: float) -> np.ndarray:
    """Zero the masked pixels and clip at ``saturation`` (> 0), in place; returns ``counts``."""
    counts[:, mask != 0] = 0
    if saturation > 0:
        np.minimum(counts, np.float32(saturation), out=counts)
    return counts


# ----------------------------------------------------------------- forward model and noise

def fraction_groups(positions: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window corners ``floor(p - N/2)`` ``[n, 2]`` (int64), the distinct fractional parts
    ``[g, 2]`` in [0, 1) (sorted) and, per position, the index ``[n]`` of its fraction."""
    top_left = np.asarray(positions, dtype=np.float64) - N / 2
    corners = np.floor(top_left)
    fractions, which = np.unique(top_left - corners, axis=0, return_inverse=True)
    return corners.astype(np.int64), fractions, which.reshape(-1)


def _ramps(n: int, shifts: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``exp(-2 pi i f s)`` ``[len(shifts), n]`` for ``f = fftfreq(n)``: multiplying a
    spectrum by row ``k`` moves the signal by ``shifts[k]`` px towards larger indices."""
    return torch.from_numpy(np.exp(-2j * np.pi * np.outer(shifts, np.fft.fftfreq(n)))).to(dtype)


def iter_fourier_patches(obj: torch.Tensor, positions: np.ndarray, N: int, *,
                         budget: int = SHIFT_BUDGET, patch_budget: int = PATCH_BUDGET
                         ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(indices [b], patches [b, N, N])`` of :func:`fourier_patches` for a complex
    ``obj [H, W]`` tensor (the patches keep its dtype), about ``patch_budget`` bytes of
    patches at a time, the indices ascending.

    The object is shifted by every pair of the positions' distinct fractional parts,
    ``(fr, fc)`` (row, col; at most 8 x 8 on the simulator's 1/8-px lattice), with
    batched FFTs: per ``fr`` an inverse FFT of the ramped, transposed spectrum along
    the rows, then per pair one along the columns (a grid ``[r, c, H, W]``, made for
    about ``budget`` bytes of ``fr`` rows at a time); transposing in between keeps
    both FFTs on contiguous memory (strided FFTs are much slower). Each
    position's window is then gathered from its pair's copy. Integer positions are
    plain slices of ``obj``. Memory: the spectrum, about ``budget`` and
    ``patch_budget``. The FFTs run on torch's intra-op threads; results do not depend
    on their number.
    """
    top_left = np.asarray(positions, dtype=np.float64) - N / 2
    corners = np.floor(top_left)
    frs, row_of = np.unique(top_left[:, 0] - corners[:, 0], return_inverse=True)
    fcs, col_of = np.unique(top_left[:, 1] - corners[:, 1], return_inverse=True)
    row_of, col_of = row_of.reshape(-1), col_of.reshape(-1)
    H, W = obj.shape
    if len(corners) and (corners.min() < 0 or corners[:, 0].max() + N > H
                         or corners[:, 1].max() + N > W):
        raise ValueError(f"a patch leaves the object frame {H}x{W}: probe centres need "
                         f"N/2 <= p <= size - N/2")
    corners = torch.from_numpy(corners.astype(np.int64))
    shifted = bool(frs.any() or fcs.any())
    spectrum = torch.fft.fft2(obj).T.contiguous() if shifted else None  # [W, H]
    cols = _ramps(W, -fcs, obj.dtype)[None, :, None, :]  # [1, c, 1, W]
    chunk = max(1, budget // (len(fcs) * H * W * obj.element_size()))
    batch = max(1, patch_budget // (N * N * obj.element_size()))
    for r0 in range(0, len(frs), chunk):
        rows = np.arange(r0, min(len(frs), r0 + chunk))
        if spectrum is None:  # every position is an integer one
            grid = obj[None, None]
        else:
            half = torch.fft.ifft(spectrum * _ramps(H, -frs[rows], obj.dtype)[:, None, :], dim=2)
            grid = torch.fft.ifft(half.transpose(1, 2).contiguous()[:, None] * cols,
                                  dim=3)  # [r, c, H, W]
            if r0 == 0 and frs[0] == 0 and fcs[0] == 0:
                grid[0, 0] = obj  # bit-exact slices
        windows = grid.unfold(2, N, 1).unfold(3, N, 1)  # [r, c, H-N+1, W-N+1, N, N], a view
        members = np.flatnonzero((row_of >= r0) & (row_of < r0 + len(rows)))
        for s in range(0, len(members), batch):
            ids = members[s:s + batch]
            at = corners[torch.from_numpy(ids)]
            yield ids, windows[torch.from_numpy(row_of[ids] - r0), torch.from_numpy(col_of[ids]),
                               at[:, 0], at[:, 1]]


def fourier_patches(obj: np.ndarray, positions: np.ndarray, N: int) -> np.ndarray:
    """Object patches ``[n, N, N]`` at probe centres ``positions [n, 2]`` (px), sampled
    exactly by Fourier interpolation: the simulator's extraction.

    Patch pixel ``(u, v)`` is the periodic band-limited interpolation of ``obj [H, W]``
    at ``p - N/2 + (u, v)``: the object is shifted by minus the fractional part of
    ``p - N/2`` with a Fourier phase ramp and the integer window is cut out, so a
    pattern at ``p + 0.5`` is exactly the pattern at ``p`` of the object shifted by
    half a pixel with a phase ramp. Integer positions give plain slices (bit-exact).
    The object is taken as periodic (pad or mirror a non-periodic image first).
    Needs ``N/2 <= p <= size - N/2``, per axis.

    Why not bilinear, as the model's :func:`ptycho_torch.physics.extract_patches`:
    at 0.5 px bilinear averages two neighbours, a ``cos(pi f)`` low-pass (-13 % at
    1/6 cycle/px). Simulating with it would blur half-pixel patterns (about 1 % of
    the intensity for the default objects, a systematic error above the Poisson
    noise of bright pixels) and hand the model its own approximation (an "inverse
    crime"). A local windowed-sinc kernel converges only slowly to the Fourier
    shift (Lanczos-8 still differs by ~3e-4), so we pay one whole-object FFT per
    distinct fraction instead; :func:`scan_positions` puts positions on a
    1/:data:`SUBPIXEL_STEPS`-pixel lattice, so there are at most 64 per object.
    """
    field = torch.from_numpy(np.asarray(obj, dtype=np.result_type(obj, np.complex64)))
    out = torch.empty((len(positions), N, N), dtype=field.dtype)
    for members, patches in iter_fourier_patches(field, positions, N):
        out[members] = patches
    return out.numpy()


def expected_intensity(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray, *,
                       periodic: bool = True) -> np.ndarray:
    """Noise-free ``|fftshift(fft2(P * O_patch, norm="ortho"))|^2`` ``[n, N, N]`` float32
    (summed over the modes of a probe ``[K, N, N]``).

    :func:`ptycho_torch.physics.forward_intensity`'s far field, in complex64, with
    :func:`fourier_patches` of ``obj`` at ``positions [n, 2]`` (px); a non-``periodic``
    object is mirror-extended first. The fftshift and the ``1/N`` of the orthonormal
    FFT are folded into the probe: for even N, ``fftshift(fft2(x)) = fft2(x * (-1)^(u+v))``
    exactly, and scaling by ``1/N`` commutes with the FFT (exactly when N is a power of
    two, to rounding otherwise). Runs on torch's threads.
    """
    N = probe.shape[-1]
    if N % 2:
        raise ValueError(f"the probe side N = {N} must be even")
    field = torch.from_numpy((obj if periodic else mirror_extend(obj)).astype(np.complex64))
    sign = 1 - 2 * (np.add.outer(np.arange(N), np.arange(N)) % 2)
    probe_cb = torch.from_numpy((physics.probe_modes(probe) * sign / N).astype(np.complex64))
    out = torch.empty((len(positions), N, N), dtype=torch.float32)
    for members, patches in iter_fourier_patches(field, positions, N):
        if len(probe_cb) > 1:  # modes [K, N, N]: their intensities add
            far = torch.fft.fft2(patches[:, None] * probe_cb)
            out[members] = torch.mul(far.real, far.real).addcmul_(far.imag, far.imag).sum(1)
            continue
        far = torch.fft.fft2(patches.mul_(probe_cb[0]))  # the gather is a copy
        out[members] = torch.mul(far.real, far.real).addcmul_(far.imag, far.imag)
    return out.numpy()


def poisson_counts(expected: np.ndarray, scale: float, rng: np.random.Generator,
                   workers: int = 1) -> np.ndarray:
    """Poisson draws with means ``scale * expected`` (``[n, N, N]`` float32), in place.

    Blocks of :data:`NOISE_BLOCK` patterns each get their own generator, seeded from
    ``rng``, so blocks can be drawn on ``workers`` threads (numpy releases the GIL)
    and the counts do not depend on the number of threads. Means are float64.
    """
    starts = range(0, len(expected), NOISE_BLOCK)
    seeds = rng.integers(0, 2 ** 63, size=len(starts))

    def draw(k: int) -> None:
        block = expected[starts[k]:starts[k] + NOISE_BLOCK]
        block[...] = np.random.default_rng(seeds[k]).poisson(
            np.multiply(block, scale, dtype=np.float64))
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(draw, range(len(starts))))
    else:
        for k in range(len(starts)):
            draw(k)
    return expected


def simulate_scan(obj: np.ndarray, probe_unit: np.ndarray, positions: np.ndarray,
                  nphotons: float, rng: np.random.Generator, *, periodic: bool = True,
                  workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts ``[n, N, N]`` float32 and the photon-scaled probe ``[N, N]`` (or modes
    ``[K, N, N]``) complex64.

    The intensity scale makes the mean total expected counts per pattern equal
    ``nphotons``, whatever the norm of ``probe_unit``.
    """
    intensity = expected_intensity(obj, probe_unit, positions, periodic=periodic)
    scale = nphotons / intensity.sum(axis=(1, 2), dtype=np.float64).mean()
    counts = poisson_counts(intensity, scale, rng, workers)
    return counts, (probe_unit * math.sqrt(scale)).astype(np.complex64)


# ----------------------------------------------------------------- data sets

def _streams(seed: tuple[int, int]) -> dict[str, np.random.Generator]:
    """Independent random streams, so that e.g. a detector setting leaves the object alone."""
    names = ("object", "scan", "detector", "noise", "position_error")
    children = np.random.SeedSequence(list(seed)).spawn(len(names))
    return {name: np.random.default_rng(c) for name, c in zip(names, children)}


def simulate_dataset(cfg: DataConfig, size: int, seed: tuple[int, int],
                     workers: int = 1) -> PtychoData:
    """One simulated scan of a fresh object of side ``size`` px, seeded by ``seed``.

    ``workers`` threads for the noise blocks, and torch's threads for the FFTs, change
    the speed, never the data.
    """
    rng = _streams(seed)
    pixel = physics.object_pixel_size_m(cfg.energy_eV, cfg.detector_distance_m,
                                        cfg.detector_pixel_size_m, cfg.N)
    probe = make_probe(cfg, pixel)
    obj = make_object(size, cfg.object, rng["object"])
    step = scan_step(cfg.scan, probe)
    positions = scan_positions(size, cfg.N, cfg.scan, rng["scan"], step)
    counts, probe_scaled = simulate_scan(obj, probe, positions, cfg.nphotons, rng["noise"],
                                         periodic=cfg.object.kind != "image", workers=workers)
    mask = detector_mask(cfg.N, cfg.detector, rng["detector"])
    apply_detector(counts, mask, cfg.detector.saturation_counts)
    extras = {}
    if has_position_errors(cfg.scan):  # the reconstruction sees the recorded positions
        extras = {"true_position_row_px": positions[:, 0], "true_position_col_px": positions[:, 1]}
        positions = recorded_positions(positions, cfg.scan, rng["position_error"],
                                       _bounds(size, cfg.N, 0.0))
    true_probe = None
    if has_probe_error(cfg.probe):  # the reconstruction is given another probe
        true_probe, probe_scaled = probe_scaled, given_probe(probe_scaled, cfg.probe,
                                                             cfg.energy_eV, pixel)
    elif probe.ndim == 3:  # partial coherence: the file records the true modes twice
        true_probe = probe_scaled
    return PtychoData(counts=counts, probe=probe_scaled, positions_px=positions, extras=extras,
                      true_probe=true_probe,
                      object_shape=obj.shape, energy_eV=cfg.energy_eV,
                      detector_distance_m=cfg.detector_distance_m,
                      detector_pixel_size_m=cfg.detector_pixel_size_m,
                      object_pixel_size_m=pixel, ground_truth=obj.astype(np.complex64),
                      mask=mask, saturation_counts=cfg.detector.saturation_counts,
                      attrs={"nphotons": cfg.nphotons, "seed": list(seed),
                             "scan_step_px": step,
                             **({"probe_mode_powers": np.square(np.abs(probe)).sum(
                                 (1, 2)).tolist()} if probe.ndim == 3 else {}),
                             "probe_diameter_px": physics.probe_diameter_px(
                                 torch.from_numpy(probe)),
                             "subpixel_model": f"Fourier interpolation, 1/{SUBPIXEL_STEPS} px "
                                               "lattice",
                             "generator": {"object": asdict(cfg.object),
                                           "probe": asdict(cfg.probe),
                                           "scan": asdict(cfg.scan),
                                           "detector": asdict(cfg.detector)}})


def run(cfg: ExperimentConfig, train_out: Path, test_out: Path) -> dict:
    """Simulate (or convert) and write the train and test sets; returns key numbers."""
    d, workers = cfg.data, cfg.execution.threads or os.cpu_count() or 1
    torch.set_num_threads(workers)  # the forward model's FFTs
    if d.source == "file":
        train, test = measured_sets(d)
    else:
        train = simulate_dataset(d, d.object.train_size_px, (cfg.seed, 0), workers)
        test = simulate_dataset(d, d.object.test_size_px, (cfg.seed, 1), workers)
    write_cxi(train_out, train)
    write_cxi(test_out, test)
    numbers = {"source": d.source, "train_patterns": len(train.counts),
               "test_patterns": len(test.counts), "N": train.N,
               "object_pixel_size_nm": train.object_pixel_size_m * 1e9,
               "mean_counts_per_pattern_train": float(train.counts.sum(axis=(1, 2)).mean())}
    if d.source == "file":
        numbers.update({"train_file": d.train_file, "test_file": d.test_file or
                        (f"held out: {d.test_fraction} of train_file" if d.test_fraction
                         else "the training scan itself"),
                        **{f"probe_scale_factor_{role}": part.attrs.get(
                            "probe_scale", {"factor": 1.0})["factor"]
                           for role, part in (("train", train), ("test", test))}})
    else:
        numbers.update({"nphotons": d.nphotons, "scan_kind": d.scan.kind, "scan_step_px": train.attrs["scan_step_px"],
                        "probe_kind": d.probe.kind,
                        "probe_diameter_px": train.attrs["probe_diameter_px"],
                        "masked_pixels": int((train.mask != 0).sum())})
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("simulate", __doc__)
    cli.add_config_args(parser)
    parser.add_argument("--train-out", type=Path, required=True, help="training set (.cxi)")
    parser.add_argument("--test-out", type=Path, required=True, help="test set (.cxi)")
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        if cfg.data.source == "file":  # the measured files are this step's inputs
            rep.inputs += [Path(p) for p in (cfg.data.train_file, cfg.data.test_file) if p]
        numbers = run(cfg, args.train_out, args.test_out)
        rep.record(numbers)
        verb = "converted" if cfg.data.source == "file" else "simulated"
        rep.verdict = (f"{verb} {numbers['train_patterns']} training and "
                       f"{numbers['test_patterns']} test patterns of {numbers['N']}x"
                       f"{numbers['N']}")
    return cli.run_step("simulate", args, [args.train_out, args.test_out], body)


if __name__ == "__main__":
    raise SystemExit(main())
