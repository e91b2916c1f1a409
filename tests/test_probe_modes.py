"""Probe modes (partial coherence): a probe ``[K, N, N]`` whose modes' intensities add.

One mode stays ``[N, N]`` everywhere and gives today's numbers bit for bit; these tests pin
the sum over modes in the physics, the simulator's modes, the files, the PINN's loss, the
stitching's calibration, the probe error and the errors for bad mode settings.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import edit_h5, small_data_config, synthetic_scan
from ptycho_torch import metrics, physics, quality, simulate
from ptycho_torch.stitch import stitch
from ptycho_torch.config import InferenceConfig, ModelConfig, ProbeConfig
from ptycho_torch.config_factory import ConfigError, resolve_config
from ptycho_torch.cxi import PROBE, read_cxi, write_cxi
from ptycho_torch.data import check_data_file
from ptycho_torch.dataset import DataFileError
from ptycho_torch.model import PtychoPINN, physics_loss
from ptycho_torch.npz import read_npz, write_npz


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.complex128, generator=g)


def _modes_scan(K: int = 3, N: int = 8):
    """:func:`synthetic_scan` with ``K`` random probe modes (also its true probe)."""
    d = synthetic_scan(N=N)
    modes = _random((K, N, N), 1).numpy().astype(np.complex64)
    return replace(d, probe=modes, true_probe=modes * 1.5)


# ----------------------------------------------------------------- physics

def test_mode_intensity_is_the_sum_of_the_modes_intensities():
    probe, patches = _random((3, 16, 16), 0), _random((2, 5, 16, 16), 1)
    summed = physics.forward_intensity(probe, patches)
    one_by_one = sum(physics.forward_intensity(probe[k], patches) for k in range(3))
    assert summed.shape == (2, 5, 16, 16)
    torch.testing.assert_close(summed, one_by_one, rtol=1e-12, atol=1e-12)


def test_one_mode_is_bitwise_the_pre_change_formula():
    probe, patches = _random((16, 16), 2).to(torch.complex64), _random((7, 16, 16), 3)
    patches = patches.to(torch.complex64)
    before = torch.fft.fftshift(torch.fft.fft2(probe * patches, norm="ortho"),
                                dim=(-2, -1)).abs().square()
    assert torch.equal(physics.forward_intensity(probe, patches), before)
    assert torch.equal(physics.forward_intensity(probe[None], patches), before)  # [1, N, N]


def test_parseval_holds_per_mode_and_for_the_sum():
    probe, patch = _random((3, 16, 16), 4), _random((16, 16), 5)
    for k in range(3):
        exit_wave = probe[k] * patch
        assert float(physics.forward_intensity(probe[k], patch).sum()) == pytest.approx(
            float(exit_wave.abs().square().sum()), rel=1e-12)
    total = (probe * patch).abs().square().sum()
    assert float(physics.forward_intensity(probe, patch).sum()) == pytest.approx(
        float(total), rel=1e-12)


def test_probe_modes_helpers():
    p = np.ones((4, 4), np.complex64)
    assert physics.probe_modes(p).shape == (1, 4, 4)
    assert physics.single_mode(p[None]).shape == (4, 4)
    assert physics.probe_intensity(np.stack([p, 2 * p])).tolist() == (5 * np.ones((4, 4))).tolist()
    with pytest.raises(ValueError, match="K modes"):
        physics.probe_modes(np.ones((1, 2, 4, 4)))


# ----------------------------------------------------------------- simulator

def test_simulator_gives_three_orthogonal_modes_with_the_power_split():
    cfg = small_data_config()
    cfg = replace(cfg, probe=replace(cfg.probe, modes=3, mode_power_ratio=0.3))
    d = simulate.simulate_dataset(cfg, 40, (0, 0))
    one = simulate.simulate_dataset(small_data_config(), 40, (0, 0))
    assert d.probe.shape == (3, 16, 16) and d.true_probe.shape == (3, 16, 16)
    m = d.probe.reshape(3, -1).astype(np.complex128)
    gram = m.conj() @ m.T
    power = np.diag(gram).real
    np.testing.assert_allclose(power / power.sum(), physics.mode_powers(3, 0.3), atol=1e-6)
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-5 * power.sum()
    # the total power is the photon scale one mode has: the mean counts per pattern
    assert d.counts.sum((1, 2)).mean() == pytest.approx(cfg.nphotons, rel=0.02)
    assert power.sum() == pytest.approx(float(np.sum(np.abs(one.probe) ** 2)), rel=0.1)
    assert d.attrs["probe_mode_powers"] == pytest.approx(physics.mode_powers(3, 0.3).tolist(),
                                                         abs=1e-9)


def test_simulated_counts_of_one_mode_match_the_pre_change_loop():
    rng = np.random.default_rng(0)
    obj = np.exp(1j * rng.uniform(-1, 1, (40, 40)))
    probe = _random((16, 16), 6).numpy()
    positions = rng.uniform(10, 28, (9, 2))
    sign = 1 - 2 * (np.add.outer(np.arange(16), np.arange(16)) % 2)
    probe_cb = torch.from_numpy((probe * sign / 16).astype(np.complex64))
    before = torch.empty((9, 16, 16))
    field = torch.from_numpy(obj.astype(np.complex64))
    for members, patches in simulate.iter_fourier_patches(field, positions, 16):
        far = torch.fft.fft2(patches.mul_(probe_cb))
        before[members] = torch.mul(far.real, far.real).addcmul_(far.imag, far.imag)
    assert np.array_equal(simulate.expected_intensity(obj, probe, positions), before.numpy())
    three = np.stack([probe, 0.5 * probe, 0.25 * probe])  # intensities 1 + 1/4 + 1/16
    np.testing.assert_allclose(simulate.expected_intensity(obj, three, positions),
                               before.numpy() * 1.3125, rtol=1e-5, atol=1e-3)


def test_bad_mode_settings_name_the_key():
    with pytest.raises(ConfigError, match="data.probe.modes"):
        resolve_config(None, {"data.probe.modes": 0})
    with pytest.raises(ConfigError, match="data.probe.mode_power_ratio"):
        resolve_config(None, {"data.probe.mode_power_ratio": 1.5})
    with pytest.raises(ConfigError, match="iterative.probe_modes"):
        resolve_config(None, {"iterative.probe_modes": -1})


def test_a_probe_file_with_another_number_of_modes_is_refused(tmp_path):
    np.save(tmp_path / "modes.npy", _random((2, 16, 16), 7).numpy())
    cfg = small_data_config()
    cfg = replace(cfg, probe=ProbeConfig(kind="file", file=str(tmp_path / "modes.npy"), modes=3))
    with pytest.raises(ConfigError, match="data.probe.modes: 3, but .*modes.npy holds 2"):
        simulate.make_probe(cfg, 1e-8)
    np.save(tmp_path / "wrong.npy", _random((2, 12, 12), 7).numpy())
    with pytest.raises(DataFileError, match=r"wrong.npy.*\(K, 16, 16\) modes"):
        simulate.load_probe(tmp_path / "wrong.npy", 16)


# ----------------------------------------------------------------- files

def test_cxi_round_trip_of_three_modes_and_one_mode_stays_2d(tmp_path):
    d = _modes_scan()
    write_cxi(tmp_path / "m.cxi", d)
    back = read_cxi(tmp_path / "m.cxi")
    assert np.array_equal(back.probe, d.probe) and np.array_equal(back.true_probe, d.true_probe)
    one = replace(d, probe=d.probe[:1], true_probe=None)  # [1, N, N] is stored as [N, N]
    write_cxi(tmp_path / "one.cxi", one)
    edit_h5(tmp_path / "one.cxi", lambda f: _assert_shape(f[PROBE], (8, 8)))
    assert read_cxi(tmp_path / "one.cxi").probe.shape == (8, 8)


def _assert_shape(ds, shape) -> None:
    assert ds.shape == shape


def test_npz_round_trip_of_three_modes(tmp_path):
    d = _modes_scan()
    write_npz(tmp_path / "m.npz", d)
    back = read_npz(tmp_path / "m.npz")
    assert np.array_equal(back.probe, d.probe) and np.array_equal(back.counts, d.counts)
    write_npz(tmp_path / "one.npz", replace(d, probe=d.probe[0]))
    with np.load(tmp_path / "one.npz") as z:
        assert z["probeGuess"].shape == (8, 8)  # PtychoPINN's 2-D probe


def test_modes_of_the_wrong_size_are_refused_and_nothing_is_written(tmp_path):
    d = replace(_modes_scan(), probe=_random((3, 6, 6), 8).numpy().astype(np.complex64))
    with pytest.raises(DataFileError, match=r"bad.cxi: .*illumination has shape \(3, 6, 6\)"):
        write_cxi(tmp_path / "bad.cxi", d)
    with pytest.raises(DataFileError, match=r"bad.npz: probeGuess has shape \(3, 6, 6\)"):
        write_npz(tmp_path / "bad.npz", d)
    assert not list(tmp_path.iterdir())
    write_cxi(tmp_path / "m.cxi", _modes_scan())

    def shrink(f) -> None:
        del f[PROBE]
        f[PROBE] = np.ones((3, 6, 6), np.complex64)
    edit_h5(tmp_path / "m.cxi", shrink)
    with pytest.raises(DataFileError, match=r"m.cxi: .*illumination has shape \(3, 6, 6\)"):
        read_cxi(tmp_path / "m.cxi")
    assert any("illumination has shape (3, 6, 6)" in p
               for p in check_data_file(tmp_path / "m.cxi", None))


# ----------------------------------------------------------------- PINN, stitching, metrics

def test_pinn_loss_with_three_modes_runs_and_backpropagates():
    torch.manual_seed(0)
    N, K = 16, 3
    probe = physics.hermite_modes(physics.gaussian_probe(N, 5.0, 0.0, 1e-10, 1e-8),
                                  physics.mode_powers(K, 0.5)).to(torch.complex64) * 30
    model = PtychoPINN(ModelConfig(probe_trainable=True, intensity_scale_trainable=True), N, probe)
    assert model.probe.shape == (K, N, N, 2)
    counts = torch.poisson(torch.full((2, 4, N, N), 20.0))
    offsets = torch.tensor([[[-2.0, -2.0], [-2, 2], [2, -2], [2, 2]]] * 2)
    loss = physics_loss(model, probe, counts, offsets, 4.0, "poisson")
    loss.backward()
    assert torch.isfinite(loss)
    assert float(model.probe.grad[1:].abs().sum()) > 0  # the further modes learn too
    patches = model(counts.sqrt() / 4.0, offsets)
    direct = sum(physics.forward_intensity(model.effective_probe(probe)[k], patches)
                 for k in range(K))
    torch.testing.assert_close(model.predicted_counts(probe, patches), direct)


def test_calibration_and_r_factor_with_modes():
    rng = np.random.default_rng(0)
    N, shape = 16, (44, 44)
    pos = np.stack(np.meshgrid(np.arange(12, 30, 4.3), np.arange(12, 30, 4.1)), -1).reshape(-1, 2)
    obj = np.exp(1j * rng.normal(size=shape)) * (0.8 + 0.2 * rng.random(shape))
    probe = physics.hermite_modes(physics.gaussian_probe(N, 5.0, 0.0, 1e-10, 1e-8),
                                  physics.mode_powers(3, 0.5)).numpy() * 30
    counts = quality.predicted_counts(obj, probe, pos)
    r = quality.r_factor(counts, counts, np.ones(counts.shape, bool))
    assert r["r_factor"] == 0.0
    # one mode given as [1, N, N] and as [N, N]: the same calibration
    patches = torch.from_numpy(np.stack([obj[:N, :N]] * len(pos))).to(torch.complex64)
    one = quality.predicted_counts(obj, probe[0], pos)
    records = [stitch(
        patches, pos, shape, p, InferenceConfig(), one)[1] for p in (probe[0], probe[:1])]
    assert records[0]["calibration_loss_first_last"] == records[1]["calibration_loss_first_last"]
    _, rec3 = stitch(
        patches, pos, shape, probe, InferenceConfig(), counts)
    first, last = rec3["calibration_loss_first_last"]
    assert last < first


def test_probe_error_compares_mode_sets_by_their_mutual_coherence():
    modes = _random((3, 8, 8), 9).numpy()
    q, _ = np.linalg.qr(_random((3, 3), 10).numpy())  # a unitary mixing of the modes
    mixed = np.einsum("jk,kuv->juv", q, modes) * 2.0 * np.exp(0.3j)
    assert metrics.probe_error(mixed, modes) == pytest.approx(0.0, abs=1e-6)  # sqrt of round-off
    assert metrics.probe_error(modes[:1], modes) > 0.3
    one = modes[0]
    assert metrics.probe_error(one * 1j, one) == pytest.approx(0.0, abs=1e-12)


def test_products_carry_the_modes(tmp_path):
    import h5py
    from ptycho_torch import figures
    from ptycho_torch.products import write_ptychodus, write_reconstruction_npz
    d = _modes_scan()
    obj = d.ground_truth
    write_ptychodus(tmp_path / "r.h5", obj, d, [], "modes")
    write_reconstruction_npz(tmp_path / "r.npz", obj, d)
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["probe"].shape == (1, 3, 8, 8)
    with np.load(tmp_path / "r.npz") as z:
        assert np.array_equal(z["probe"], d.probe)
    write_ptychodus(tmp_path / "one.h5", obj, replace(d, probe=d.probe[0]), [], "one")
    with h5py.File(tmp_path / "one.h5") as f:
        assert f["probe"].shape == (1, 1, 8, 8)
    figures.probes(tmp_path / "probe.png", d.probe[0], d.probe, d.true_probe)
    assert (tmp_path / "probe.png").stat().st_size > 0
