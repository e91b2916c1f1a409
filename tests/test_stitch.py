"""Stitching: exact on consistent patches; phase synchronisation and data calibration undo
the per-patch factors a diffraction pattern cannot see."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.config import InferenceConfig
from ptycho_torch.stitch import (calibrate_patches, illumination, pair_overlaps,
                                 scanned_region, stitch, synchronise_phases)

N = 16
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    """A smooth object, a probe with the photon scale, integer raster positions."""
    rng = np.random.default_rng(3)
    k = np.fft.fftfreq(64)
    lowpass = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) * 300)
    f = np.fft.ifft2(np.fft.fft2(rng.standard_normal((2, 64, 64))) * lowpass).real
    f = (f - f.min(axis=(1, 2), keepdims=True)) / np.ptp(f, axis=(1, 2), keepdims=True)
    obj = (0.5 + 0.5 * f[0]) * np.exp(1j * (2 * f[1] - 1))
    probe = physics.focused_disk_probe(N, 3.0, 0.0, 1e-10, 1e-7).numpy() * 30
    axis = np.arange(10, 54, 3, dtype=float)
    pos = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(pos), N)
    return obj, probe, pos, patches


OFF = InferenceConfig(phase_sync=False, calibration_iterations=0)


@pytest.mark.parametrize("mode", ["uniform", "probe_weighted"])
def test_consistent_patches_stitch_to_the_object_exactly(scene, mode):
    obj, probe, pos, patches = scene
    out, _ = stitch(patches, pos, obj.shape, probe, dataclasses.replace(OFF, stitch=mode))
    region = scanned_region(pos)
    np.testing.assert_allclose(out[region], obj[region], rtol=0, atol=1e-5)


def _error_up_to_global_phase(a: np.ndarray, b: np.ndarray) -> float:
    a = a * np.exp(-1j * np.angle(np.vdot(b, a)))
    return float(np.abs(a - b).max())


def test_phase_synchronisation_undoes_random_patch_phases(scene):
    obj, probe, pos, patches = scene
    phases = np.random.default_rng(0).uniform(-np.pi, np.pi, len(pos))
    scrambled = patches * torch.from_numpy(np.exp(1j * phases))[:, None, None]
    region = scanned_region(pos)
    unsynced, _ = stitch(scrambled, pos, obj.shape, probe, OFF)
    assert _error_up_to_global_phase(unsynced[region], obj[region]) > 0.3
    synced, _ = stitch(scrambled, pos, obj.shape, probe, dataclasses.replace(OFF, phase_sync=True))
    assert _error_up_to_global_phase(synced[region], obj[region]) < 1e-4


def test_calibration_on_the_counts_undoes_patch_amplitude_scales(scene):
    """Noise-free counts of the true object pin each patch's scale; no ground truth is used."""
    obj, probe, pos, patches = scene
    counts = physics.forward_intensity(torch.from_numpy(probe), patches).numpy()
    scales = np.random.default_rng(1).uniform(0.8, 1.25, len(pos))
    scaled = patches * torch.from_numpy(scales)[:, None, None]
    region = scanned_region(pos)
    plain, _ = stitch(scaled, pos, obj.shape, probe, OFF)
    cfg = dataclasses.replace(OFF, calibration_iterations=300, calibration_patterns="all")
    calibrated, record = stitch(scaled, pos, obj.shape, probe, cfg, counts)
    before = _error_up_to_global_phase(plain[region], obj[region])
    after = _error_up_to_global_phase(calibrated[region], obj[region])
    assert after < before / 3, (before, after)
    assert record["calibration_loss_first_last"][1] < record["calibration_loss_first_last"][0]


@pytest.mark.parametrize("patterns", ["half", "all"])
def test_calibration_recovers_known_patch_phases_and_scales(scene, patterns):
    """Each patch multiplied by a known factor (scale 0.8-1.25, phase anywhere) is restored:
    phase synchronisation then the calibration on noise-free counts give factors that undo
    the known ones up to one global phase, and the object the true one."""
    obj, probe, pos, patches = scene
    rng = np.random.default_rng(4)
    known = rng.uniform(0.8, 1.25, len(pos)) * np.exp(1j * rng.uniform(-np.pi, np.pi, len(pos)))
    counts = physics.forward_intensity(torch.from_numpy(probe), patches).numpy()
    scrambled = (patches * torch.from_numpy(known)[:, None, None]).to(torch.complex64)
    weight = torch.from_numpy(np.abs(probe) ** 2).float()
    synced = synchronise_phases(scrambled, pos, weight / weight.max())
    cfg = InferenceConfig(calibration_iterations=200, calibration_tolerance=0.0,
                          calibration_patterns=patterns)
    found = calibrate_patches(synced, pos, obj.shape, weight / weight.max(),
                              torch.from_numpy(probe), counts, None, cfg)
    rotation = ((synced * scrambled.conj()).sum((-2, -1)) / scrambled.abs().square().sum((-2, -1)))
    product = rotation.numpy() * found.factors.numpy() * known  # patch i is now product_i x p_i
    product /= product[0]  # one global phase (and scale) is free
    np.testing.assert_allclose(np.abs(product), 1.0, atol=0.02)
    np.testing.assert_allclose(np.angle(product), 0.0, atol=0.02)
    fitted = found.record["calibration_patterns_fitted"]
    assert fitted == len(pos) if patterns == "all" else len(pos) // 3 < fitted < len(pos)


