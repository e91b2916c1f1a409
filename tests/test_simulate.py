"""The simulator: sub-pixel sampling, objects, probes, scans, detector effects, determinism.

Expected values come from independent arithmetic (numpy FFTs of whole objects,
closed-form plane waves, lattice counting), never from the code under test.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptycho_torch import physics, simulate
from ptycho_torch.config import (DataConfig, DetectorConfig, ExperimentConfig, ObjectConfig,
                                 ProbeConfig, ScanConfig)
from ptycho_torch.config_factory import ConfigError, resolve_config
from ptycho_torch.cxi import read_cxi, write_cxi
from ptycho_torch.dataset import MASK_DEAD, MASK_INVALID, MASK_SHADOWED, DataFileError
from ptycho_torch.npz import write_npz

N = 16


def _np_intensity(probe: np.ndarray, patch: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fft2(probe * patch, norm="ortho"))) ** 2


def _np_shift(obj: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """``obj(x + shift)`` by a Fourier phase ramp on the whole (periodic) object."""
    fr, fc = np.fft.fftfreq(obj.shape[0]), np.fft.fftfreq(obj.shape[1])
    ramp = np.exp(2j * np.pi * (fr[:, None] * shift[0] + fc[None, :] * shift[1]))
    return np.fft.ifft2(np.fft.fft2(obj) * ramp)


def _slice(obj: np.ndarray, corner: tuple[int, int], n: int = N) -> np.ndarray:
    return obj[corner[0]:corner[0] + n, corner[1]:corner[1] + n]


def _probe(n: int = N) -> np.ndarray:
    lam = physics.wavelength_m(8000.0)
    pixel = physics.object_pixel_size_m(8000.0, 2.0, 75e-6, n)
    return physics.focused_disk_probe(n, n / 5, 2e-3, lam, pixel).numpy()


def _grf(size: int = 64, seed: int = 0) -> np.ndarray:
    return simulate.make_object(size, ObjectConfig(), np.random.default_rng(seed))


# ----------------------------------------------------------------- sub-pixel sampling

@pytest.mark.parametrize("frac", [(0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.625)])
def test_subpixel_pattern_equals_pattern_of_fourier_shifted_object(frac):
    """A probe at p + s sees what a probe at p sees on the object shifted by s with a
    Fourier phase ramp (numpy, whole object): the acceptance criterion, to float32."""
    obj, probe = _grf(), _probe()
    p_int = np.array([[20.0, 30.0], [40.0, 25.0], [N / 2, 64 - N / 2 - 1]])
    got = simulate.expected_intensity(obj, probe, p_int + frac)
    shifted = _np_shift(obj, frac)
    for k, p in enumerate(p_int.astype(int)):
        want = _np_intensity(probe, _slice(shifted, tuple(p - N // 2)))
        np.testing.assert_allclose(got[k], want, rtol=0, atol=2e-6 * want.max())


def test_half_pixel_samples_of_a_band_limited_object_are_exact():
    """Independent of any FFT: a sum of plane waves periodic on the object is evaluated
    in closed form at the half-pixel sample points."""
    H, W = 48, 40
    rng = np.random.default_rng(1)
    waves = [(rng.integers(-5, 6), rng.integers(-5, 6), rng.standard_normal() + 1j *
              rng.standard_normal()) for _ in range(6)]

    def field(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return sum(a * np.exp(2j * np.pi * (kr * r / H + kc * c / W)) for kr, kc, a in waves)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    obj = field(rows, cols)
    positions = np.array([[12.5, 17.0], [20.0, 9.5], [30.5, 24.5], [15.125, 11.875]])
    got = simulate.fourier_patches(obj, positions, N)
    u = np.arange(N)
    for k, p in enumerate(positions):
        want = field((p[0] - N / 2 + u)[:, None], (p[1] - N / 2 + u)[None, :])
        np.testing.assert_allclose(got[k], want, atol=1e-10 * np.abs(want).max())


def test_integer_positions_are_plain_slices_and_direct_fft():
    obj, probe = _grf(), _probe()
    positions = np.array([[8.0, 8.0], [31.0, 40.0], [55.0, 20.0]])
    patches = simulate.fourier_patches(obj, positions, N)
    got = simulate.expected_intensity(obj, probe, positions)
    for k, p in enumerate(positions.astype(int)):
        assert np.array_equal(patches[k], _slice(obj, tuple(p - N // 2)))  # bit-exact
        want = _np_intensity(probe, _slice(obj, tuple(p - N // 2)))
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6 * want.max())
    # and the model's own forward model agrees with the simulator there
    model = physics.forward_intensity(torch.from_numpy(probe), physics.extract_patches(
        torch.from_numpy(obj), torch.from_numpy(positions), N)).numpy()
    np.testing.assert_allclose(got, model, rtol=0, atol=1e-6 * model.max())


def test_bilinear_half_pixel_is_a_cos_lowpass_not_a_fourier_shift():
    """Why the simulator does not use the model's bilinear extraction: at 0.5 px it
    multiplies a plane wave of frequency f (cycles/px) by cos(pi f); the Fourier
    sampling keeps it (f periodic on the object). On the default object bilinear is a
    ~1 % intensity error."""
    H = 64
    for f in (4 / H, 11 / H, 16 / H):
        obj = np.exp(2j * np.pi * f * np.arange(H))[None, :].repeat(H, 0)
        pos = np.array([[32.0, 30.5]])
        bil = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(pos), N).numpy()
        exact = simulate.fourier_patches(obj, pos, N)
        want = np.exp(2j * np.pi * f * (30.5 - N / 2 + np.arange(N)))[None, :]
        np.testing.assert_allclose(exact[0], want.repeat(N, 0), atol=1e-9)
        np.testing.assert_allclose(bil[0], math.cos(math.pi * f) * want.repeat(N, 0), atol=1e-9)
    obj, probe = _grf(), _probe()
    p = np.array([[30.5, 30.5]])
    ref = _np_intensity(probe, _slice(_np_shift(obj, (0.5, 0.5)), (30 - N // 2, 30 - N // 2)))
    bil = physics.forward_intensity(torch.from_numpy(probe), physics.extract_patches(
        torch.from_numpy(obj), torch.from_numpy(p), N)).numpy()[0]
    sim = simulate.expected_intensity(obj, probe, p)[0]
    assert np.abs(sim - ref).sum() / ref.sum() < 1e-5
    assert np.abs(bil - ref).sum() / ref.sum() > 3e-3


def test_patch_leaving_the_object_is_refused():
    with pytest.raises(ValueError, match="leaves the object frame"):
        simulate.fourier_patches(_grf(32), np.array([[7.5, 16.0]]), N)


def test_image_objects_are_mirror_extended_before_shifting():
    """A non-periodic image (a ramp) shifted by half a pixel near its edge: without the
    mirror extension the edge jump rings into the patch; with it the patch is the
    ramp's midpoint values (linear functions interpolate to their midpoints)."""
    H = 48
    ramp = np.add.outer(np.arange(H), np.zeros(H)).astype(complex) + 1.0
    pos = np.array([[N / 2 + 0.5, 24.0]])
    probe = np.ones((N, N), complex) / N
    mirrored = simulate.fourier_patches(simulate.mirror_extend(ramp), pos, N)[0]
    want = (np.arange(N) + 1.5)[:, None].repeat(N, 1)
    interior = slice(2, N - 2)
    assert np.abs(mirrored[interior] - want[interior]).max() < 0.05
    periodic = simulate.fourier_patches(ramp, pos, N)[0]
    assert np.abs(periodic[interior] - want[interior]).max() > 1.0
    assert simulate.expected_intensity(ramp, probe, pos, periodic=False).shape == (1, N, N)


