"""The far-field ptychography forward model and its geometry.

Conventions (normative for the whole package):

* object ``O``: complex ``[H, W]``; probe ``P``: complex ``[N, N]`` (one coherent mode,
  the representation of every single-mode probe) or ``[K, N, N]`` with ``K >= 2``:
  ``K`` mutually incoherent modes (partial coherence), whose intensities add
  (:func:`probe_modes`, :func:`probe_intensity`).
* scan position: the probe centre in object pixels, ``(row, col)`` float. The
  patch seen at position ``p`` is ``O`` sampled at ``p - N/2 + (u, v)`` for
  ``u, v = 0..N-1``, so the patch's pixel ``(N/2, N/2)`` lies at ``p``.
  Non-integer positions are sampled bilinearly; :func:`place_patches` is the
  exact adjoint (transpose) of :func:`extract_patches`, so stitching and
  extraction share one convention.
* exit wave ``psi = P * patch``; far field ``F = fftshift(fft2(psi, norm="ortho"))``
  (DC at the centre); intensity ``I = |F|^2`` in counts when ``P`` carries the
  photon scale (as stored in our CXI files); amplitude ``A = sqrt(I)``. With modes,
  ``I = sum_k |F(P_k * patch)|^2`` and the photons are ``sum_k sum |P_k|^2``.

Sub-pixel positions: the network's differentiable path (:func:`extract_patches`,
:func:`place_patches`) samples the object bilinearly: cheap, local, exactly adjoint,
good enough for a model that is fitted to data anyway. The *simulator* does not use
it: it samples the object exactly by Fourier interpolation
(:func:`ptycho_torch.simulate.fourier_patches`, which explains why).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch
from scipy import sparse

ProbeArray = np.ndarray | torch.Tensor  # a probe [N, N] or its modes [K, N, N]


def _bilinear_indices(positions: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor, torch.Tensor]:
    """Integer corner rows/cols ``[n, N+1]`` and fractional parts ``[n, 1, 1]`` of each patch."""
    top_left = positions.to(torch.float64) - N / 2
    corner = torch.floor(top_left)
    frac = (top_left - corner)
    ar = torch.arange(N + 1, device=positions.device)
    rows = corner[:, 0, None].long() + ar
    cols = corner[:, 1, None].long() + ar
    return rows, cols, frac[:, 0, None, None], frac[:, 1, None, None]


def extract_patches(obj: torch.Tensor, positions: torch.Tensor, N: int) -> torch.Tensor:
    """Object patches ``[n, N, N]`` seen by a probe centred at ``positions [n, 2]`` (px).

    ``obj`` is ``[H, W]``; each position needs ``p - N/2 >= 0`` and
    ``p + N/2 + 1 <= H`` (resp. ``W``). Differentiable with respect to ``obj``.
    """
    rows, cols, fr, fc = _bilinear_indices(positions, N)
    fr, fc = fr.to(obj.real.dtype), fc.to(obj.real.dtype)
    big = obj[rows[:, :, None], cols[:, None, :]]  # [n, N+1, N+1]
    rows_interp = big[:, :N, :] * (1 - fr) + big[:, 1:, :] * fr  # [n, N, N+1]
    return rows_interp[:, :, :N] * (1 - fc) + rows_interp[:, :, 1:] * fc


def _spread(patches: torch.Tensor, fr: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
    """Each patch ``[n, N, N]`` spread over its ``[N+1, N+1]`` window by the bilinear weights
    of its fractional offsets ``fr, fc [n, 1, 1]`` (the adjoint of the interpolation)."""
    n, N, _ = patches.shape
    fr, fc = fr.to(patches.real.dtype), fc.to(patches.real.dtype)
    cols_t = patches.new_zeros((n, N, N + 1))
    cols_t[:, :, :N] += patches * (1 - fc)
    cols_t[:, :, 1:] += patches * fc
    big = patches.new_zeros((n, N + 1, N + 1))
    big[:, :N, :] += cols_t * (1 - fr)
    big[:, 1:, :] += cols_t * fr
    return big


def place_patches(patches: torch.Tensor, positions: torch.Tensor,
                  shape: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`extract_patches`: sum patches ``[n, N, N]`` into a canvas ``shape``."""
    n, N, _ = patches.shape
    rows, cols, fr, fc = _bilinear_indices(positions, N)
    big = _spread(patches, fr, fc)
    canvas = patches.new_zeros(shape)
    index = (rows[:, :, None].expand(-1, -1, N + 1), cols[:, None, :].expand(-1, N + 1, -1))
    return canvas.index_put_(index, big, accumulate=True)


