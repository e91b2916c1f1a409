"""Stitching: exact on consistent patches; phase synchronisation and data calibration undo
the per-patch factors a diffraction pattern cannot see."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.config import InferenceConfig
from ptycho_torch.stitch import scanned_region, stitch

N = 16


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
    cfg = dataclasses.replace(OFF, calibration_iterations=300, calibration_learning_rate=0.02)
    calibrated, record = stitch(scaled, pos, obj.shape, probe, cfg, counts)
    before = _error_up_to_global_phase(plain[region], obj[region])
    after = _error_up_to_global_phase(calibrated[region], obj[region])
    assert after < before / 3, (before, after)
    assert record["calibration_loss_first_last"][1] < record["calibration_loss_first_last"][0]