# ----------------------------------------------------------------- scans

def _cfg(**scan) -> ScanConfig:
    return ScanConfig(**scan)


@pytest.mark.parametrize("kind", ["raster", "fermat", "random"])
def test_scans_fill_the_object_at_the_step_density_on_the_lattice(kind):
    size, step, rng = 128, 4.0, np.random.default_rng(3)
    pos = simulate.scan_positions(size, 32, _cfg(kind=kind, jitter_px=0.5), rng, step)
    lo, hi = 32 / 2, size - 32 / 2 - 1
    assert pos.min() >= lo and pos.max() <= hi
    assert np.array_equal(pos * 8, np.round(pos * 8))  # 1/8-px lattice
    area = (hi - lo) ** 2
    assert len(pos) == pytest.approx(area / step ** 2, rel=0.2)
    assert len(simulate.fraction_groups(pos, 32)[1]) <= 64
    assert len(np.unique(pos, axis=0)) == len(pos)


def test_raster_without_jitter_is_a_grid_of_the_step():
    pos = simulate.scan_positions(64, 16, _cfg(jitter_px=0.0), np.random.default_rng(0), 5.0)
    rows = np.unique(pos[:, 0])
    np.testing.assert_allclose(np.diff(rows), 5.0)
    assert len(pos) == len(rows) ** 2 == ((64 - 16 - 1 - 0) // 5 + 1) ** 2


def test_fermat_spiral_spacing_matches_the_step():
    """Golden-angle spiral with one point per step^2: nearest-neighbour distances of a
    hexagon-like packing of that density are about 1.07 step (never much smaller)."""
    pos = simulate.fermat_positions(200, 16, _cfg(kind="fermat", jitter_px=0.0),
                                    np.random.default_rng(0), 6.0)
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = d.min(axis=1)
    assert 0.85 * 6.0 < np.median(nn) < 1.25 * 6.0
    assert nn.min() > 0.5 * 6.0


def test_overlap_sets_the_step_from_the_probe_diameter():
    probe = physics.gaussian_probe(64, 10.0, 0.0, 1e-10, 1e-7).numpy()
    diameter = 2 * 10.0 / math.sqrt(2 * math.log(2))  # Gaussian 1/e^2 diameter
    assert simulate.scan_step(_cfg(overlap=0.0, step_px=3.0), probe) == 3.0
    assert simulate.scan_step(_cfg(overlap=0.6), probe) == pytest.approx(0.4 * diameter,
                                                                         rel=0.05)
    tiny = physics.gaussian_probe(16, 1.0, 0.0, 1e-10, 1e-7).numpy()
    with pytest.raises(ConfigError, match="data.scan.overlap"):
        simulate.scan_step(_cfg(overlap=0.95), tiny)


# ----------------------------------------------------------------- objects and probes

def _write_image(path: Path, img: np.ndarray) -> Path:
    from skimage import io
    if path.suffix == ".npy":
        np.save(path, img)
    else:
        io.imsave(path, img, check_contrast=False)
    return path


@pytest.mark.parametrize("suffix,dtype", [(".png", np.uint8), (".tif", np.float32),
                                          (".npy", np.float64)])
def test_image_object_spans_the_configured_ranges(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    amp = (rng.uniform(0, 200, (40, 52))).astype(dtype)  # non-square: centre-cropped
    phase = np.add.outer(np.arange(40.0), np.arange(40.0)).astype(dtype)
    cfg = ObjectConfig(kind="image", amplitude_min=0.2, amplitude_max=0.9, phase_max_rad=1.0,
                       amplitude_file=str(_write_image(tmp_path / f"a{suffix}", amp)),
                       phase_file=str(_write_image(tmp_path / f"p{suffix}", phase)))
    obj = simulate.make_object(40, cfg, np.random.default_rng(1))
    assert obj.shape == (40, 40)
    assert np.abs(obj).min() == pytest.approx(0.2) and np.abs(obj).max() == pytest.approx(0.9)
    assert np.angle(obj).min() == pytest.approx(-1.0) and np.angle(obj).max() == pytest.approx(1.0)
    # the crop is the centre square of the amplitude image, unresampled at this size
    expected = 0.2 + 0.7 * (amp[:, 6:46] - amp[:, 6:46].min()) / np.ptp(amp[:, 6:46])
    np.testing.assert_allclose(np.abs(obj), expected, atol=1e-6)
    resized = simulate.make_object(24, cfg, np.random.default_rng(1))
    assert resized.shape == (24, 24)


def test_rgb_image_and_flat_phase(tmp_path):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:, 10:] = 255
    cfg = ObjectConfig(kind="image", amplitude_file=str(_write_image(tmp_path / "c.png", rgb)))
    obj = simulate.make_object(20, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(np.angle(obj), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(obj[:, :10]), 0.4)
    np.testing.assert_allclose(np.abs(obj[:, 10:]), 1.0)


@pytest.mark.parametrize("content,match", [(None, "file not found"),
                                           (b"not an image", "not a readable image"),
                                           ("complex", "real 2-D image"),
                                           ("nan", "NaN")])
def test_bad_image_files_are_refused_naming_the_file(tmp_path, content, match):
    path = tmp_path / ("img.npy" if isinstance(content, str) else "img.png")
    if content == "complex":
        np.save(path, np.ones((8, 8), complex))
    elif content == "nan":
        np.save(path, np.full((8, 8), np.nan))
    elif content is not None:
        path.write_bytes(content)
    cfg = ObjectConfig(kind="image", amplitude_file=str(path))
    with pytest.raises(DataFileError, match=match) as err:
        simulate.make_object(16, cfg, np.random.default_rng(0))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["grf", "lines"])
def test_generated_objects_span_the_configured_ranges(kind):
    cfg = ObjectConfig(kind=kind, amplitude_min=0.3, amplitude_max=0.8, phase_max_rad=0.7)
    obj = simulate.make_object(64, cfg, np.random.default_rng(2))
    assert np.abs(obj).min() == pytest.approx(0.3) and np.abs(obj).max() == pytest.approx(0.8)
    assert np.angle(obj).min() == pytest.approx(-0.7) and np.angle(obj).max() == pytest.approx(0.7)


@pytest.mark.parametrize("fmt", ["cxi", "npz", "npy"])
def test_probe_from_file_is_used_as_stored_up_to_its_norm(tmp_path, fmt):
    rng = np.random.default_rng(4)
    stored = (rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))).astype(np.complex64)
    path = tmp_path / f"probe.{fmt}"
    if fmt == "npy":
        np.save(path, stored)
    elif fmt == "npz":
        np.savez(path, probeGuess=stored)
    else:
        with h5py.File(path, "w") as f:
            f["/entry_1/instrument_1/source_1/illumination"] = stored
    cfg = DataConfig(N=N, probe=ProbeConfig(kind="file", file=str(path)))
    probe = simulate.make_probe(cfg, 1e-7)
    ratio = probe / stored
    np.testing.assert_allclose(ratio, ratio[0, 0].real, rtol=1e-6)
    assert (np.abs(probe) ** 2).sum() == pytest.approx(1.0)
    with pytest.raises(DataFileError, match=r"expected a complex \(32, 32\)") as err:
        simulate.make_probe(replace(cfg, N=32), 1e-7)
    assert str(path) in str(err.value)