@dataclasses.dataclass(frozen=True)
class PatchOperator:
    """:func:`extract_patches` at fixed positions as a sparse matrix, and its transpose
    (:func:`place_patches`): the same bilinear weights, for work that applies them many times
    (the calibration of :mod:`ptycho_torch.stitch`). No autograd; float32 weights.

    ``matrix``: CSR ``[n N N, H W]``, four entries per patch pixel; ``transpose``: CSR
    ``[H W, n N N]``. Build with :meth:`at`.
    """
    matrix: torch.Tensor
    transpose: torch.Tensor
    n: int
    N: int
    shape: tuple[int, int]

    @classmethod
    def at(cls, positions: np.ndarray, N: int, shape: tuple[int, int]) -> PatchOperator:
        """The operator for probe centres ``positions [n, 2]`` (px) on an object ``shape``;
        every patch must lie inside the object (as for :func:`extract_patches`)."""
        rows, cols, fr, fc = _bilinear_indices(torch.from_numpy(np.asarray(positions)), N)
        _check_inside(rows, cols, N, shape)
        n, W = len(positions), shape[1]
        top, left = rows[:, :N].numpy().astype(np.int32), cols[:, :N].numpy().astype(np.int32)
        a, b = fr.numpy()[:, 0, 0], fc.numpy()[:, 0, 0]  # float64 [n]
        # the four corners of each patch pixel, in ascending flat index: written in place,
        # in the matrix's own dtypes (n N^2 x 4 entries: the largest arrays of a scan)
        flat = np.empty((n, N, N, 4), np.int32)
        weights = np.empty((n, N, N, 4), np.float32)
        base = top[:, :, None] * W + left[:, None, :]  # [n, N, N]
        for k, (step, w) in enumerate([(0, (1 - a) * (1 - b)), (1, (1 - a) * b),
                                       (W, a * (1 - b)), (W + 1, a * b)]):
            np.add(base, step, out=flat[..., k])
            weights[..., k] = w.astype(np.float32)[:, None, None]
        K = n * N * N
        m = sparse.csr_matrix((weights.reshape(-1), flat.reshape(-1),
                               np.arange(0, 4 * K + 1, 4, dtype=np.int32)),
                              shape=(K, shape[0] * shape[1]))
        return cls(torch_csr(m), torch_csr(m.T.tocsr()), len(top), N, tuple(shape))

    def extract(self, obj: torch.Tensor) -> torch.Tensor:
        """Patches ``[n, N, N]`` of the object ``[H, W]`` (real or complex)."""
        return _sparse_apply(self.matrix, obj).reshape(self.n, self.N, self.N)

    def place(self, patches: torch.Tensor) -> torch.Tensor:
        """The adjoint: patches ``[n, N, N]`` summed into an ``[H, W]`` canvas."""
        return _sparse_apply(self.transpose, patches).reshape(self.shape)


def placement_rows(patches: torch.Tensor, positions: np.ndarray,
                   shape: tuple[int, int]) -> sparse.csr_matrix:
    """CSR ``[n, H W]`` (complex64 for complex ``patches [n, N, N]``, else float32) whose row
    ``i`` is patch ``i`` placed alone on the canvas ``shape`` at ``positions [n, 2]`` (px):
    :func:`place_patches` of it, ``(N+1)^2`` entries. So ``place_patches(c[:, None, None] *
    patches) = rows.T @ c`` for per-patch factors ``c [n]``, at a quarter of the entries of
    :class:`PatchOperator`."""
    n, N, _ = patches.shape
    rows, cols, fr, fc = _bilinear_indices(torch.from_numpy(np.asarray(positions)), N)
    _check_inside(rows, cols, N, shape)
    big = _spread(patches.to(torch.complex64 if patches.is_complex() else torch.float32), fr, fc)
    flat = (rows[:, :, None] * shape[1] + cols[:, None, :]).reshape(-1)
    return sparse.csr_matrix((big.reshape(-1).numpy(), flat.numpy().astype(np.int32),
                              np.arange(0, n * (N + 1) ** 2 + 1, (N + 1) ** 2, dtype=np.int32)),
                             shape=(n, shape[0] * shape[1]))


