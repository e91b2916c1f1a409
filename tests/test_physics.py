"""Physics of the forward model and the simulator, checked against invariants and numpy.

Every expected value here comes from an independent computation (numpy FFTs,
slicing, Parseval, Poisson statistics), never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.simulate import simulate_scan


def _crandn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _np_patch(obj: np.ndarray, pos: tuple[int, int], N: int) -> np.ndarray:
    """Integer-position patch by plain slicing: top-left = position - N/2."""
    r0, c0 = int(pos[0]) - N // 2, int(pos[1]) - N // 2
    return obj[r0:r0 + N, c0:c0 + N]


def _np_intensity(probe: np.ndarray, patch: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fft2(probe * patch, norm="ortho"))) ** 2


def _extract(obj: np.ndarray, positions, N: int) -> np.ndarray:
    return physics.extract_patches(torch.from_numpy(obj),
                                   torch.tensor(positions, dtype=torch.float64), N).numpy()


# ----------------------------------------------------------------- far field

@pytest.mark.parametrize("N", [8, 32, 64])
def test_far_field_parseval(N):
    rng = np.random.default_rng(N)
    psi = _crandn(rng, 3, N, N)
    F = physics.far_field(torch.from_numpy(psi)).numpy()
    assert F.shape == (3, N, N)
    np.testing.assert_allclose((np.abs(F) ** 2).sum(axis=(1, 2)),
                               (np.abs(psi) ** 2).sum(axis=(1, 2)), rtol=1e-12)


@pytest.mark.parametrize("N", [16, 32])
def test_far_field_dc_at_centre(N):
    c = 0.7 * np.exp(0.4j)
    F = physics.far_field(torch.full((N, N), c, dtype=torch.complex128)).numpy()
    energy = np.abs(F) ** 2
    # all energy |c|^2 N^2 sits at (N/2, N/2); F there is c * N (unitary FFT)
    assert np.unravel_index(energy.argmax(), energy.shape) == (N // 2, N // 2)
    np.testing.assert_allclose(F[N // 2, N // 2], c * N, rtol=1e-12)
    energy[N // 2, N // 2] = 0
    assert energy.max() < 1e-20


def test_forward_intensity_matches_numpy_at_integer_positions():
    rng = np.random.default_rng(0)
    N = 16
    obj = _crandn(rng, 60, 70)
    probe = _crandn(rng, N, N)
    positions = [(8, 8), (20, 33), (51, 61), (30, 12)]  # within [N/2, size - N/2 - 1]
    patches = _extract(obj, positions, N)
    got = physics.forward_intensity(torch.from_numpy(probe), torch.from_numpy(patches)).numpy()
    for k, p in enumerate(positions):
        np.testing.assert_array_equal(patches[k], _np_patch(obj, p, N))
        np.testing.assert_allclose(got[k], _np_intensity(probe, _np_patch(obj, p, N)),
                                   rtol=1e-10, atol=1e-12)


def test_forward_intensity_broadcasts_over_leading_dims():
    rng = np.random.default_rng(1)
    probe, patches = _crandn(rng, 8, 8), _crandn(rng, 2, 3, 8, 8)
    got = physics.forward_intensity(torch.from_numpy(probe), torch.from_numpy(patches)).numpy()
    assert got.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(got[1, 2], _np_intensity(probe, patches[1, 2]), rtol=1e-10)


# ----------------------------------------------------------------- geometry

@pytest.mark.parametrize("shift", [(3, -5), (-7, 2), (0, 11)])
def test_object_shift_shifts_patches(shift):
    rng = np.random.default_rng(2)
    N = 16
    obj = _crandn(rng, 64, 64)
    rolled = np.roll(obj, shift, axis=(0, 1))
    positions = np.array([[20.0, 25.0], [30.25, 22.5], [26.7, 31.1]])
    a = _extract(obj, positions, N)
    b = _extract(rolled, positions + np.array(shift), N)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)


def test_half_pixel_extraction_is_bilinear_average():
    rng = np.random.default_rng(3)
    N = 8
    obj = _crandn(rng, 40, 40)
    r, c = 17, 21
    p = lambda rr, cc: _np_patch(obj, (rr, cc), N)  # noqa: E731
    got = _extract(obj, [(r + 0.5, c), (r, c + 0.5), (r + 0.5, c + 0.5), (r + 0.25, c)], N)
    np.testing.assert_allclose(got[0], (p(r, c) + p(r + 1, c)) / 2, atol=1e-12)
    np.testing.assert_allclose(got[1], (p(r, c) + p(r, c + 1)) / 2, atol=1e-12)
    np.testing.assert_allclose(got[2], (p(r, c) + p(r + 1, c) + p(r, c + 1)
                                        + p(r + 1, c + 1)) / 4, atol=1e-12)
    np.testing.assert_allclose(got[3], 0.75 * p(r, c) + 0.25 * p(r + 1, c), atol=1e-12)


def test_place_patches_is_exact_adjoint_of_extract_patches():
    rng = np.random.default_rng(4)
    N, shape = 16, (50, 57)
    positions = torch.from_numpy(np.stack([rng.uniform(N / 2, shape[0] - N / 2 - 1, 9),
                                           rng.uniform(N / 2, shape[1] - N / 2 - 1, 9)], 1))
    x = torch.from_numpy(_crandn(rng, *shape))
    y = torch.from_numpy(_crandn(rng, 9, N, N))
    Ax = physics.extract_patches(x, positions, N)
    ATy = physics.place_patches(y, positions, shape)
    assert ATy.shape == shape
    lhs = torch.vdot(Ax.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), ATy.flatten())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_place_patches_integer_position_puts_patch_at_slice():
    rng = np.random.default_rng(5)
    N = 8
    patch = _crandn(rng, 1, N, N)
    canvas = physics.place_patches(torch.from_numpy(patch), torch.tensor([[10.0, 13.0]]),
                                   (30, 30)).numpy()
    expected = np.zeros((30, 30), complex)
    expected[6:14, 9:17] = patch[0]
    np.testing.assert_allclose(canvas, expected, atol=1e-14)


# ----------------------------------------------------------------- probe, propagation

def test_fresnel_forward_then_back_returns_field():
    rng = np.random.default_rng(6)
    field = torch.from_numpy(_crandn(rng, 32, 32))
    lam, dx = physics.wavelength_m(8000.0), 50e-9
    there = physics.fresnel_propagate(field, 3e-3, lam, dx)
    assert not torch.allclose(there, field, atol=1e-3)  # it did propagate
    np.testing.assert_allclose(there.abs().square().sum(), field.abs().square().sum(), rtol=1e-12)
    back = physics.fresnel_propagate(there, -3e-3, lam, dx)
    np.testing.assert_allclose(back.numpy(), field.numpy(), atol=1e-12)


def test_fresnel_gaussian_beam_width_at_rayleigh_range():
    """A Gaussian waist w0 spreads to w0 * sqrt(2) after the Rayleigh range pi w0^2 / lambda
    (paraxial optics): the intensity's second moment doubles."""
    N, dx, lam, w0 = 128, 1e-7, 1e-10, 6e-7  # 6 px waist
    x = (np.arange(N) - N // 2) * dx
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    field = torch.from_numpy(np.exp(-r2 / w0 ** 2).astype(np.complex128))
    z_rayleigh = math.pi * w0 ** 2 / lam

    def second_moment(f: torch.Tensor) -> float:
        inten = f.abs().square().numpy()
        return float((inten * r2).sum() / inten.sum())
    m0 = second_moment(field)
    assert m0 == pytest.approx(w0 ** 2 / 2, rel=1e-6)  # <r^2> = w^2 / 2 for exp(-2 r^2 / w^2)
    for z, factor in ((z_rayleigh, 2.0), (2 * z_rayleigh, 5.0), (-z_rayleigh, 2.0)):
        out = physics.fresnel_propagate(field, z, lam, dx)
        assert second_moment(out) / m0 == pytest.approx(factor, rel=1e-6), z


@pytest.mark.parametrize("part", ["amplitude", "phase"])
def test_hologram_ctf_zero_is_where_a_weak_object_loses_its_contrast(part):
    """Propagate a weak random object (amplitude or phase, varying along x) by dz and
    measure the contrast transfer ``FFT(I - 1) / (2 FFT(object))`` per frequency: its first
    sign change lies in the frequency bin that hologram_ctf_zeros names."""
    n, dx, dz, lam = 256, 1e-7, 5e-3, physics.wavelength_m(8000.0)
    weak = 1e-5 * np.random.default_rng(3).standard_normal(n)
    obj = (1 + weak) if part == "amplitude" else np.exp(1j * weak)
    field = torch.from_numpy(np.tile(obj.astype(np.complex128), (n, 1)))
    intensity = physics.fresnel_propagate(field, dz, lam, dx).abs().square()[0].numpy()
    transfer = (np.fft.fft(intensity - 1) / (2 * np.fft.fft(weak))).real[1:n // 2]
    first_sign_change = int(np.argmax(np.sign(transfer) != np.sign(transfer[0])))  # bins 1..
    zero = physics.hologram_ctf_zeros(dz, lam, dx)[part == "phase"]
    assert first_sign_change / n < zero <= (first_sign_change + 1) / n
    assert abs(transfer[0]) > 0.99 if part == "amplitude" else transfer[0] > 0  # cos / sin chi


def test_wavelength_of_8kev():
    assert physics.wavelength_m(8000.0) == pytest.approx(1.5498e-10, rel=1e-4)


@pytest.mark.parametrize("defocus", [0.0, 5e-3])
def test_focused_disk_probe_unit_norm_and_disk_far_field(defocus):
    N, radius = 32, 6.0
    lam = physics.wavelength_m(8000.0)
    pixel = physics.object_pixel_size_m(8000.0, 2.0, 75e-6, N)
    probe = physics.focused_disk_probe(N, radius, defocus, lam, pixel).numpy()
    assert probe.shape == (N, N)
    assert (np.abs(probe) ** 2).sum() == pytest.approx(1.0, abs=1e-12)
    # whatever the defocus, the far-field intensity is the uniform pupil disk
    k = np.arange(N) - N // 2
    disk = (k[:, None] ** 2 + k[None, :] ** 2) <= radius ** 2
    far = np.abs(np.fft.fftshift(np.fft.fft2(probe, norm="ortho"))) ** 2
    np.testing.assert_allclose(far[disk], 1.0 / disk.sum(), rtol=1e-9)
    assert far[~disk].max() < 1e-20


@pytest.mark.parametrize("fwhm", [4.0, 7.5])
def test_gaussian_probe_waist_width_and_norm(fwhm):
    """At its waist the probe intensity is exp(-4 ln2 r^2 / fwhm^2): second moment
    <r^2> = fwhm^2 / (4 ln 2), half maximum at r = fwhm / 2, flat phase."""
    N = 64
    probe = physics.gaussian_probe(N, fwhm, 0.0, physics.wavelength_m(8000.0), 50e-9).numpy()
    inten = np.abs(probe) ** 2
    assert inten.sum() == pytest.approx(1.0, abs=1e-12)
    k = np.arange(N) - N // 2
    r2 = k[:, None] ** 2 + k[None, :] ** 2
    assert (inten * r2).sum() == pytest.approx(fwhm ** 2 / (4 * math.log(2)), rel=1e-6)
    assert np.unravel_index(inten.argmax(), inten.shape) == (N // 2, N // 2)
    profile = inten[N // 2] / inten.max()
    half = np.interp(0.5, profile[N // 2:][::-1], np.arange(N // 2)[::-1])  # radius at 1/2
    assert half == pytest.approx(fwhm / 2, abs=0.05)
    np.testing.assert_allclose(np.angle(probe[inten > 1e-3 * inten.max()]), 0.0, atol=1e-12)


def test_gaussian_probe_defocus_is_fresnel_propagation():
    """Defocusing the beam by z equals propagating the waist by z, and going back by -z
    returns the waist (the Fresnel propagator is unitary and invertible)."""
    N, lam, dx = 32, physics.wavelength_m(8000.0), 1.3e-7
    waist = physics.gaussian_probe(N, 5.0, 0.0, lam, dx)
    far = physics.gaussian_probe(N, 5.0, 2e-2, lam, dx)  # ~3 Rayleigh ranges
    np.testing.assert_allclose(far.numpy(), physics.fresnel_propagate(waist, 2e-2, lam, dx).numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(physics.fresnel_propagate(far, -2e-2, lam, dx).numpy(),
                               waist.numpy(), atol=1e-12)
    assert np.abs(far.numpy()).max() < 0.9 * np.abs(waist.numpy()).max()  # it spread


def test_probe_diameter_of_a_gaussian_is_its_one_over_e2_diameter():
    """86.5 % (1 - e^-2) of a Gaussian beam's power lies within its 1/e^2 radius
    w = fwhm / sqrt(2 ln 2); a disk of uniform intensity of radius R gives
    2 R sqrt(0.865) by area."""
    probe = physics.gaussian_probe(128, 12.0, 0.0, 1e-10, 1e-7)
    assert physics.probe_diameter_px(probe) == pytest.approx(2 * 12.0 / math.sqrt(2 * math.log(2)),
                                                             abs=1.0)
    k = torch.arange(128, dtype=torch.float64) - 64
    disk = ((k[:, None] ** 2 + k[None, :] ** 2) <= 30.0 ** 2).to(torch.complex128)
    assert physics.probe_diameter_px(disk) == pytest.approx(2 * 30 * math.sqrt(1 - math.exp(-2)),
                                                            abs=1.0)


def test_object_pixel_size_formula():
    # lambda z / (N dx): 1.5498e-10 m * 2 m / (32 * 75e-6 m) = 129.2 nm
    assert physics.object_pixel_size_m(8000.0, 2.0, 75e-6, 32) == pytest.approx(
        1.239841984e-6 / 8000.0 * 2.0 / (32 * 75e-6), rel=1e-12)


# ----------------------------------------------------------------- Poisson simulation

def _unit_probe(N: int) -> np.ndarray:
    lam = physics.wavelength_m(8000.0)
    return physics.focused_disk_probe(N, 4.0, 2e-3, lam,
                                      physics.object_pixel_size_m(8000.0, 2.0, 75e-6, N)).numpy()


@pytest.mark.slow
def test_poisson_counts_of_constant_object():
    """Every pattern of a constant object has the same expected intensity: check
    the mean total counts, and per pixel mean == variance (Poisson)."""
    N, n, nphotons = 16, 3000, 2.0e4
    rng = np.random.default_rng(7)
    obj = np.full((40, 40), 0.8 * np.exp(0.3j))
    positions = np.stack([rng.uniform(8, 31, n), rng.uniform(8, 31, n)], 1)
    counts, probe_scaled = simulate_scan(obj, _unit_probe(N), positions, nphotons, rng)
    assert counts.shape == (n, N, N) and counts.dtype == np.float32
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    totals = counts.sum(axis=(1, 2), dtype=np.float64)
    # the sum of all counts is Poisson with mean n * nphotons
    assert abs(totals.mean() - nphotons) < 4 * math.sqrt(nphotons / n)
    # per pattern, the total is Poisson(nphotons) too: variance == mean
    assert totals.var(ddof=1) / nphotons == pytest.approx(1.0, abs=4 * math.sqrt(2 / n))
    mean = counts.mean(axis=0, dtype=np.float64)
    var = counts.var(axis=0, ddof=1, dtype=np.float64)
    bright = mean > 50
    assert bright.sum() >= 20
    ratio = var[bright] / mean[bright]
    # Var(s^2)/lambda^2 ~ (1/lambda + 2)/n for Poisson: per-pixel 5 sigma, pooled 4 sigma
    sigma = math.sqrt(2.0 / n)
    assert np.abs(ratio - 1).max() < 5 * sigma * 1.1
    assert abs(ratio.mean() - 1) < 4 * sigma
    # the expected intensity is |F(P_scaled * c)|^2, identical for every pattern
    expected = _np_intensity(probe_scaled.astype(np.complex128), obj[0, 0])
    assert expected.sum() == pytest.approx(nphotons, rel=1e-5)
    np.testing.assert_array_less(np.abs(mean - expected)[bright],
                                 5 * np.sqrt(expected[bright] / n) + 1e-3 * expected[bright])


def test_stored_probe_reproduces_expected_counts():
    """Random object, integer positions: mean counts per pixel over the scan equal
    the numpy forward model with the stored (photon-scaled) probe."""
    N, nphotons = 16, 5.0e4
    rng = np.random.default_rng(8)
    obj = (0.5 + 0.5 * rng.uniform(size=(64, 64))) * np.exp(1j * rng.uniform(-1, 1, (64, 64)))
    unit = _unit_probe(N)
    grid = np.arange(8, 55, 2)
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2).astype(float)
    n = len(positions)
    reps = 4  # the same scan several times: more counts per expectation
    pos_rep = np.tile(positions, (reps, 1))
    counts, probe_scaled = simulate_scan(obj, unit, pos_rep, nphotons, rng)
    assert probe_scaled.dtype == np.complex64 and probe_scaled.shape == (N, N)
    # the stored probe is the unit probe times sqrt(scale), scale real and positive
    ratio = probe_scaled / unit
    np.testing.assert_allclose(ratio, ratio[0, 0].real, rtol=1e-5)
    # independent expected counts with the stored probe
    expected = np.stack([_np_intensity(probe_scaled.astype(np.complex128), _np_patch(obj, p, N))
                         for p in positions])
    assert expected.sum(axis=(1, 2)).mean() == pytest.approx(nphotons, rel=1e-5)
    scale_indep = nphotons / np.stack([_np_intensity(unit, _np_patch(obj, p, N))
                                       for p in positions]).sum(axis=(1, 2)).mean()
    assert (np.abs(probe_scaled) ** 2).sum() == pytest.approx(scale_indep, rel=1e-5)
    measured = counts.reshape(reps, n, N, N).mean(axis=0, dtype=np.float64)
    # per pattern total: Poisson noise on nphotons * reps counts
    tot_m, tot_e = measured.sum(axis=(1, 2)), expected.sum(axis=(1, 2))
    z = (tot_m - tot_e) / np.sqrt(tot_e / reps)
    assert np.abs(z).max() < 5 and abs(z.mean()) < 4 / math.sqrt(n)
    # per pixel, pooled over the scan: the mean image
    m_img, e_img = measured.mean(axis=0), expected.mean(axis=0)
    bright = e_img > 20
    z_img = (m_img - e_img)[bright] / np.sqrt(e_img[bright] / (reps * n))
    assert np.abs(z_img).max() < 5


def test_photon_scale_does_not_depend_on_probe_norm():
    """A probe given with any norm is rescaled to nphotons: the stored probe does not
    depend on the norm of the unit probe passed in."""
    N = 16
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    obj = np.full((30, 30), 0.5 + 0j)
    pos = np.array([[12.0, 12.0], [15.0, 14.0]])
    _, p1 = simulate_scan(obj, _unit_probe(N), pos, 1e4, rng1)
    _, p2 = simulate_scan(obj, 3.0 * _unit_probe(N), pos, 1e4, rng2)
    np.testing.assert_allclose(p1, p2, rtol=1e-5)


def test_patch_operator_is_extract_and_place_as_a_sparse_matrix():
    """The same bilinear weights as extract_patches / place_patches (sub-pixel positions),
    real and complex, and the two are adjoint: <E o, p> = <o, E^T p>."""
    rng = np.random.default_rng(5)
    pos, shape, N = rng.uniform(9, 40, (30, 2)), (50, 52), 16
    op = physics.PatchOperator.at(pos, N, shape)
    obj = torch.from_numpy(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    patches = torch.from_numpy(rng.standard_normal((30, N, N)) + 1j * rng.standard_normal((30, N, N)))
    t = torch.from_numpy(pos)
    torch.testing.assert_close(op.extract(obj), physics.extract_patches(obj, t, N).to(torch.complex64),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op.place(patches), physics.place_patches(patches, t, shape)
                               .to(torch.complex64), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(op.extract(obj.real), physics.extract_patches(obj.real, t, N).float(),
                               rtol=1e-5, atol=1e-5)
    lhs = (op.extract(obj) * patches.conj()).sum()
    rhs = (obj.to(torch.complex64) * op.place(patches).conj()).sum()
    assert abs(complex(lhs - rhs)) < 1e-3 * abs(complex(lhs))
    with pytest.raises(ValueError, match="leave the"):
        physics.PatchOperator.at(np.array([[4.0, 20.0]]), N, shape)


def test_placement_rows_place_each_patch_alone_so_factors_stitch_by_one_product():
    """Row i of placement_rows is patch i placed alone (place_patches of it), so per-patch
    factors c give the canvas of the scaled patches as rows.T @ c, complex and real."""
    rng = np.random.default_rng(6)
    pos, shape, N = rng.uniform(9, 40, (30, 2)), (50, 52), 16
    patches = torch.from_numpy(rng.standard_normal((30, N, N)) + 1j * rng.standard_normal((30, N, N)))
    c = rng.standard_normal(30) + 1j * rng.standard_normal(30)
    t = torch.from_numpy(pos)
    rows = physics.placement_rows(patches, pos, shape)
    assert rows.shape == (30, 50 * 52) and rows.nnz == 30 * (N + 1) ** 2
    expected = physics.place_patches(patches * torch.from_numpy(c)[:, None, None], t, shape)
    np.testing.assert_allclose((rows.T @ c.astype(np.complex64)).reshape(shape), expected.numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(physics.placement_rows(patches[3:4], pos[3:4], shape).toarray()[0],
                               physics.place_patches(patches[3:4], t[3:4], shape).numpy().ravel(),
                               rtol=1e-5, atol=1e-5)
    real = physics.placement_rows(patches.real, pos, shape)
    assert real.dtype == np.float32
    np.testing.assert_allclose(np.asarray(real.sum(axis=0)).reshape(shape),
                               physics.place_patches(patches.real, t, shape).numpy(),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="leave the"):
        physics.placement_rows(patches[:1], np.array([[4.0, 20.0]]), shape)


def test_positions_clipped_inside_the_object_extract_patches_there_and_move_no_inner_one():
    N, shape = 8, (20, 24)
    positions = np.array([[4.0, 4.0], [10.3, 12.7], [-3.0, 30.0], [15.0, 19.0], [15.2, 19.4]])
    inside = physics.inside_positions(positions, N, shape)
    np.testing.assert_array_equal(inside[:2], positions[:2])  # already inside: unchanged
    np.testing.assert_array_equal(inside[2], [4.0, 19.0])  # each axis to its nearest edge
    np.testing.assert_array_equal(inside[4], [15.0, 19.0])
    obj = torch.ones(shape, dtype=torch.complex64)
    patches = physics.extract_patches(obj, torch.from_numpy(inside), N)  # no index error
    assert patches.shape == (5, N, N)
    with pytest.raises(ValueError, match="leave"):
        physics.PatchOperator.at(positions[2:3], N, shape)
    physics.PatchOperator.at(inside, N, shape)


def test_a_far_field_shift_moves_the_centroid_by_its_bins_and_the_counts_cannot_see_it():
    N = 32
    r = np.arange(N) - N // 2
    pupil = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 18.0)  # a smooth far field
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil))).astype(np.complex64)
    probe = np.stack([probe, 0.3 * np.roll(probe, 2, axis=1)])  # two modes
    bins = np.array([0.37, -1.25])
    moved = physics.shift_far_field(probe, bins)
    np.testing.assert_allclose(physics.far_field_centroid(moved) - physics.far_field_centroid(probe),
                               bins, atol=0.05)
    assert physics.far_field_centroid(probe) == pytest.approx([0.0, 0.0], abs=1e-6)
    rng = np.random.default_rng(1)
    obj = (rng.uniform(0.5, 1, (N, N)) * np.exp(1j * rng.uniform(-1, 1, (N, N)))).astype(np.complex64)
    unramp = np.conj(physics.shift_far_field(np.ones((N, N), np.complex64), bins))
    counts = physics.forward_intensity(torch.from_numpy(probe), torch.from_numpy(obj))
    same = physics.forward_intensity(torch.from_numpy(moved), torch.from_numpy(obj * unramp))
    torch.testing.assert_close(same, counts, rtol=1e-4, atol=1e-4 * float(counts.max()))
    back = physics.shift_far_field(moved, -bins)
    np.testing.assert_allclose(back, probe, atol=1e-5)