def test_probe_kinds_are_unit_norm_and_centred():
    for probe_cfg in (ProbeConfig(pupil_radius_px=3.0, defocus_m=0.0),
                      ProbeConfig(kind="gaussian", fwhm_px=4.0, defocus_m=0.0)):
        probe = simulate.make_probe(DataConfig(N=N, probe=probe_cfg), 1.3e-7)
        inten = np.abs(probe) ** 2
        assert inten.sum() == pytest.approx(1.0)
        phasor = np.exp(2j * np.pi * np.arange(N) / N)  # circular centroid: the probe is periodic
        for profile in (inten.sum(1), inten.sum(0)):
            centre = np.angle((profile * phasor).sum()) / (2 * np.pi) * N % N
            assert centre == pytest.approx(N / 2, abs=1e-6)


# ----------------------------------------------------------------- detector

def _small(**changes) -> DataConfig:
    base = DataConfig(N=N, nphotons=1e4, probe=ProbeConfig(pupil_radius_px=4.0),
                      scan=ScanConfig(step_px=6.0))
    return replace(base, **changes)


def test_beamstop_and_dead_pixels_are_masked_with_cxi_bits_and_zero_counts():
    det = DetectorConfig(beamstop_radius_px=2.5, bad_pixel_fraction=0.05)
    d = simulate.simulate_dataset(_small(detector=det), 44, (5, 0))
    k = np.arange(N) - N // 2
    stop = k[:, None] ** 2 + k[None, :] ** 2 <= 2.5 ** 2
    assert stop.sum() == 21  # lattice points within r = 2.5
    assert np.array_equal(d.mask[stop] & (MASK_INVALID | MASK_SHADOWED),
                          np.full(21, MASK_INVALID | MASK_SHADOWED))
    dead = (d.mask & MASK_DEAD) != 0
    assert dead.sum() == round(0.05 * N * N)
    assert np.array_equal(d.mask != 0, stop | dead) and d.mask.dtype == np.uint32
    assert (d.counts[:, d.mask != 0] == 0).all()
    assert not d.valid_pixels()[stop].any()
    clean = simulate.simulate_dataset(_small(), 44, (5, 0))
    assert np.array_equal(clean.ground_truth, d.ground_truth)  # independent random streams
    assert np.array_equal(clean.positions_px, d.positions_px)
    free = d.mask == 0
    assert np.array_equal(clean.counts[:, free], d.counts[:, free])