def inside_positions(positions: np.ndarray, N: int, shape: tuple[int, int]) -> np.ndarray:
    """Probe centres ``positions [n, 2]`` (px) clipped, per axis, to where a patch of ``N``
    px lies inside an object ``shape``: ``N/2 <= p <= H - N/2 - 1`` (as for
    :func:`extract_patches`)."""
    low = np.full(2, N / 2)
    high = np.asarray(shape, np.float64) - N / 2 - 1
    return np.clip(positions, low, high)


def _check_inside(rows: torch.Tensor, cols: torch.Tensor, N: int, shape: tuple[int, int]) -> None:
    """Patch windows (corner rows/cols ``[n, N+1]``) must lie inside the object ``shape``."""
    if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0]
                      or cols.max() >= shape[1]):
        raise ValueError(f"patches of {N} px at these positions leave the {shape} object")


def torch_csr(m: sparse.csr_matrix) -> torch.Tensor:
    """A torch CSR tensor, float32 or complex64 (int32 indices: MKL's, no conversion at
    each product)."""
    m.sort_indices()
    dtype = np.complex64 if np.iscomplexobj(m.data) else np.float32
    with warnings.catch_warnings():  # "sparse CSR support is in beta": products are tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int32, copy=False)),
            torch.from_numpy(m.indices.astype(np.int32, copy=False)),
            torch.from_numpy(m.data.astype(dtype, copy=False)), size=m.shape,
            check_invariants=False)


def _sparse_apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``m @ x.ravel()`` for a real CSR ``m`` and a real or complex ``x`` (float32 result)."""
    if x.is_complex():
        columns = torch.view_as_real(x.to(torch.complex64).reshape(-1))
        return torch.view_as_complex((m @ columns).contiguous())
    return (m @ x.to(torch.float32).reshape(-1, 1))[:, 0]


def far_field(exit_wave: torch.Tensor) -> torch.Tensor:
    """DC-centred unitary far field of ``exit_wave [..., N, N]`` (Parseval holds)."""
    return torch.fft.fftshift(torch.fft.fft2(exit_wave, norm="ortho"), dim=(-2, -1))


def probe_modes(probe: ProbeArray) -> ProbeArray:
    """The modes ``[K, N, N]`` of a probe (numpy or torch): a one-mode ``[N, N]`` probe as
    ``[1, N, N]`` (a view), a ``[K, N, N]`` one as it is; any other rank raises ValueError."""
    if probe.ndim == 2:
        return probe[None]
    if probe.ndim == 3 and probe.shape[0] >= 1:
        return probe
    raise ValueError(f"a probe is [N, N] or [K, N, N] (K modes), got shape {tuple(probe.shape)}")


def probe_intensity(probe: ProbeArray) -> ProbeArray:
    """Summed intensity of the modes ``sum_k |P_k|^2`` ``[N, N]`` (photons per pixel when
    the probe carries the photon scale), real, numpy or torch like ``probe``."""
    if probe.ndim == 2:
        return abs(probe) ** 2
    return (abs(probe_modes(probe)) ** 2).sum(0)


def far_field_centroid(probe: np.ndarray) -> np.ndarray:
    """Centroid ``[2]`` (row, col; frequency bins from the zero frequency, fractional) of a
    probe's summed far-field intensity ``sum_k |FFT(P_k)|^2`` (``probe [N, N]`` or
    ``[K, N, N]``, numpy)."""
    power = (np.abs(np.fft.fftshift(np.fft.fft2(probe_modes(probe)), axes=(-2, -1))) ** 2
             ).sum(0)
    k = np.arange(power.shape[-1]) - power.shape[-1] // 2
    total = power.sum()
    return np.array([(power.sum(1) * k).sum() / total, (power.sum(0) * k).sum() / total])


def shift_far_field(probe: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """``probe`` (``[N, N]`` or ``[K, N, N]``) times the linear phase ramp
    ``exp(2 pi i (bins . r) / N)`` that moves its far field by ``bins [2]`` (row, col
    frequency bins, fractional). The same ramp the other way on the object leaves every
    exit wave unchanged up to a constant phase: the counts cannot see it."""
    N = probe.shape[-1]
    r = np.arange(N) - N // 2
    ramp = np.exp(2j * np.pi * (bins[0] * r[:, None] + bins[1] * r[None, :]) / N)
    return (probe * ramp).astype(probe.dtype)


def single_mode(probe: ProbeArray) -> ProbeArray:
    """The ``[N, N]`` form of a probe of one mode (``[1, N, N]`` too), else ``probe``
    unchanged: what files and products store for one mode."""
    return probe[0] if probe.ndim == 3 and probe.shape[0] == 1 else probe


def forward_intensity(probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Expected counts ``sum_k |F(P_k * patch)|^2``, shape ``[..., N, N]``, of ``patches
    [..., N, N]`` and a probe ``[N, N]`` (one mode: ``|F(P * patch)|^2``) or ``[K, N, N]``."""
    if probe.ndim == 2:
        return far_field(probe * patches).abs().square()
    exit_waves = probe_modes(probe) * patches.unsqueeze(-3)  # [..., K, N, N]
    return far_field(exit_waves).abs().square().sum(-3)


