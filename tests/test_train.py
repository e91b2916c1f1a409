"""Training (ptycho_torch/train.py): determinism, the train CLI, resume after a kill, NaN
stops, learning-rate schedules, early stopping, validation, clipping, mixed precision, the
valid-pixel mask. The network and its loss: tests/test_model.py."""

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

from conftest import TINY_EXPERIMENT as TINY
from conftest import tiny_config as _tiny
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import create_training_payload, payload_to_json, resolve_config
from ptycho_torch.cxi import write_cxi
from ptycho_torch.model import PtychoPINN, input_scale, physics_loss
from ptycho_torch.train import RESUME_FILE, train_model

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
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
