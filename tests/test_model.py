"""The network and its physics-informed loss: merge and re-extract, the forward model, sizes
and options, the detector mask and saturation in the loss. Training: tests/test_train.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import tiny_config as _tiny
from ptycho_torch import physics
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.model import PtychoPINN, input_scale, merge_and_reextract, physics_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _smooth_object(size: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)
    lowpass = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) * 400)
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((2, size, size))) * lowpass)
    obj = (0.7 + 0.3 * np.tanh(field[0].real * 20)) * np.exp(1j * 8 * field[1].real)
    return torch.from_numpy(obj)


def test_merge_and_reextract_keeps_patches_of_one_object():
    """Patches cut from one object at integer offsets come back unchanged."""
    obj, N = _smooth_object(64), 16
    centre = torch.tensor([30.0, 31.0])
    offsets = torch.tensor([[[-3.0, -2.0], [-3.0, 2.0], [3.0, -2.0], [3.0, 2.0]]])
    patches = physics.extract_patches(obj, (centre + offsets[0]), N)[None]
    merged = merge_and_reextract(patches, offsets, torch.ones(N, N))
    torch.testing.assert_close(merged, patches, rtol=0, atol=1e-12)


def test_merge_and_reextract_at_subpixel_offsets_is_close_for_a_smooth_object():
    obj, N = _smooth_object(64), 16
    offsets = torch.tensor([[[-2.25, -1.5], [-2.25, 2.5], [2.75, -1.5], [1.75, 0.5]]])
    patches = physics.extract_patches(obj, torch.tensor([30.3, 31.6]) + offsets[0], N)[None]
    merged = merge_and_reextract(patches, offsets, torch.ones(N, N))
    assert (merged - patches).abs().max() < 0.05 * patches.abs().max()


def test_merge_really_averages_disagreeing_patches():
    """The constraint is not the identity: patches that disagree are pulled together."""
    obj, N = _smooth_object(64), 16
    offsets = torch.tensor([[[0.0, -2.0], [0.0, 2.0]]])
    patches = physics.extract_patches(obj, torch.tensor([30.0, 30.0]) + offsets[0], N)[None]
    patches[0, 1] *= np.exp(1j)  # a different global phase on the second member
    merged = merge_and_reextract(patches, offsets, torch.ones(N, N))
    assert (merged - patches).abs().max() > 0.1


def test_network_forward_model_equals_direct_computation(tiny):
    """Predicted counts for the true patches are |fftshift(fft2(P * O_patch, ortho))|^2."""
    _, data = tiny
    N, obj = data.N, data.ground_truth
    pos = data.positions_px[:4]
    centre = pos.mean(axis=0)
    offsets = torch.from_numpy(pos - centre)[None]
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(pos), N)[None]
    merged = merge_and_reextract(patches, offsets, torch.ones(N, N))
    predicted = physics.forward_intensity(torch.from_numpy(data.probe), merged)[0].numpy()
    for i, (r, c) in enumerate(np.round(pos).astype(int)):
        if not np.allclose(pos[i], (r, c)):
            continue  # sub-pixel members are covered by the bilinear tests in test_physics
        exit_wave = data.probe * obj[r - N // 2:r + N // 2, c - N // 2:c + N // 2]
        direct = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"))) ** 2
        np.testing.assert_allclose(predicted[i], direct, rtol=1e-4, atol=1e-3 * direct.max())


# ---------------------------------------------------------------- network sizes and options

def _group_of_one_object(N: int, probe_photons: float = 1e4):
    """A probe ``[N, N]``, a 2 x 2 group's offsets ``[1, 4, 2]``, its true patches ``[1, 4, N, N]``
    (cut from one smooth object) and their noise-free counts."""
    probe = physics.gaussian_probe(N, N / 4, 0.0, 1e-10, 1e-8) * probe_photons ** 0.5
    offsets = torch.tensor([[[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]]])
    obj = _smooth_object(N + 16)
    patches = physics.extract_patches(obj, N / 2 + 8 + offsets[0], N)[None]
    probe, patches = probe.to(torch.complex64), patches.to(torch.complex64)
    return probe, offsets, patches, physics.forward_intensity(probe, patches).float()


@pytest.mark.parametrize("N", [32, 64, 128])
def test_network_at_each_size_has_the_right_shapes_and_one_step_lowers_the_loss(N):
    cfg = resolve_config({"data": {"N": N, "object": {"train_size_px": N + 8,
                                                      "test_size_px": N + 8}},
                          "model": {"n_filters_scale": 1, "gridsize": 2}})
    probe, offsets, _, counts = _group_of_one_object(N)
    torch.manual_seed(0)
    for big in (False, True):  # the plain network and the padded one with its border path
        model = PtychoPINN(dataclasses.replace(cfg.model, pad_object=big, probe_big=big), N)
        out = model(counts.sqrt() / input_scale(counts), offsets)
        assert out.shape == (1, 4, N, N) and out.dtype == torch.complex64
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = physics_loss(model, probe, counts, offsets, input_scale(counts), "poisson")
    opt.zero_grad()
    before.backward()
    opt.step()
    after = physics_loss(model, probe, counts, offsets, input_scale(counts), "poisson")
    assert after < before


def test_probe_big_fills_only_the_border_outside_the_predicted_centre():
    N = 32
    cfg = _tiny(data__N=N, data__object__train_size_px=40, data__object__test_size_px=40,
                model__gridsize=1, model__pad_object=True)
    _, offsets, _, counts = _group_of_one_object(N)
    x, offsets = (counts.sqrt() / input_scale(counts))[:, :1], offsets[:, :1]
    torch.manual_seed(0)
    padded = PtychoPINN(cfg.model, N)(x, offsets)[0, 0]
    centre = (slice(N // 4, N - N // 4),) * 2
    border = torch.ones(N, N, dtype=torch.bool)
    border[centre] = False
    assert padded[border].abs().max() == 0 and padded[centre].abs().min() > 0
    torch.manual_seed(0)
    big = PtychoPINN(dataclasses.replace(cfg.model, probe_big=True), N)
    with torch.no_grad():
        first = big(x, offsets)[0, 0]
        for decoder in (big.generator.amplitude, big.generator.phase):  # only the 2nd path
            decoder.outer[-1].bias += 1.0
        second = big(x, offsets)[0, 0]
    assert first[border].abs().min() > 0  # the border is predicted, not zero
    torch.testing.assert_close(second[centre], first[centre], rtol=0, atol=0)
    assert (second[border] - first[border]).abs().min() > 1e-3


@pytest.mark.parametrize("options", [{}, {"model__pad_object": True, "model__probe_big": True,
                                          "model__probe_trainable": True,
                                          "model__intensity_scale_trainable": True}])
def test_gradient_reaches_every_parameter_with_every_option(tiny, options):
    _, data = tiny
    cfg = _tiny(**options)
    torch.manual_seed(0)
    probe = torch.from_numpy(data.probe)
    model = PtychoPINN(cfg.model, data.N, probe)
    counts = torch.from_numpy(data.counts[:8]).reshape(2, 4, data.N, data.N)
    offsets = torch.tensor([[[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]]] * 2)
    physics_loss(model, probe, counts, offsets, 30.0, "poisson").backward()
    names = {name for name, _ in model.named_parameters()}
    assert ({"probe", "log_intensity_scale"} <= names) == bool(options)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_intensity_scale_multiplies_the_predicted_counts_by_its_square():
    N = 16
    probe, _, patches, counts = _group_of_one_object(N)
    cfg = _tiny(model__intensity_scale_trainable=True, model__probe_trainable=True)
    model = PtychoPINN(cfg.model, N, probe * 3)  # a trained probe: 3x the data's
    with torch.no_grad():
        model.log_intensity_scale.fill_(math.log(2.0))
    expected = 36 * counts  # |F(2 * 3P * O)|^2 = 36 |F(P O)|^2
    torch.testing.assert_close(model.predicted_counts(probe, patches), expected, rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_allclose(model.probe_for_data(probe.numpy() * 0), 6 * probe.numpy(),
                               rtol=1e-6)  # inference ignores the data's probe here
    frozen = PtychoPINN(_tiny().model, N)
    np.testing.assert_array_equal(frozen.probe_for_data(probe.numpy()), probe.numpy())


# ----------------------------------------------------------------- detector mask, saturation

def _per_pixel(loss: str, predicted: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The losses' per-pixel terms, written out in numpy (Poisson: NLL minus its value at a
    perfect fit, eps 1e-6; MAE: amplitude difference)."""
    if loss == "mae":
        return np.abs(np.sqrt(predicted) - np.sqrt(counts))
    return (predicted - counts * np.log(predicted + 1e-6)
            - (counts - counts * np.log(counts + 1e-6)))