def wavelength_m(energy_eV: float) -> float:
    """Photon wavelength in metres for an energy in electron-volts (h c / E)."""
    return 1.239841984e-6 / energy_eV


def object_pixel_size_m(energy_eV: float, distance_m: float, detector_pixel_m: float,
                        N: int) -> float:
    """Real-space pixel of the far-field geometry: ``lambda z / (N dx_det)`` (m)."""
    return wavelength_m(energy_eV) * distance_m / (N * detector_pixel_m)


def fresnel_propagate(field: torch.Tensor, distance_m: float, wavelength: float,
                      pixel_m: float) -> torch.Tensor:
    """Propagate ``field [..., N, N]`` by ``distance_m`` with the Fresnel transfer function.

    ``H(f) = exp(-i pi lambda z |f|^2)``; unitary, so propagating by ``-z`` undoes it.
    """
    N = field.shape[-1]
    f = torch.fft.fftfreq(N, d=pixel_m, dtype=torch.float64)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    transfer = torch.exp(-1j * math.pi * wavelength * distance_m * f2).to(field.dtype)
    return torch.fft.ifft2(torch.fft.fft2(field) * transfer)


def hologram_ctf_zeros(defocus_m: float, wavelength: float, pixel_m: float) -> tuple[float, float]:
    """First zeros (cycles/px) of the amplitude and the phase contrast transfer of an in-line
    hologram at Fresnel distance ``defocus_m``: what a focused probe's bright field records of
    the object ``defocus_m`` away from the focus (a point-projection image).

    A weak object ``(1 + a) exp(i phi)`` propagated by ``dz`` gives the intensity
    ``1 + 2 (a cos chi + phi sin chi)`` per spatial frequency ``f`` (1/m), ``chi = pi lambda
    dz f^2`` (:func:`fresnel_propagate`'s sign): the amplitude contrast vanishes at ``chi =
    pi/2``, ``f = 1/sqrt(2 lambda dz)``, the phase contrast at ``chi = pi``, ``f = 1/sqrt(lambda
    dz)``. ``defocus_m`` must not be 0.
    """
    f_amplitude = 1.0 / math.sqrt(2 * wavelength * abs(defocus_m))
    return f_amplitude * pixel_m, math.sqrt(2.0) * f_amplitude * pixel_m


def focused_disk_probe(N: int, pupil_radius_px: float, defocus_m: float, wavelength: float,
                       pixel_m: float) -> torch.Tensor:
    """Probe ``[N, N]`` complex128: focus of a lens with a disk pupil, Fresnel-propagated.

    The pupil is a disk of ``pupil_radius_px`` detector pixels (the bright-field
    disk on the detector); the in-focus field is its inverse FFT. Unit norm.
    """
    k = torch.arange(N, dtype=torch.float64) - N // 2
    pupil = ((k[:, None] ** 2 + k[None, :] ** 2) <= pupil_radius_px ** 2).to(torch.complex128)
    focus = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(pupil), norm="ortho"))
    probe = fresnel_propagate(focus, defocus_m, wavelength, pixel_m)
    return probe / probe.abs().square().sum().sqrt()


# ----------------------------------------------------------------- more probes