def test_calibration_keeps_consistent_patches_and_the_exact_average(scene):
    """Patches that already explain the counts stay as they are: the calibrated stitch is
    the exact weighted average, the object."""
    obj, probe, pos, patches = scene
    counts = physics.forward_intensity(torch.from_numpy(probe), patches).numpy()
    out, record = stitch(patches, pos, obj.shape, probe, InferenceConfig(), counts)
    region = scanned_region(pos)
    assert _error_up_to_global_phase(out[region], obj[region]) < 2e-3
    assert record["calibration_loss_first_last"][1] <= record["calibration_loss_first_last"][0]


def test_calibration_ignores_counts_behind_the_beamstop_and_above_saturation(scene):
    """Whatever the masked and clipped pixels hold, the calibration does not move; without
    the detector's description they pull it elsewhere."""
    from ptycho_torch.config import DetectorConfig
    from ptycho_torch.likelihood import ValidPixels
    from ptycho_torch.simulate import apply_detector, detector_mask
    obj, probe, pos, patches = scene
    keep = (15 * np.arange(4)[:, None] + np.arange(4)).ravel()  # a 4 x 4 block of the raster
    pos, patches = pos[keep], patches[keep]
    counts = physics.forward_intensity(torch.from_numpy(probe), patches).numpy()
    mask = detector_mask(N, DetectorConfig(beamstop_radius_px=1.5), np.random.default_rng(0))
    saturation = float(np.quantile(counts[:, mask == 0], 0.98))
    recorded = apply_detector(counts.copy(), mask, saturation)  # 0 behind the stop, clipped
    other = recorded.copy()
    other[:, mask != 0] = 7.0 * saturation  # other values where the detector tells nothing
    other[recorded >= saturation] = 3.0 * saturation
    scales = torch.from_numpy(np.random.default_rng(1).uniform(0.8, 1.25, 16))
    scaled = patches * scales[:, None, None]
    cfg, shape = dataclasses.replace(OFF, calibration_iterations=5), (32, 32)  # covers them
    pixels = ValidPixels(torch.from_numpy(mask == 0), saturation)
    a, record_a = stitch(scaled, pos, shape, probe, cfg, recorded, pixels)
    b, record_b = stitch(scaled, pos, shape, probe, cfg, other, pixels)
    del record_a["seconds"], record_b["seconds"]  # timings differ, the fit does not
    assert np.array_equal(a, b) and record_a == record_b
    unmasked, _ = stitch(scaled, pos, shape, probe, cfg, recorded)
    assert not np.allclose(unmasked, a, rtol=0, atol=1e-4)


def test_pair_overlaps_are_inner_products_of_the_placed_patches(scene):
    """Against the definition, pair by pair: p_j on a canvas at an integer position, p_i
    placed at that position + (pos_i - pos_j) (sub-pixel: jittered positions)."""
    _, probe, pos, patches = scene
    jittered = torch.from_numpy(pos + np.random.default_rng(2).uniform(-0.5, 0.5, pos.shape))
    weight = torch.from_numpy(np.abs(probe) ** 2)
    pairs = torch.tensor([[0, 1], [5, 20], [20, 5], [7, 7], [3, 40]])
    got = pair_overlaps(patches, jittered, pairs, weight)
    centre = torch.tensor([[40.0, 40.0]])
    want = []
    for i, j in pairs.tolist():
        a = physics.place_patches(weight * patches[i:i + 1], centre + jittered[i] - jittered[j],
                                  (80, 80))
        b = physics.place_patches(weight * patches[j:j + 1], centre, (80, 80))
        want.append((a * b.conj()).sum())
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-10, atol=1e-10)


def test_illumination_holds_every_photon_of_every_position(scene):
    obj, probe, pos, _ = scene
    dose = illumination(probe, pos + 0.3, obj.shape)
    assert dose.min() >= 0
    assert dose.sum() == pytest.approx(len(pos) * np.sum(np.abs(probe) ** 2), rel=1e-12)
