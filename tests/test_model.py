"""The network, its physics-informed loss and training: invariants, determinism, resume."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import create_training_payload, payload_to_json, resolve_config
from ptycho_torch.cxi import write_cxi
from ptycho_torch.model import PtychoPINN, input_scale, merge_and_reextract, physics_loss
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.train import RESUME_FILE, train_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"experiment": "tiny", "data": {"N": 16, "object": {"train_size_px": 40, "test_size_px": 40},
                                       "probe": {"pupil_radius_px": 3.0}},
        "training": {"epochs": 2, "batch_size": 8}, "execution": {"threads": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


# ---------------------------------------------------------------- network sizes and options

def _tiny(**overrides) -> ExperimentConfig:
    """TINY with dotted-key overrides (``training__epochs=3`` for ``training.epochs``)."""
    return resolve_config(TINY, {k.replace("__", "."): v for k, v in overrides.items()})


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


def test_trainable_probe_and_scale_are_learned_saved_and_reloaded(tiny, tmp_path):
    from ptycho_torch.model import load_model, save_checkpoint
    _, data = tiny
    cfg = _tiny(model__probe_trainable=True, model__intensity_scale_trainable=True)
    model, _, _ = train_model(cfg, data, torch.device("cpu"))
    initial = torch.from_numpy(data.probe)
    learned = torch.view_as_complex(model.probe.detach()) * model.probe_unit
    assert (learned - initial).abs().max() > 1e-4 * initial.abs().max()  # it changed...
    assert (learned - initial).abs().max() < 0.1 * initial.abs().max()  # ...from the data's
    assert model.log_intensity_scale.item() != 0.0
    save_checkpoint(tmp_path / "model.pt", model, cfg, {})
    again = load_model(tmp_path / "model.pt", cfg)
    np.testing.assert_array_equal(again.probe_for_data(data.probe),
                                  model.probe_for_data(data.probe))
    frozen, _, _ = train_model(_tiny(), data, torch.device("cpu"))
    assert frozen.probe is None and "probe" not in frozen.state_dict()  # the data's, unchanged


# ---------------------------------------------------------------- the training loop

def _lrs(cfg: ExperimentConfig, losses: list[float] | None = None) -> list[float]:
    """The learning rate of each epoch under :func:`make_scheduler` (plateau: given losses)."""
    from ptycho_torch.train import make_scheduler
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.training.learning_rate)
    sched, out = make_scheduler(opt, cfg.training), []
    for e in range(cfg.training.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(*([losses[e]] if losses else []))
    return out


@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("exponential", 0), ("cosine", 0),
                                             ("cosine", 3), ("exponential", 2)])
def test_learning_rate_schedules_follow_their_formulas(schedule, warmup):
    E, lr, f = 10, 2e-3, 0.1
    cfg = _tiny(training__epochs=E, training__learning_rate=lr, training__lr_final_fraction=f,
                training__lr_schedule=schedule, training__warmup_epochs=warmup)
    span = E - warmup

    def expected(e: int) -> float:
        if e < warmup:
            return lr * (e + 1) / (warmup + 1)
        x = (e - warmup) / span
        return {"constant": lr, "exponential": lr * f ** x,
                "cosine": lr * (f + (1 - f) * (1 + math.cos(math.pi * x)) / 2)}[schedule]

    np.testing.assert_allclose(_lrs(cfg), [expected(e) for e in range(E)], rtol=1e-9)


def test_plateau_schedule_reduces_after_patience_and_stops_at_its_floor():
    cfg = _tiny(training__epochs=10, training__learning_rate=1.0, training__lr_schedule="plateau",
                training__plateau_patience=2, training__plateau_factor=0.5,
                training__lr_final_fraction=0.3)
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85]
    # 3 epochs (> patience 2) without a new best after epochs 2 and 5: halve, but not below 0.3
    assert _lrs(cfg, losses) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.3]


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_epoch(tiny, monkeypatch):
    from ptycho_torch import train
    _, data = tiny
    common = {"training__lr_schedule": "constant", "training__validation_fraction": 0.25}
    constructed = [5.0, 4.0, 3.0, 3.5, 3.2, 3.0, 2.0]  # best at epoch 3, then a plateau
    losses = iter(constructed)
    monkeypatch.setattr(train, "validation_loss", lambda *a, **k: next(losses))
    model, history, _ = train_model(_tiny(training__epochs=7, training__early_stopping_patience=3,
                                          **common), data, torch.device("cpu"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]  # 3 epochs after the best
    assert [h["val_loss"] for h in history] == constructed[:6]
    losses = iter(constructed)
    best, _, _ = train_model(_tiny(training__epochs=3, **common), data, torch.device("cpu"))
    for name, p in best.state_dict().items():  # the weights after epoch 3
        assert torch.equal(model.state_dict()[name], p), name


def test_validation_loss_is_the_loss_on_the_held_out_groups(tiny):
    from ptycho_torch.train import make_samples, validation_loss
    cfg, data = tiny
    cfg = _tiny(training__validation_fraction=0.25)
    torch.manual_seed(0)
    probe, counts = torch.from_numpy(data.probe), torch.from_numpy(data.counts)
    model = PtychoPINN(cfg.model, data.N)
    _, val = make_samples(cfg, data, torch.device("cpu"))
    scale = input_scale(counts)

    def loss_of(net, samples, idx):
        return physics_loss(net, probe, counts[samples.groups[idx]], samples.offsets[idx], scale,
                            "poisson")

    with torch.no_grad():  # one batch of all groups: the same mean as batches of 4
        whole = loss_of(model, val, torch.arange(len(val))).item()
    assert validation_loss(model, val, loss_of, 4, lambda: torch.no_grad()) == \
        pytest.approx(whole, rel=1e-5)


def test_gradient_clipping_bounds_the_norm_of_every_step(tiny, monkeypatch):
    _, data = tiny
    norms: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            grads = [p.grad for group in self.param_groups for p in group["params"]
                     if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads]))))
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    train_model(_tiny(training__epochs=1), data, torch.device("cpu"))
    free, norms[:] = list(norms), []
    clip = float(np.median(free)) / 2
    train_model(_tiny(training__epochs=1, training__grad_clip_norm=clip), data,
                torch.device("cpu"))
    assert max(free) > clip  # clipping has something to do...
    assert len(norms) == len(free) and max(norms) <= clip * (1 + 1e-5)  # ...and does it


def test_bfloat16_autocast_runs_the_network_in_bfloat16_and_trains(tiny, monkeypatch):
    from ptycho_torch import train
    from ptycho_torch.config_factory import ConfigError
    _, data = tiny
    seen: list[torch.dtype] = []

    class Recording(PtychoPINN):
        def forward(self, amplitudes, offsets):
            seen.append(self.generator.encoder(amplitudes).dtype)
            out = super().forward(amplitudes, offsets)
            seen.append(out.dtype)
            return out

    monkeypatch.setattr(train, "PtychoPINN", Recording)
    cfg = _tiny(training__epochs=3, execution__precision="bfloat16")
    model, history, _ = train_model(cfg, data, torch.device("cpu"))
    assert set(seen[0::2]) == {torch.bfloat16} and set(seen[1::2]) == {torch.complex64}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history[-1]["loss"] < history[0]["loss"]
    with pytest.raises(ConfigError, match="execution.precision: float16 needs a CUDA"):
        train_model(_tiny(execution__precision="float16"), data, torch.device("cpu"))


@pytest.mark.parametrize("options", [
    {"training__lr_schedule": "plateau", "training__plateau_patience": 0,
     "training__validation_fraction": 0.25, "training__early_stopping_patience": 3,
     "training__grad_clip_norm": 50.0},
    {"training__warmup_epochs": 2, "training__n_groups": 48, "training__oversampling": True,
     "model__probe_trainable": True, "model__intensity_scale_trainable": True}])
def test_interrupted_training_resumes_exactly_with_every_option(tiny, tmp_path, monkeypatch,
                                                                 options):
    """The resume state after epoch 3 (as a SIGKILL right after writing it would leave it)
    continues to the uninterrupted run's weights and history."""
    from ptycho_torch import train
    _, data = tiny
    cfg = _tiny(training__epochs=6, **options)
    full, full_history, _ = train_model(cfg, data, torch.device("cpu"))
    save = train._save_resume_state

    class Killed(Exception):
        pass

    def save_then_die(path, state):
        save(path, state)
        if len(state["history"]) == 3:
            raise Killed

    monkeypatch.setattr(train, "_save_resume_state", save_then_die)
    with pytest.raises(Killed):
        train_model(cfg, data, torch.device("cpu"), tmp_path / RESUME_FILE)
    resumed, history, _ = train_model(cfg, data, torch.device("cpu"), tmp_path / RESUME_FILE)
    def without_time(h: list[dict]) -> str:  # repr: exact, and nan == nan
        return repr([{k: v for k, v in row.items() if k != "seconds"} for row in h])

    assert len(history) > 3 and without_time(history) == without_time(full_history)
    for name, p in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], p), name


