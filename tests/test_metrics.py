"""Tests for ptycho_torch.metrics (alignment-aware reconstruction metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ptycho_torch import metrics as M

KEYS = ("mae", "mse", "psnr", "ssim", "frc50", "frc_1_7")


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian low-pass filtered white noise rescaled to [0, 1]."""
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (x - x.min()) / (x.max() - x.min())


CROP = (slice(16, 112), slice(16, 112))


def _object(seed: int, amp_min: float = 0.5) -> np.ndarray:
    """128x128 periodic complex object: amplitude in [amp_min, 1], phase in [-1, 1] rad."""
    rng = np.random.default_rng(seed)
    amp = amp_min + (1.0 - amp_min) * _smooth(rng, (128, 128), 3.0)
    return amp * np.exp(1j * (-1.0 + 2.0 * _smooth(rng, (128, 128), 3.0)))


def _displaced(big: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Crop of the object displaced by ``shift`` px: realistic, non-periodic at the crop edge."""
    return M.fourier_shift_image(big, shift, pad=0)[CROP]


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return _object(1234)


@pytest.fixture(scope="module")
def truth(big: np.ndarray) -> np.ndarray:
    """96x96 complex128 truth: central crop of ``big``."""
    return big[CROP]


@pytest.fixture(scope="module")
def self_score(truth: np.ndarray) -> dict:
    return M.score(truth, truth)


def _assert_close_to_self(s: dict, ref: dict, atol: float = 1e-6) -> None:
    for part in ("amplitude", "phase"):
        for k in ("mae", "mse", "ssim", "frc50", "frc_1_7"):
            assert s[part][k] == pytest.approx(ref[part][k], abs=atol), (part, k)


def test_self_score_is_perfect(self_score: dict) -> None:
    for part in ("amplitude", "phase"):
        m = self_score[part]
        assert set(m) == set(KEYS)
        assert all(type(v) is float for v in m.values())
        assert m["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert m["mae"] == pytest.approx(0.0, abs=1e-12)
        assert m["mse"] == pytest.approx(0.0, abs=1e-12)
        assert m["frc50"] == 0.5 and m["frc_1_7"] == 0.5
    info = self_score["alignment"]
    assert info["shift_px"] == [0.0, 0.0] and info["crop_px"] == 1
    assert info["phase_ramp_rad_per_px"] is None
    assert info["amplitude_scale"] == pytest.approx(1.0)
    assert self_score["region_shape"] == [94, 94]
    json.dumps(info)


def test_global_phase_offset_invariance(truth: np.ndarray, self_score: dict) -> None:
    s = M.score(truth * np.exp(1j * 2.5), truth)
    _assert_close_to_self(s, self_score)
    assert s["alignment"]["phase_offset_rad"] == pytest.approx(2.5, abs=1e-9)


def test_phase_wrap_is_not_an_error(truth: np.ndarray) -> None:
    wrapped_truth = truth * np.exp(1j * 2.5)  # phase spans [1.5, 3.5] rad: wraps at pi
    rng = np.random.default_rng(2)
    recon = wrapped_truth * np.exp(1j * 0.02 * rng.standard_normal(truth.shape))
    s = M.score(recon, wrapped_truth)
    assert s["phase"]["mse"] < 1e-3 and s["phase"]["ssim"] > 0.95


def test_integer_shift_invariance(big: np.ndarray, truth: np.ndarray) -> None:
    s = M.score(np.roll(big, (3, -2), axis=(0, 1))[CROP], truth)
    assert s["alignment"]["shift_px"] == pytest.approx([-3.0, 2.0], abs=0.05)
    assert s["alignment"]["crop_px"] == 4
    assert s["region_shape"] == [88, 88]
    assert s["amplitude"]["ssim"] > 0.99 and s["phase"]["ssim"] > 0.99


def test_subpixel_shift_invariance(big: np.ndarray, truth: np.ndarray) -> None:
    s = M.score(_displaced(big, (0.5, -1.25)), truth)
    assert s["alignment"]["shift_px"] == pytest.approx([-0.5, 1.25], abs=0.05)
    assert s["amplitude"]["ssim"] > 0.99 and s["phase"]["ssim"] > 0.99


def test_phase_ramp_removed(truth: np.ndarray) -> None:
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    ramped = truth * np.exp(1j * (0.3 + 0.15 * rows - 0.08 * cols))  # wraps several times
    assert M.score(ramped, truth)["phase"]["ssim"] < 0.5  # ramp is real damage if not removed
    s = M.score(ramped, truth, remove_ramp=True)
    assert s["phase"]["ssim"] > 0.99 and s["amplitude"]["ssim"] > 0.99
    assert s["alignment"]["phase_ramp_rad_per_px"] == pytest.approx([0.15, -0.08], abs=1e-6)
    centre = 1 + (94 - 1) / 2  # ramp is reported about the centre of the cropped region
    expected = np.angle(np.exp(1j * (0.3 + (0.15 - 0.08) * centre)))
    assert s["alignment"]["phase_offset_rad"] == pytest.approx(expected, abs=1e-6)


def test_all_ambiguities_together(big: np.ndarray, truth: np.ndarray) -> None:
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    recon = 0.7 * _displaced(big, (1.3, -2.6)) * np.exp(1j * (2.0 + 0.05 * rows + 0.02 * cols))
    s = M.score(recon, truth, remove_ramp=True)
    info = s["alignment"]
    assert info["shift_px"] == pytest.approx([-1.3, 2.6], abs=0.05)
    assert info["phase_ramp_rad_per_px"] == pytest.approx([0.05, 0.02], abs=1e-3)
    assert info["amplitude_scale"] == pytest.approx(1 / 0.7, rel=1e-3)
    # offset is about the region centre (47.5, 47.5) in aligned coordinates, where the
    # recon content came from (y + 1.3, x - 2.6)
    expected = np.angle(np.exp(1j * (2.0 + 0.05 * (47.5 + 1.3) + 0.02 * (47.5 - 2.6))))
    assert info["phase_offset_rad"] == pytest.approx(expected, abs=2e-3)
    assert s["amplitude"]["ssim"] > 0.99 and s["phase"]["ssim"] > 0.99
    json.dumps(s)


def test_ramp_does_not_break_registration_but_counts_as_damage(big: np.ndarray, truth: np.ndarray) -> None:
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    s = M.score(_displaced(big, (1.3, -2.6)) * np.exp(1j * (0.05 * rows + 0.02 * cols)), truth)
    assert s["alignment"]["shift_px"] == pytest.approx([-1.3, 2.6], abs=0.05)
    assert s["alignment"]["phase_ramp_rad_per_px"] is None
    assert s["phase"]["ssim"] < 0.9


def test_info_reproduces_aligned_array(big: np.ndarray, truth: np.ndarray) -> None:
    recon = 1.6 * _displaced(big, (-0.7, 2.2)) * np.exp(-1j * 0.9)
    aligned, _, info = M.align(recon, truth)
    m = info["crop_px"]
    rebuilt = info["amplitude_scale"] * np.exp(-1j * info["phase_offset_rad"])
    rebuilt = rebuilt * M.fourier_shift_image(recon, tuple(info["shift_px"]))[m:-m, m:-m]
    np.testing.assert_allclose(rebuilt, aligned, atol=1e-12)
    assert info["phase_offset_rad"] == pytest.approx(-0.9, abs=1e-3)


def test_registers_weak_amplitude_noisy_phase_object() -> None:
    big = _object(99, amp_min=0.97)
    rng = np.random.default_rng(5)
    recon = _displaced(big, (-2.2, 3.7)) + 0.05 * (rng.standard_normal((96, 96)) + 1j * rng.standard_normal((96, 96)))
    assert M.register_shift(recon, big[CROP]) == pytest.approx((2.2, -3.7), abs=0.1)


def test_amplitude_scale_undone(truth: np.ndarray, self_score: dict) -> None:
    s = M.score(truth * 0.5, truth)
    assert s["alignment"]["amplitude_scale"] == pytest.approx(2.0)
    _assert_close_to_self(s, self_score)


def test_align_returns_same_region(big: np.ndarray, truth: np.ndarray) -> None:
    r, t, info = M.align(np.roll(big, (3, -2), axis=(0, 1))[CROP], truth, margin=6)
    assert r.shape == t.shape == (84, 84) and info["crop_px"] == 6
    np.testing.assert_allclose(t, truth[6:-6, 6:-6])
    np.testing.assert_allclose(r, t, atol=1e-3)
    r, t, info = M.align(truth, truth, register=False)
    assert r.shape == (96, 96) and info["crop_px"] == 0


def test_psnr_ssim_match_skimage(truth: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    t = np.abs(truth)
    r = t + 0.02 * rng.standard_normal(t.shape)
    m = M.image_metrics(r, t)
    dr = t.max() - t.min()
    assert m["psnr"] == peak_signal_noise_ratio(t, r, data_range=dr)
    assert m["ssim"] == structural_similarity(t, r, data_range=dr)
    assert m["mse"] == pytest.approx(np.mean((r - t) ** 2))


def test_frc_self_is_one_and_decreases_with_noise(truth: np.ndarray) -> None:
    t = np.abs(truth)
    freq, curve = M.frc(t, t)
    assert freq[0] == 0.0 and freq[-1] == 0.5 and freq.shape == curve.shape == (49,)
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)
    freq, curve = M.frc(truth, truth)  # complex input
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)
    rng = np.random.default_rng(11)
    noise = rng.standard_normal(t.shape)
    res50 = [M.frc50(t + s * noise, t) for s in (0.003, 0.03, 0.3)]
    res7 = [M.frc_1_7(t + s * noise, t) for s in (0.003, 0.03, 0.3)]
    assert res50[0] > res50[1] > res50[2] and res7[0] > res7[1] > res7[2]
    assert all(a <= b for a, b in zip(res50, res7))


def test_threshold_crossing_interpolates() -> None:
    freq = np.array([0.0, 0.1, 0.2, 0.3])
    assert M.frc_threshold_crossing(freq, np.array([1.0, 0.9, 0.3, 0.1]), 0.5) == pytest.approx(
        0.1 + 0.1 * (0.9 - 0.5) / (0.9 - 0.3)
    )
    assert M.frc_threshold_crossing(freq, np.array([1.0, 0.9, 0.8, 0.6]), 0.5) == 0.5


@pytest.mark.parametrize("damage", ["blur", "noise"])
def test_real_damage_is_detected(truth: np.ndarray, self_score: dict, damage: str) -> None:
    if damage == "blur":
        bad = ndimage.gaussian_filter(truth.real, 2.0) + 1j * ndimage.gaussian_filter(truth.imag, 2.0)
    else:
        rng = np.random.default_rng(3)
        bad = truth + 0.1 * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))
    s = M.score(bad, truth, remove_ramp=True)
    assert min(s["amplitude"]["ssim"], s["phase"]["ssim"]) < 0.95
    assert s["amplitude"]["frc50"] < self_score["amplitude"]["frc50"]


def test_apply_alignment_redoes_what_align_did(big: np.ndarray, truth: np.ndarray) -> None:
    recon = 1.4 * _displaced(big, (0.8, -1.7)) * np.exp(1j * 0.6)
    aligned, cropped, info = M.align(recon, truth)
    assert info["crop_px"] == 3
    again, cropped_again = M.apply_alignment(recon, truth, info)
    np.testing.assert_array_equal(cropped_again, cropped)
    np.testing.assert_allclose(again, aligned, atol=1e-12)
    with pytest.raises(ValueError, match="phase ramp"):
        M.apply_alignment(recon, truth, M.align(recon, truth, remove_ramp=True)[2])


def test_frc_crossing_does_not_depend_on_the_dc_ring() -> None:
    freq = np.array([0.0, 0.1, 0.2, 0.3])
    for dc in (-1.0, 0.0, 1.0):  # after mean subtraction ring 0 holds rounding noise
        assert M.frc_threshold_crossing(freq, np.array([dc, 0.3, 0.2, 0.1]), 0.5) == pytest.approx(
            0.1 * (1.0 - 0.5) / (1.0 - 0.3))


def test_score_keeps_the_frc_curves_behind_its_numbers(truth: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    s = M.score(truth + 0.05 * rng.standard_normal(truth.shape), truth)
    curves = s["frc_curves"]
    freq = np.asarray(curves["freq_cycles_per_px"])
    assert freq[0] == 0.0 and freq[-1] == 0.5
    for part in ("amplitude", "phase"):
        for key, threshold in (("frc50", 0.5), ("frc_1_7", 1 / 7)):
            assert M.frc_threshold_crossing(freq, np.asarray(curves[part]), threshold) == s[part][key]