def test_saturation_clips_counts_and_is_recorded(tmp_path):
    d = simulate.simulate_dataset(_small(detector=DetectorConfig(saturation_counts=150.0)), 44,
                                  (5, 0))
    clean = simulate.simulate_dataset(_small(), 44, (5, 0))
    assert clean.counts.max() > 150
    np.testing.assert_array_equal(d.counts, np.minimum(clean.counts, 150.0))
    write_cxi(tmp_path / "s.cxi", d)
    with h5py.File(tmp_path / "s.cxi", "r") as f:
        assert f["/entry_1/instrument_1/detector_1/data"].attrs["saturation_level"] == 150.0
        assert f["/entry_1/instrument_1/detector_1/mask"].dtype == np.uint32
    assert read_cxi(tmp_path / "s.cxi").saturation_counts == 150.0


def test_mean_counts_equal_nphotons_for_every_kind():
    """Whatever the object, probe and scan, the mean total counts per pattern are
    nphotons within Poisson error (the sum of all counts is Poisson(n nphotons))."""
    for changes in ({"object": ObjectConfig(kind="lines")},
                    {"probe": ProbeConfig(kind="gaussian", fwhm_px=5.0)},
                    {"scan": ScanConfig(kind="fermat", step_px=3.0)},
                    {"scan": ScanConfig(kind="random", step_px=3.0)}):
        d = simulate.simulate_dataset(_small(**changes), 48, (1, 0))
        n = len(d.counts)
        total = d.counts.sum(dtype=np.float64)
        assert abs(total / n - 1e4) < 5 * math.sqrt(1e4 / n), changes
        # the stored probe reproduces the expected counts: sum over the scan
        expected = simulate.expected_intensity(d.ground_truth.astype(complex),
                                               d.probe.astype(complex), d.positions_px)
        assert expected.sum(dtype=np.float64) / n == pytest.approx(1e4, rel=1e-4)