def test_nan_loss_stops_training_and_keeps_the_last_good_model(tiny, tmp_path, monkeypatch):
    """A weight turned infinite at epoch 3, step 2: exit 1, a message naming both, the model
    after epoch 2 kept in the evidence, no products."""
    from ptycho_torch import train
    from ptycho_torch.config_factory import load_checkpoint
    monkeypatch.chdir(tmp_path)
    _, data = tiny
    exp = {**TINY, "training": {**TINY["training"], "epochs": 4, "lr_schedule": "constant"}}
    write_cxi(tmp_path / "train.cxi", data)
    (tmp_path / "payload.json").write_text(payload_to_json(
        create_training_payload("train.cxi", "out", experiment=exp)))
    steps = len(data.counts) // 8  # one group per position, batches of 8

    class Diverging(PtychoPINN):
        calls = 0

        def forward(self, amplitudes, offsets):
            Diverging.calls += 1
            if Diverging.calls == 2 * steps + 2:
                with torch.no_grad():
                    self.generator.encoder[0][0].weight.view(-1)[0] = math.inf
            return super().forward(amplitudes, offsets)

    monkeypatch.setattr(train, "PtychoPINN", Diverging)
    status = train.main(["--payload", "payload.json", "--data", "train.cxi", "--out-dir", "out",
                         "--report-dir", "rep/train"])
    assert status == 1
    log = (tmp_path / "rep/train/train.log").read_text()
    assert f"at epoch 3, step 2 of {steps}" in log and "after epoch 2" in log
    assert "Traceback" not in log and "FAILED" in (tmp_path / "rep/train/summary.md").read_text()
    assert not any((tmp_path / "out" / name).exists()
                   for name in ("model.pt", "history.csv", "loss.png"))
    kept = load_checkpoint(tmp_path / "rep/train/model_last_good.pt")
    assert kept["meta"]["epochs_run"] == 2
    monkeypatch.setattr(train, "PtychoPINN", PtychoPINN)
    clean, _, _ = train_model(resolve_config(exp, {"training.epochs": 2}), data,
                              torch.device("cpu"))
    for name, p in clean.state_dict().items():
        assert torch.equal(kept["state_dict"][name], p), name


