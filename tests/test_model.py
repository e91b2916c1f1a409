"""The network, its physics-informed loss and training: invariants, determinism, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.config_factory import create_training_payload, payload_to_json, resolve_config
from ptycho_torch.data import write_cxi
from ptycho_torch.model import PtychoPINN, merge_and_reextract, physics_loss
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.train import RESUME_FILE, train_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"experiment": "tiny", "data": {"N": 16, "object": {"train_size_px": 40, "test_size_px": 40},
                                       "probe": {"pupil_radius_px": 3.0}},
        "training": {"epochs": 2, "batch_size": 8}, "execution": {"threads": 1}}


@pytest.fixture(scope="module")
def tiny():
    cfg = resolve_config(TINY)
    return cfg, simulate_dataset(cfg.data, 40, (cfg.seed, 0))


def _smooth_object(size: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)
    lowpass = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) * 400)
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((2, size, size))) * lowpass)
    obj = (0.7 + 0.3 * np.tanh(field[0].real * 20)) * np.exp(1j * 8 * field[1].real)
    return torch.from_numpy(obj)


def test_gradient_reaches_every_parameter(tiny):
    cfg, data = tiny
    torch.manual_seed(0)
    model = PtychoPINN(cfg.model, data.N)
    counts = torch.from_numpy(data.counts[:8]).reshape(2, 4, data.N, data.N)
    offsets = torch.tensor([[[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]]] * 2)
    loss = physics_loss(model, torch.from_numpy(data.probe), counts, offsets, 30.0, "poisson")
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


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


def test_same_seed_gives_bitwise_identical_weights(tiny):
    cfg, data = tiny
    a, _, _ = train_model(cfg, data, torch.device("cpu"))
    b, _, _ = train_model(cfg, data, torch.device("cpu"))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    other = resolve_config({**TINY, "seed": 8})
    c, _, _ = train_model(other, data, torch.device("cpu"))
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(),
                                                         c.state_dict().values()))


def test_supervised_mode_learns_from_ground_truth(tiny):
    cfg, data = tiny
    sup = resolve_config({**TINY, "training": {**TINY["training"], "mode": "supervised",
                                               "epochs": 4}})
    _, history, _ = train_model(sup, data, torch.device("cpu"))
    assert history[-1]["loss"] < history[0]["loss"]


# ---------------------------------------------------------------- the train CLI

def _write_payload(work: Path, data, epochs: int) -> Path:
    """Training data and payload in ``work`` (the current directory: outputs stay inside)."""
    write_cxi(work / "train.cxi", data)
    exp = {**TINY, "training": {**TINY["training"], "epochs": epochs}}
    payload = create_training_payload("train.cxi", "out", experiment=exp)
    (work / "payload.json").write_text(payload_to_json(payload))
    return work / "payload.json"


def _train_cmd(out: str, report: str) -> list[str]:
    return [sys.executable, "-m", "ptycho_torch.train", "--payload", "payload.json",
            "--data", "train.cxi", "--out-dir", out, "--report-dir", report]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")


def test_killed_training_resumes_to_the_uninterrupted_weights(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, data = tiny
    _write_payload(tmp_path, data, epochs=12)
    full = subprocess.run(_train_cmd("full", "rep/full"), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(_train_cmd("cut", "rep/cut1"), cwd=tmp_path, env=_env(),
                            stderr=subprocess.PIPE, text=True)
    state, deadline = tmp_path / "cut" / RESUME_FILE, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and len(torch.load(state, weights_only=True)["history"]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "model.pt").exists()
    again = subprocess.run(_train_cmd("cut", "rep/cut2"), cwd=tmp_path, env=_env(),
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    assert not state.exists()
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_nan_in_the_data_stops_training_with_a_clear_message(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, data = tiny
    _write_payload(tmp_path, data, epochs=2)
    counts = data.counts.copy()
    counts[3, 5, 5] = np.nan
    write_cxi(tmp_path / "train.cxi", type(data)(**{**data.__dict__, "counts": counts}))
    out = subprocess.run(_train_cmd("out", "rep/train"), cwd=tmp_path, env=_env(),
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "/entry_1/instrument_1/detector_1/data" in out.stderr and "NaN" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "rep").exists()
