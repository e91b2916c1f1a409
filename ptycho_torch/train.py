"""Unsupervised PINN training on measured counts (no ground truth is used).

``python -m ptycho_torch.train --payload payload.json --data train.cxi
--out-dir results/<exp>/train --report-dir DIR`` writes ``model.pt``,
``history.csv`` and ``loss.png``.

Data-parallel on several processes (one per GPU, or gloo on CPU):
``torchrun --standalone --nproc_per_node=4 -m ptycho_torch.train ...`` (same
arguments), or a plain ``srun -n 4 python -m ptycho_torch.train ...``. Every
process draws the same global batch order and takes its equal share of each
global batch (``training.batch_size`` must be divisible by the number of
processes); DDP averages the gradients, so the run follows the one-process
loss trajectory. Only rank 0 writes the products, the resume state and the report.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist

from ptycho_torch import cli, figures, physics
from ptycho_torch.config import ExperimentConfig, TrainingConfig
from ptycho_torch.config_factory import (ConfigError, config_hash, create_training_payload,
                                         load_checkpoint, payload_from_json)
from ptycho_torch.distributed import (REPORT_GRACE_S, global_mean, launch_from_env,
                                      process_group, rank0_says, rank_and_world)
from ptycho_torch.cxi import read_cxi
from ptycho_torch.dataset import DataFileError, PtychoData
from ptycho_torch.grouping import (group_indices, grouping_problems, relative_offsets,
                                   split_positions)
from ptycho_torch.likelihood import ValidPixels
from ptycho_torch.model import PtychoPINN, autocast, input_scale, physics_loss, save_checkpoint
from ptycho_torch.evidence import StepReport
from ptycho_torch.execution import setup_execution
from ptycho_torch.files import write_atomic
from ptycho_torch.warmup import ITERATIVE, WarmedUp, apply_warmup, read_warmup, source_record

LOG = logging.getLogger("ptycho_torch")
RESUME_FILE = "resume_state.pt"  # training state after the last finished epoch; removed at the end
LAST_GOOD_FILE = "model_last_good.pt"  # in the evidence directory, after a divergence


def check_batch_size(batch_size: int, world_size: int) -> None:
    """Each of the processes takes an equal share of every global batch."""
    if batch_size % world_size:
        raise ConfigError([f"training.batch_size: {batch_size} is not divisible by the "
                           f"{world_size} training processes (each takes an equal share of "
                           "every batch)"])


class TrainingDiverged(cli.StepFailed):
    """The loss became NaN or infinite: training stopped.

    ``model`` holds the weights after the last finished epoch (``history[-1]``; the
    initial weights when it failed in the first epoch), on the CPU.
    """

    def __init__(self, message: str, model: PtychoPINN, history: list[dict[str, float]],
                 input_scale: float):
        super().__init__(message)
        self.model, self.history, self.input_scale = model, history, input_scale


@dataclass(frozen=True)
class Samples:
    """Groups of scan positions and what the loss compares them with, on the device."""
    groups: torch.Tensor  # [G, C] indices into the counts, column 0 = the anchor
    offsets: torch.Tensor  # [G, C, 2] px, member minus group centroid
    targets: torch.Tensor | None  # [G, C, N, N] ground-truth patches (supervised), else None

    def __len__(self) -> int:
        return len(self.groups)


def _targets(cfg: ExperimentConfig, data: PtychoData, groups: torch.Tensor) -> torch.Tensor | None:
    """Ground-truth patches ``[G, C, N, N]`` for supervised training (None for the PINN)."""
    if cfg.training.mode == "pinn":
        return None
    if data.ground_truth is None:
        raise ConfigError(["training.mode: 'supervised' needs a ground-truth object in the "
                           "training data (/entry_1/ptycho_torch/ground_truth_object)"])
    pos = torch.from_numpy(data.positions_px)[groups.cpu()].reshape(-1, 2)
    patches = physics.extract_patches(torch.from_numpy(data.ground_truth), pos, data.N)
    return patches.reshape(*groups.shape, data.N, data.N).to(groups.device)


def make_samples(cfg: ExperimentConfig, data: PtychoData,
                 device: torch.device) -> tuple[Samples, Samples | None]:
    """Training groups and, with ``training.validation_fraction``, validation groups.

    The held-out positions (:func:`grouping.split_positions`) are grouped among
    themselves, one group per position; the training groups among the others
    (``training.n_groups``, ``oversampling``). No pattern is in both.
    """
    positions, t = data.positions_px, cfg.training
    problems = grouping_problems(len(positions), cfg)
    if problems:
        raise ConfigError(problems)
    train_idx, val_idx = split_positions(len(positions), t.validation_fraction, cfg.seed)

    def samples(idx: np.ndarray, n_groups: int, oversampling: bool) -> Samples:
        local = group_indices(positions[idx], cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                              cfg.seed, n_groups, oversampling)
        groups = idx[local]
        offsets = torch.from_numpy(relative_offsets(positions, groups)).to(device)
        groups_t = torch.from_numpy(groups).to(device)
        return Samples(groups_t, offsets, _targets(cfg, data, groups_t))

    train = samples(train_idx, t.n_groups, t.oversampling)
    return train, samples(val_idx, 0, False) if len(val_idx) else None


def make_scheduler(opt: torch.optim.Optimizer, t: TrainingConfig):
    """The learning-rate schedule of ``training.lr_schedule``, stepped once per epoch.

    With ``E`` epochs, ``w`` warm-up epochs, ``lr`` and ``f = lr_final_fraction``, epoch
    ``e`` (from 0) runs at: ``lr (e + 1) / (w + 1)`` for ``e < w``, then ``lr`` (constant),
    ``lr f^((e - w) / (E - w))`` (exponential) or ``lr (f + (1 - f)(1 + cos(pi (e - w) /
    (E - w))) / 2)`` (cosine); plateau starts at ``lr`` and multiplies it by
    ``plateau_factor`` (not below ``lr f``) after more than ``plateau_patience`` epochs
    without a new best loss (``ReduceLROnPlateau``, stepped with the epoch's loss).
    """
    sched = torch.optim.lr_scheduler
    lr, w = t.learning_rate, t.warmup_epochs
    if t.lr_schedule == "plateau":
        return sched.ReduceLROnPlateau(opt, factor=t.plateau_factor, patience=t.plateau_patience,
                                       min_lr=lr * t.lr_final_fraction)
    span, f = max(t.epochs - w, 1), t.lr_final_fraction
    main = {"constant": lambda: sched.ConstantLR(opt, factor=1.0, total_iters=0),
            "exponential": lambda: sched.ExponentialLR(opt, gamma=f ** (1 / span)),
            "cosine": lambda: sched.CosineAnnealingLR(opt, T_max=span, eta_min=lr * f),
            }[t.lr_schedule]
    if not w:
        return main()
    warmup = sched.LinearLR(opt, start_factor=1 / (w + 1), end_factor=1.0, total_iters=w)
    return sched.SequentialLR(opt, [warmup, main()], milestones=[w])


def batch_loss(net: torch.nn.Module, samples: Samples, idx: torch.Tensor, counts: torch.Tensor,
               probe: torch.Tensor, scale: float, loss: str,
               pixels: ValidPixels) -> torch.Tensor:
    """Loss of the groups ``idx`` of ``samples``: the physics loss on their counts over the
    valid ``pixels`` (PINN), or the L1 distance to their ground-truth patches (supervised).
    ``counts [n, N, N]``."""
    x = counts[samples.groups[idx]]
    if samples.targets is None:
        return physics_loss(net, probe, x, samples.offsets[idx], scale, loss, pixels)
    return (net(x.sqrt() / scale, samples.offsets[idx]) - samples.targets[idx]).abs().mean()


@torch.no_grad()
def validation_loss(model: PtychoPINN, samples: Samples, loss_of: Callable[..., torch.Tensor],
                    batch_size: int, precision_ctx: Callable) -> float:
    """Mean loss over all groups of ``samples`` (batches of ``batch_size``), no gradients."""
    total = 0.0
    for start in range(0, len(samples), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(samples)),
                           device=samples.groups.device)
        with precision_ctx():
            total += loss_of(model, samples, idx).item() * len(idx)
    return total / len(samples)


@dataclass
class Progress:
    """What the loop carries from epoch to epoch besides the optimiser (part of the resume
    state): the history, and the best validation loss with its epoch and weights (early
    stopping)."""
    history: list[dict[str, float]]
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None


def _training_state(cfg: ExperimentConfig, model: PtychoPINN, opt: torch.optim.Optimizer,
                    sched, scaler: torch.amp.GradScaler, gen: torch.Generator,
                    progress: Progress) -> dict:
    return {"config_hash": config_hash(cfg), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "generator": gen.get_state(),
            "history": progress.history, "best_loss": progress.best_loss,
            "best_epoch": progress.best_epoch, "best_state": progress.best_state}


def _resume(path: Path | None, cfg: ExperimentConfig, model: PtychoPINN,
            opt: torch.optim.Optimizer, sched, scaler: torch.amp.GradScaler,
            gen: torch.Generator) -> Progress:
    """Restore the state saved after the last finished epoch, if it belongs to this config."""
    if path is None or not path.exists():
        return Progress([])
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config_hash") != config_hash(cfg):
        LOG.warning("ignoring %s: it belongs to another configuration", path)
        return Progress([])
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    gen.set_state(state["generator"])
    device = next(model.parameters()).device
    best = state["best_state"]
    LOG.info("resuming from %s after epoch %d", path, len(state["history"]))
    return Progress(state["history"], state["best_loss"], state["best_epoch"],
                    None if best is None else {k: v.to(device) for k, v in best.items()})


def _save_resume_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def _copy_state(model: PtychoPINN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _diverged(what: str, model: PtychoPINN, last_good: dict[str, torch.Tensor],
              history: list[dict[str, float]], scale: float) -> TrainingDiverged:
    """The error for a non-finite loss, with the model restored to its last good weights."""
    model.load_state_dict(last_good)
    good = f"after epoch {history[-1]['epoch']}" if history else "at the start (no epoch finished)"
    return TrainingDiverged(f"{what}: training stopped; the last good weights are those "
                            f"{good} (try a lower training.learning_rate, "
                            "training.grad_clip_norm > 0 or training.warmup_epochs > 0)",
                            model.cpu(), history, scale)


def _eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def train_model(cfg: ExperimentConfig, data: PtychoData, device: torch.device,
                resume_path: Path | None = None) -> tuple[PtychoPINN, list[dict[str, float]], float]:
    """Train on ``data``; returns the model, per-epoch history and the input scale.

    PINN mode uses only the counts; supervised mode (the PtychoNN-style
    baseline) fits the ground-truth patches with an L1 loss, same network. With
    ``resume_path`` the full training state (model, optimiser, scheduler, loss
    scaler, batch-order generator, history, early-stopping state) is saved after
    every epoch and a rerun continues from it, ending with the same weights as an
    uninterrupted run.

    Each epoch: Adam steps on full batches of ``training.batch_size`` groups in a
    seeded random order (gradients clipped to ``grad_clip_norm``), then the
    validation loss on the held-out groups, the learning-rate schedule, one
    progress line in the log. With ``early_stopping_patience`` training stops
    after that many epochs without a new best validation loss, and the returned
    model has the best epoch's weights. A NaN or infinite loss raises
    :class:`TrainingDiverged` naming the epoch and step.

    Inside a process group (:func:`process_group`) the model is wrapped in
    DistributedDataParallel: every rank draws the same batch order and computes
    the loss on its equal share of each global batch, DDP averages the gradients
    (= the gradient of the global-batch mean loss) and the history holds the
    global mean; every rank computes the whole validation loss (the same value),
    only rank 0 writes the resume state.
    """
    rank, world = rank_and_world()
    t = cfg.training
    if cfg.execution.precision == "float16" and device.type != "cuda":
        raise ConfigError([f"execution.precision: float16 needs a CUDA device (training runs on "
                           f"{device.type}; use bfloat16 there)"])
    torch.manual_seed(cfg.seed)
    probe = torch.from_numpy(data.probe).to(device)
    model = PtychoPINN(cfg.model, data.N, probe).to(device)
    if t.init_model:  # fine-tuning: start from these weights (a resume state below wins)
        model.load_state_dict(load_checkpoint(t.init_model)["state_dict"])
    counts = torch.from_numpy(data.counts).to(device)  # [n, N, N]
    pixels = ValidPixels.of(data).to(device)  # detector mask and saturation
    train_set, val_set = make_samples(cfg, data, device)
    scale = input_scale(counts)
    opt = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
    sched = make_scheduler(opt, t)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.execution.precision == "float16")
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = _resume(resume_path, cfg, model, opt, sched, scaler, gen)
    history = progress.history
    # DDP's constructor is a collective: no rank passes it before all have read the resume
    # state, so rank 0 cannot overwrite that file under another rank.
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    bs, n = t.batch_size, len(train_set)
    check_batch_size(bs, world)
    lo, hi = rank * (bs // world), (rank + 1) * (bs // world)  # this rank's share
    steps = n // bs  # the ragged last batch is dropped

    def loss_of(network: torch.nn.Module, samples: Samples, idx: torch.Tensor) -> torch.Tensor:
        return batch_loss(network, samples, idx, counts, probe, scale, t.loss, pixels)

    def precision() -> contextlib.AbstractContextManager:
        return autocast(device, cfg.execution.precision)

    last_good = _copy_state(model)
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    first_epoch, session_start = len(history) + 1, time.perf_counter()
    for epoch in range(first_epoch, t.epochs + 1):
        epoch_start = time.perf_counter()
        order, total = torch.randperm(n, generator=gen), 0.0
        for step in range(1, steps + 1):
            idx = order[(step - 1) * bs + lo:(step - 1) * bs + hi].to(device)
            with precision():
                loss = loss_of(net, train_set, idx)
            value = loss if world == 1 else global_mean(loss, world)  # every rank checks it
            if not torch.isfinite(value):
                raise _diverged(f"training loss became {value.item()} at epoch {epoch}, step "
                                f"{step} of {steps}", model, last_good, history, scale)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip_norm:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
            scaler.step(opt)
            scaler.update()
            total += value.item() * bs
        val = math.nan if val_set is None else validation_loss(model, val_set, loss_of, bs,
                                                                precision)
        if not (math.isfinite(val) or val_set is None) or \
                not all(torch.isfinite(p).all() for p in model.parameters()):
            raise _diverged(f"validation loss became {val} (or a weight non-finite) after "
                            f"epoch {epoch}", model, last_good, history, scale)
        lr = opt.param_groups[0]["lr"]  # the rate this epoch ran at
        train_loss = total / (steps * bs)
        if t.lr_schedule == "plateau":
            sched.step(train_loss if val_set is None else val)
        else:
            sched.step()
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": train_loss, "val_loss": val, "lr": lr,
                        "seconds": elapsed, "patterns": steps * bs})
        last_good = _copy_state(model)
        if val < progress.best_loss:
            progress.best_loss, progress.best_epoch = val, epoch
            progress.best_state = last_good if t.early_stopping_patience else None
        now = time.perf_counter()
        per_epoch = (now - session_start) / (epoch - first_epoch + 1)
        LOG.info("epoch %d/%d loss %.5f%s lr %.3g | %.0f patterns/s | %.1f s, ETA %s", epoch,
                 t.epochs, train_loss, "" if val_set is None else f" val_loss {val:.5f}", lr,
                 steps * bs / max(now - epoch_start, 1e-9), elapsed,
                 _eta(per_epoch * (t.epochs - epoch)))
        if resume_path is not None and rank == 0:
            _save_resume_state(resume_path, _training_state(cfg, model, opt, sched, scaler, gen,
                                                            progress))
        if t.early_stopping_patience and epoch - progress.best_epoch >= t.early_stopping_patience:
            LOG.info("early stopping after epoch %d: no better validation loss than %.5f "
                     "(epoch %d) for %d epochs", epoch, progress.best_loss,
                     progress.best_epoch, t.early_stopping_patience)
            break
        over = bool(t.max_minutes) and elapsed > 60 * t.max_minutes
        if world > 1 and t.max_minutes:  # clocks differ: all stop when rank 0 does
            over = rank0_says(over, device)
        if over:
            LOG.warning("stopping after %d epochs: training.max_minutes reached", epoch)
            break
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
        LOG.info("keeping the weights of epoch %d (best validation loss %.5f)",
                 progress.best_epoch, progress.best_loss)
    return model.cpu(), history, scale


def patterns_per_second(history: list[dict[str, float]]) -> float:
    """Training throughput: group anchors stepped through per second of training."""
    if not history:
        return 0.0
    return sum(h["patterns"] for h in history) / max(history[-1]["seconds"], 1e-9)


def trained_physics(model: PtychoPINN, probe: np.ndarray) -> dict[str, float]:
    """The learned physics, for the report: the intensity scale ``s`` and the photons per
    exposure ``sum |s P|^2`` of the probe the model predicts counts with (data's: ``probe``)."""
    out = {}
    if model.log_intensity_scale is not None:
        out["intensity_scale"] = float(model.log_intensity_scale.detach().exp())
    if model.probe is not None or model.log_intensity_scale is not None:
        out["model_probe_photons"] = float(np.square(np.abs(model.probe_for_data(probe))).sum())
    return out


def warmed_up_probe(cfg: ExperimentConfig, path: Path | None) -> WarmedUp | None:
    """The probe warm-up's file (``--probe``) when ``model.probe_source`` is iterative, else
    None; raises ConfigError when the one is given without the other."""
    iterative = cfg.model.probe_source == ITERATIVE
    if iterative != (path is not None):
        raise ConfigError([f"--probe: model.probe_source is {cfg.model.probe_source!r}: the "
                           "warm-up's probe file (the probe_warmup step's probe.npz) is "
                           + ("needed" if iterative else "not used")])
    if path is None:
        return None
    try:
        return read_warmup(path)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError([f"--probe: {path} is not a probe warm-up file ({exc})"]) from None


def probe_meta(cfg: ExperimentConfig, warmed: WarmedUp | None) -> dict:
    """The checkpoint's record of the probe: where it came from (``source_record``) and,
    after a warm-up, the warmed-up probe itself (``probe_warmup``, a complex64 tensor of the
    warm-up's probe shape: inference uses it), its record and, when it corrected them, the
    training scan's positions (``probe_warmup_positions``, float64 ``[n, 2]`` px: inference
    uses them on that scan, :func:`ptycho_torch.warmup.scan_positions`)."""
    meta = source_record(cfg, warmed)
    if warmed is not None:
        meta.update({"probe_warmup": torch.from_numpy(warmed.probe),
                     "probe_warmup_record": warmed.record})
        if warmed.positions_corrected:
            meta["probe_warmup_positions"] = torch.from_numpy(warmed.positions_px)
    return meta


def keep_last_good(exc: TrainingDiverged, cfg: ExperimentConfig, rep: StepReport) -> Path:
    """After a divergence: the last good model, its history and loss curve into the step's
    evidence directory (the declared products are removed, here and by Snakemake)."""
    path = rep.directory / LAST_GOOD_FILE
    save_checkpoint(path, exc.model, cfg, {"input_scale_train": exc.input_scale,
                                           "epochs_run": len(exc.history)})
    write_history(rep.directory / "history.csv", exc.history)
    figures.loss_curve(rep.directory / "loss.png", exc.history)
    rep.record({"diverged": str(exc), "last_good_epoch": len(exc.history),
                "last_good_model": str(path)})
    return path


HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "lr", "seconds")


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """``history.csv``: one row per epoch; ``val_loss`` is ``nan`` without a validation split,
    ``lr`` the learning rate the epoch ran at, ``seconds`` the wall time since the start."""
    fmt = {"epoch": "{:d}", "loss": "{:.8g}", "val_loss": "{:.8g}", "lr": "{:.8g}",
           "seconds": "{:.3f}"}
    lines = [",".join(HISTORY_COLUMNS)] + [",".join(fmt[c].format(h[c]) for c in HISTORY_COLUMNS)
                                           for h in history]
    write_atomic(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("train", __doc__)
    parser.add_argument("--payload", type=Path, required=True,
                        help="resolved training payload (JSON) written by the validate step")
    parser.add_argument("--data", type=Path, required=True, help="training data (.cxi)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes model.pt, history.csv, loss.png here")
    cli.add_set_arg(parser)
    cli.add_execution_args(parser)
    cli.add_report_arg(parser)
    parser.add_argument("--probe", type=Path, help="the probe warm-up's file "
                        "(model.probe_source: iterative): train with its probe and positions")
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in ("model.pt", "history.csv", "loss.png")]
    try:
        launch = launch_from_env()
    except ConfigError as exc:
        return cli.fail_config(exc.problems)

    def load(a: argparse.Namespace) -> ExperimentConfig:
        try:
            text = a.payload.read_text()
        except OSError as exc:
            raise ConfigError([f"--payload: cannot read {a.payload} ({exc.strerror})"]) from None
        cfg = create_training_payload(a.data, a.out_dir, cli.overrides_from_args(a),
                                      experiment=asdict(payload_from_json(text).config)).config
        if launch:  # before any process group is joined: every rank refuses alike
            check_batch_size(cfg.training.batch_size, launch.world_size)
        return cfg

    def body(cfg: ExperimentConfig, rep: StepReport | None) -> None:
        """Train (every rank); write products and evidence (rank 0: ``rep`` is not None)."""
        device = setup_execution(cfg.execution)
        given = read_cxi(args.data)  # before joining: a bad file stops every rank alike
        warmed = warmed_up_probe(cfg, args.probe)
        data = given if warmed is None else apply_warmup(given, warmed, positions=True)
        if rep is not None and cfg.training.init_model:  # its hash goes into the manifest
            rep.inputs.append(Path(cfg.training.init_model))
        resume = args.out_dir / RESUME_FILE
        try:
            with process_group(launch, device) as device:
                backend = dist.get_backend() if launch else "none"
                t0 = time.perf_counter()
                model, history, scale = train_model(cfg, data, device, resume)
                seconds = time.perf_counter() - t0
        except TrainingDiverged as exc:
            if rep is None:
                raise
            raise cli.StepFailed(f"{exc}. Last good model: {keep_last_good(exc, cfg, rep)}") \
                from None
        if rep is None:
            return  # ranks other than 0 write nothing
        probe_scale = data.attrs.get("probe_scale", {}).get("factor", 1.0)
        save_checkpoint(products[0], model, cfg, {"input_scale_train": scale,
                                                  "epochs_run": len(history),
                                                  "probe_scale_factor": probe_scale,
                                                  **probe_meta(cfg, warmed)})
        resume.unlink(missing_ok=True)
        write_history(products[1], history)
        figures.loss_curve(products[2], history)
        figures.loss_curve(rep.directory / "loss.png", history)
        rep.record({"mode": cfg.training.mode, "patterns": len(data.counts),
                    "epochs": len(history),
                    "final_loss": history[-1]["loss"] if history else float("nan"),
                    "final_val_loss": history[-1]["val_loss"] if history else float("nan"),
                    "train_seconds": seconds,
                    "patterns_per_second": patterns_per_second(history),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    **trained_physics(model, data.probe), "probe_scale_factor": probe_scale,
                    **source_record(cfg, warmed),
                    "device": str(device), "threads": torch.get_num_threads(),
                    "precision": cfg.execution.precision,
                    "world_size": launch.world_size if launch else 1,
                    "distributed": backend})
        if warmed is not None:
            figures.probes(rep.directory / "probe.png", given.probe, data.probe,
                           given.true_probe)
        rep.verdict = (f"trained ({cfg.training.mode}) {len(history)} epochs on "
                       f"{len(data.counts)} patterns in {seconds:.0f} s")

    if launch and launch.rank != 0:  # the same config checks and training, no evidence
        LOG.setLevel(logging.ERROR)  # rank 0 logs (and warns) for all
        try:
            body(load(args), None)
        except (ConfigError, DataFileError):
            time.sleep(REPORT_GRACE_S)
            return 2  # rank 0 prints the problems
        except cli.StepFailed:
            time.sleep(REPORT_GRACE_S)
            return 1  # rank 0 reports it
        return 0
    return cli.run_step("train", args, products, body, load_config=load,
                        inputs=[args.payload, args.data] + ([args.probe] if args.probe else []))


if __name__ == "__main__":
    raise SystemExit(main())