def gaussian_probe(N: int, fwhm_px: float, defocus_m: float, wavelength: float,
                   pixel_m: float) -> torch.Tensor:
    """Probe ``[N, N]`` complex128: a Gaussian beam with intensity FWHM ``fwhm_px`` at its
    waist (object px), centred at pixel ``(N/2, N/2)``, Fresnel-propagated by ``defocus_m``.

    Waist field ``exp(-2 ln2 r^2 / fwhm^2)`` (flat phase); unit norm.
    """
    k = torch.arange(N, dtype=torch.float64) - N // 2
    r2 = k[:, None] ** 2 + k[None, :] ** 2
    waist = torch.exp(-2 * math.log(2) * r2 / fwhm_px ** 2).to(torch.complex128)
    probe = fresnel_propagate(waist, defocus_m, wavelength, pixel_m)
    return probe / probe.abs().square().sum().sqrt()


def mode_powers(K: int, ratio: float) -> np.ndarray:
    """Power fractions ``[K]`` float64 of ``K`` probe modes, mode ``k`` holding
    ``ratio^k / sum_j ratio^j`` (summing to 1; ``[1.0]`` for one mode)."""
    weights = float(ratio) ** np.arange(K, dtype=np.float64)
    return weights / weights.sum()


def _hermite_orders(K: int) -> list[tuple[int, int]]:
    """The first ``K`` polynomial orders ``(row, col)`` by total degree: (0, 0), (1, 0),
    (0, 1), (2, 0), (1, 1), (0, 2), ..."""
    return [(d - j, j) for d in range(K) for j in range(d + 1)][:K]


def hermite_modes(probe: torch.Tensor, powers: np.ndarray) -> torch.Tensor:
    """Orthogonal probe modes ``[K, N, N]`` complex128 grown from one mode ``probe [N, N]``:
    mode ``k`` is the probe times ``u^a v^b`` (coordinates about its intensity centroid in
    units of its RMS radius, orders by degree: :func:`_hermite_orders`), Gram-Schmidt
    orthogonalised against the modes before it (like Hermite-Gauss modes of a Gaussian
    beam), with ``sum |P_k|^2 = powers[k] * sum |probe|^2``. ``powers [K]`` are fractions
    summing to 1, so the modes hold the probe's total power."""
    p = probe.to(torch.complex128)
    inten = p.abs().square()
    total = inten.sum()
    ar = torch.arange(p.shape[-1], dtype=torch.float64)
    cr, cc = (inten.sum(1) * ar).sum() / total, (inten.sum(0) * ar).sum() / total
    u, v = ar[:, None] - cr, ar[None, :] - cc
    radius = ((u ** 2 + v ** 2) * inten).sum().div(total).sqrt().clamp_min(1e-12)
    modes: list[torch.Tensor] = []
    for a, b in _hermite_orders(len(powers)):
        m = p * (u / radius) ** a * (v / radius) ** b
        for _ in range(2):  # Gram-Schmidt, twice for round-off
            for q in modes:
                m = m - q * torch.vdot(q.flatten(), m.flatten())
        modes.append(m / torch.linalg.vector_norm(m))
    scale = torch.from_numpy(np.sqrt(np.asarray(powers, np.float64)) * float(total.sqrt()))
    return torch.stack(modes) * scale[:, None, None]


def probe_diameter_px(probe: torch.Tensor, fraction: float = 1 - math.exp(-2)) -> float:
    """Diameter (px) of the disk about the intensity centroid holding ``fraction`` of
    the probe's intensity (``[N, N]``, or modes ``[K, N, N]``: their summed intensity).

    The default ``1 - e^-2 = 86.5 %`` gives a Gaussian beam's 1/e^2 diameter
    (``fwhm * sqrt(2 / ln 2)``); it is what ``data.scan.overlap`` is measured against.
    """
    inten = probe_intensity(probe).to(torch.float64)
    N = inten.shape[-1]
    ar = torch.arange(N, dtype=torch.float64)
    total = inten.sum()
    cr = (inten.sum(1) * ar).sum() / total
    cc = (inten.sum(0) * ar).sum() / total
    r = ((ar[:, None] - cr) ** 2 + (ar[None, :] - cc) ** 2).sqrt().flatten()
    order = torch.argsort(r)
    cum = torch.cumsum(inten.flatten()[order], 0) / total
    k = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=torch.float64)))
    return 2.0 * float(r[order][min(k, r.numel() - 1)])