# ----------------------------------------------------------------- determinism

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


KINDS = {
    "lines": {"object": ObjectConfig(kind="lines")},
    "gaussian": {"probe": ProbeConfig(kind="gaussian", fwhm_px=5.0)},
    "fermat": {"scan": ScanConfig(kind="fermat", step_px=5.0)},
    "random": {"scan": ScanConfig(kind="random", step_px=5.0)},
    "detector": {"detector": DetectorConfig(beamstop_radius_px=2.0, bad_pixel_fraction=0.02,
                                            saturation_counts=200.0)},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_seed_same_bytes_other_seed_other_data(tmp_path, kind):
    cfg = _small(**KINDS[kind])
    files = {}
    torch_threads = torch.get_num_threads()
    try:  # noise-block threads and torch's FFT threads both vary
        for name, seed, workers in (("a", (5, 0), 1), ("b", (5, 0), 2), ("c", (6, 0), 1)):
            torch.set_num_threads(workers)
            files[name] = tmp_path / f"{name}.cxi"
            write_cxi(files[name], simulate.simulate_dataset(cfg, 44, seed, workers))
    finally:
        torch.set_num_threads(torch_threads)
    assert _sha(files["a"]) == _sha(files["b"])  # threads change nothing
    assert _sha(files["a"]) != _sha(files["c"])
    a, c = read_cxi(files["a"]), read_cxi(files["c"])
    assert not np.array_equal(a.counts, c.counts)
    if kind != "detector":
        assert not np.array_equal(a.positions_px, c.positions_px) or kind == "fermat"


def test_image_object_is_deterministic(tmp_path):
    img = np.random.default_rng(0).uniform(size=(50, 50))
    np.save(tmp_path / "a.npy", img)
    cfg = _small(object=ObjectConfig(kind="image", amplitude_file=str(tmp_path / "a.npy")))
    for name in ("x", "y"):
        write_cxi(tmp_path / f"{name}.cxi", simulate.simulate_dataset(cfg, 40, (3, 0)))
    assert _sha(tmp_path / "x.cxi") == _sha(tmp_path / "y.cxi")


# ----------------------------------------------------------------- configuration and the step

@pytest.mark.parametrize("settings,key", [
    ({"data.object.kind": "image"}, "data.object.amplitude_file"),
    ({"data.probe.kind": "file"}, "data.probe.file"),
    ({"data.source": "file"}, "data.train_file"),
    ({"data.source": "file", "data.train_file": "a.npz", "data.test_file": "b.npz",
      "data.test_fraction": 0.2}, "data.test_fraction"),
    ({"data.probe.kind": "gaussian", "data.probe.fwhm_px": 20.0}, "data.probe.fwhm_px"),
    ({"data.detector.beamstop_radius_px": 16.0}, "data.detector.beamstop_radius_px"),
    ({"data.object.amplitude_file": "bad\nname.png"}, "data.object.amplitude_file"),
])
def test_config_cross_checks_name_the_key(settings, key):
    with pytest.raises(ConfigError) as err:
        resolve_config(None, settings)
    assert [p.split(":")[0] for p in err.value.problems] == [key]


def test_pupil_radius_is_only_checked_for_the_disk_probe():
    resolve_config(None, {"data.probe.kind": "gaussian", "data.probe.pupil_radius_px": 40.0})
    with pytest.raises(ConfigError, match="pupil_radius_px"):
        resolve_config(None, {"data.probe.pupil_radius_px": 40.0})


def test_source_file_converts_npz_to_cxi(tmp_path):
    d = simulate.simulate_dataset(_small(), 40, (2, 0))
    write_npz(tmp_path / "train.npz", d)
    write_cxi(tmp_path / "test.cxi", d)
    cfg = ExperimentConfig(data=_small(source="file", train_file=str(tmp_path / "train.npz"),
                                       test_file=str(tmp_path / "test.cxi")))
    numbers = simulate.run(cfg, tmp_path / "a.cxi", tmp_path / "b.cxi")
    assert numbers["train_patterns"] == numbers["test_patterns"] == len(d.counts)
    a, b = read_cxi(tmp_path / "a.cxi"), read_cxi(tmp_path / "b.cxi")
    assert np.array_equal(a.counts, d.counts) and np.array_equal(b.counts, d.counts)
    assert np.array_equal(a.positions_px, d.positions_px)


def test_simulate_step_refuses_a_missing_image_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = simulate.main(["--config-json", '{"data": {"N": 16, "probe": {"pupil_radius_px": 3.0}, '
                          '"object": {"kind": "image", "amplitude_file": "nowhere.png"}}}',
                          "--train-out", "train.cxi", "--test-out", "test.cxi",
                          "--report-dir", "reports/x/simulate"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere.png: file not found" in err and "Traceback" not in err
    assert not (tmp_path / "train.cxi").exists()


# ----------------------------------------------------------------- position errors

def test_position_errors_move_the_recorded_positions_not_the_patterns(tmp_path):
    exact = simulate.simulate_dataset(_small(scan=ScanConfig(step_px=3.0)), 64, (5, 0))
    off = simulate.simulate_dataset(_small(scan=ScanConfig(step_px=3.0, position_error_px=0.5)),
                                    64, (5, 0))
    assert np.array_equal(off.counts, exact.counts)  # simulated at the true positions
    assert not exact.extras  # no errors: nothing else recorded
    true = np.stack([off.extras["true_position_row_px"], off.extras["true_position_col_px"]], 1)
    assert np.array_equal(true, exact.positions_px)
    error = off.positions_px - true
    assert abs(error.mean()) < 0.1 and np.std(error) == pytest.approx(0.5, rel=0.15)
    write_cxi(tmp_path / "off.cxi", off)  # the truth travels with the file
    back = read_cxi(tmp_path / "off.cxi")
    assert np.array_equal(back.positions_px, off.positions_px)
    assert np.array_equal(back.extras["true_position_col_px"], true[:, 1])


def test_scale_and_rotation_errors_transform_the_scan_about_its_centre():
    true = np.array([[20.0, 20.0], [20.0, 30.0], [30.0, 20.0], [30.0, 30.0]])
    cfg = ScanConfig(position_scale_error=0.02, position_rotation_error_deg=90.0 / 9)
    out = simulate.recorded_positions(true, cfg, np.random.default_rng(0), (0.0, 100.0))
    centre = np.array([25.0, 25.0])
    a = math.radians(10.0)
    turn = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    assert np.allclose(out, centre + 1.02 * (true - centre) @ turn.T, atol=1e-12)
    # distances between positions grow by the scale error, whatever the rotation
    assert np.linalg.norm(out[0] - out[3]) == pytest.approx(1.02 * np.linalg.norm(
        true[0] - true[3]), rel=1e-12)


@pytest.mark.parametrize("key,value", [("position_error_px", -0.5),
                                       ("position_scale_error", 0.5),
                                       ("position_rotation_error_deg", 45.0)])
def test_bad_position_error_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"data.scan.{key}"):
        resolve_config(None, {f"data.scan.{key}": value})


# ----------------------------------------------------------------- a wrong given probe

def test_a_wrong_given_probe_changes_the_file_not_the_patterns(tmp_path):
    from ptycho_torch.metrics import probe_error, probe_photon_ratio
    exact = simulate.simulate_dataset(_small(), 48, (5, 0))
    assert exact.true_probe is None  # no error: nothing else recorded
    brighter = simulate.simulate_dataset(_small(probe=ProbeConfig(
        pupil_radius_px=4.0, given_amplitude_factor=1.1)), 48, (5, 0))
    assert np.array_equal(brighter.counts, exact.counts)  # simulated with the true probe
    assert np.array_equal(brighter.true_probe, exact.probe)
    # the shape is right, the photons 1.1^2 too many
    assert probe_error(brighter.probe, brighter.true_probe) == pytest.approx(0, abs=1e-6)
    assert probe_photon_ratio(brighter.probe, brighter.true_probe) == pytest.approx(1.21, rel=1e-5)
    assert probe_error(np.exp(0.7j) * exact.probe, exact.probe) == pytest.approx(0, abs=1e-6)
    assert probe_error(np.roll(exact.probe, 1, axis=1), exact.probe) > 0.1
    write_cxi(tmp_path / "b.cxi", brighter)  # the truth travels with the file
    assert np.array_equal(read_cxi(tmp_path / "b.cxi").true_probe, exact.probe)


def test_a_defocused_or_shifted_given_probe_is_undone_by_the_inverse_operation():
    cfg = _small(probe=ProbeConfig(pupil_radius_px=4.0, given_defocus_m=1e-3))
    d = simulate.simulate_dataset(cfg, 48, (5, 0))
    pixel, wavelength = d.object_pixel_size_m, physics.wavelength_m(cfg.energy_eV)
    back = physics.fresnel_propagate(torch.from_numpy(d.probe.astype(np.complex128)), -1e-3,
                                     wavelength, pixel).numpy()
    assert np.abs(d.probe - d.true_probe).max() > 0.1 * np.abs(d.true_probe).max()
    np.testing.assert_allclose(back, d.true_probe, atol=1e-4 * np.abs(d.true_probe).max())
    shifted = simulate.given_probe(d.true_probe, ProbeConfig(given_shift_px=2.0), cfg.energy_eV,
                                   pixel)  # a whole-pixel shift is a roll
    np.testing.assert_allclose(shifted, np.roll(d.true_probe, (2, 2), axis=(0, 1)),
                               atol=1e-5 * np.abs(d.true_probe).max())