@pytest.mark.parametrize("loss", ["poisson", "mae"])
def test_loss_ignores_a_wrong_prediction_behind_the_beamstop(tiny, loss):
    from ptycho_torch.config import DetectorConfig
    from ptycho_torch.likelihood import LOSSES, ValidPixels
    from ptycho_torch.simulate import detector_mask
    _, data = tiny
    mask = detector_mask(data.N, DetectorConfig(beamstop_radius_px=2.5), np.random.default_rng(0))
    stop = mask != 0
    rng = np.random.default_rng(1)
    truth = rng.uniform(1.0, 50.0, (3, data.N, data.N))
    counts = np.where(stop, 0.0, rng.poisson(truth))  # masked pixels record 0 counts
    wrong = np.where(stop, 1e3, truth)  # the prediction is wrong only behind the beamstop
    t = {k: torch.from_numpy(v) for k, v in {"truth": truth, "counts": counts,
                                              "wrong": wrong}.items()}
    valid = ValidPixels.of(dataclasses.replace(data, mask=mask))(t["counts"])
    f = LOSSES[loss]
    assert f(t["wrong"], t["counts"], valid) == f(t["truth"], t["counts"], valid)
    assert f(t["wrong"], t["counts"]) > f(t["truth"], t["counts"])  # unmasked, it counts
    expected = np.where(stop, 0.0, _per_pixel(loss, truth, counts)).mean()  # masked count 0
    assert float(f(t["truth"], t["counts"], valid)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("loss", ["poisson", "mae"])
def test_saturated_pixels_have_no_influence_on_the_loss_or_its_gradient(loss):
    from ptycho_torch.likelihood import LOSSES, ValidPixels
    saturation = 40.0
    rng = np.random.default_rng(2)
    truth = rng.uniform(1.0, 60.0, (2, 16, 16))
    counts = np.minimum(rng.poisson(truth), saturation)  # the detector clips at 40
    clipped = counts >= saturation
    assert 10 < clipped.sum() < clipped.size // 2
    pixels = ValidPixels(saturation=saturation)
    c = torch.from_numpy(counts)
    predicted = torch.from_numpy(truth).requires_grad_()
    value = LOSSES[loss](predicted, c, pixels(c))
    value.backward()
    assert (predicted.grad[torch.from_numpy(clipped)] == 0).all()
    assert (predicted.grad[torch.from_numpy(~clipped)] != 0).all()
    elsewhere = torch.from_numpy(np.where(clipped, 5 * truth, truth))  # other guesses there
    assert LOSSES[loss](elsewhere, c, pixels(c)) == value
    expected = np.where(clipped, 0.0, _per_pixel(loss, truth, counts)).mean()
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_without_mask_or_saturation_the_loss_is_the_plain_mean_bitwise(tiny):
    from ptycho_torch.likelihood import ValidPixels, amplitude_mae_loss, poisson_loss
    _, data = tiny  # the default detector: an all-good mask, no saturation
    assert data.mask is not None and not data.mask.any() and data.saturation_counts == 0
    counts = torch.from_numpy(data.counts[:6])
    predicted = counts * 0.9 + 0.5
    assert ValidPixels.of(data)(counts) is None
    eps = 1e-6  # the formula before masks existed, float32 as in training
    before = ((predicted - counts * torch.log(predicted + eps))
              - (counts - counts * torch.log(counts + eps))).mean()
    assert torch.equal(poisson_loss(predicted, counts, ValidPixels.of(data)(counts)), before)
    before_mae = (predicted.clamp_min(0).sqrt() - counts.sqrt()).abs().mean()
    assert torch.equal(amplitude_mae_loss(predicted, counts, None), before_mae)