def test_option_combinations_that_cannot_work_are_refused_by_key():
    from ptycho_torch.config_factory import ConfigError
    cases = {"model.probe_big": {"model.probe_big": True},
             "training.early_stopping_patience": {"training.early_stopping_patience": 2},
             "training.warmup_epochs": {"training.warmup_epochs": 1,
                                        "training.lr_schedule": "plateau"},
             "training.oversampling": {"training.oversampling": True},
             "training.n_groups": {"training.n_groups": 4},
             "training.lr_final_fraction": {"training.lr_schedule": "exponential",
                                            "training.lr_final_fraction": 0.0}}
    for key, overrides in cases.items():
        with pytest.raises(ConfigError) as err:
            resolve_config(TINY, overrides)
        assert [p.split(":")[0] for p in err.value.problems] == [key], overrides


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


def test_training_fits_only_the_valid_pixels_of_each_pattern(tiny, monkeypatch):
    """The per-batch mask that reaches the loss: the detector mask and, per pattern, the
    pixels at the saturation level."""
    from ptycho_torch import likelihood
    from ptycho_torch.config import DetectorConfig
    from ptycho_torch.simulate import apply_detector, detector_mask
    cfg, data = tiny
    mask = detector_mask(data.N, DetectorConfig(beamstop_radius_px=1.5, bad_pixel_fraction=0.05),
                         np.random.default_rng(3))
    saturation = float(np.quantile(data.counts[:, mask == 0], 0.99))
    counts = apply_detector(data.counts.copy(), mask, saturation)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class FirstBatch(Exception):
        pass

    def recording(predicted, measured, valid=None):
        seen.append((measured, valid))
        raise FirstBatch  # one batch says it all

    monkeypatch.setitem(likelihood.LOSSES, "poisson", recording)
    with pytest.raises(FirstBatch):
        train_model(_tiny(), dataclasses.replace(data, counts=counts, mask=mask,
                                                 saturation_counts=saturation),
                    torch.device("cpu"))
    [(measured, valid)] = seen
    assert (measured >= saturation).any()  # the batch holds saturated pixels
    expected = torch.from_numpy(mask == 0) & (measured < saturation)
    assert torch.equal(valid.expand_as(measured), expected)
