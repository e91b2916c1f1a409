"""Unsupervised PINN training on measured counts (no ground truth is used).

``python -m ptycho_torch.train --payload payload.json --data train.cxi
--out-dir results/<exp>/train --report-dir DIR`` writes ``model.pt``,
``history.csv`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ptycho_torch import cli, figures, physics
from ptycho_torch.config import ExecutionConfig, ExperimentConfig
from ptycho_torch.config_factory import (ConfigError, config_hash, create_training_payload,
                                         payload_from_json)
from ptycho_torch.data import PtychoData, read_cxi
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.model import PtychoPINN, input_scale, physics_loss, save_checkpoint
from ptycho_torch.reports import StepReport, write_atomic

LOG = logging.getLogger("ptycho_torch")
RESUME_FILE = "resume_state.pt"  # training state after the last finished epoch; removed at the end


def setup_execution(ex: ExecutionConfig) -> torch.device:
    """Apply threads/determinism and pick the device (``auto``: CUDA if visible)."""
    if ex.threads:
        torch.set_num_threads(ex.threads)
    torch.use_deterministic_algorithms(ex.deterministic)
    if ex.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["execution.device: 'cuda' was asked for but no CUDA device is "
                           "visible (use 'auto' or 'cpu')"])
    return torch.device("cuda" if ex.device != "cpu" and torch.cuda.is_available() else "cpu")


def _targets(cfg: ExperimentConfig, data: PtychoData, groups: torch.Tensor) -> torch.Tensor | None:
    """Ground-truth patches ``[n, C, N, N]`` for supervised training (None for the PINN)."""
    if cfg.training.mode == "pinn":
        return None
    if data.ground_truth is None:
        raise ConfigError(["training.mode: 'supervised' needs a ground-truth object in the "
                           "training data (/entry_1/ptycho_torch/ground_truth_object)"])
    pos = torch.from_numpy(data.positions_px)[groups.cpu()].reshape(-1, 2)
    patches = physics.extract_patches(torch.from_numpy(data.ground_truth), pos, data.N)
    return patches.reshape(*groups.shape, data.N, data.N).to(groups.device)


def _resume(path: Path | None, cfg: ExperimentConfig, model: PtychoPINN,
            opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> list[dict[str, float]]:
    """Restore the state saved after the last finished epoch, if it belongs to this config."""
    if path is None or not path.exists():
        return []
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config_hash") != config_hash(cfg):
        LOG.warning("ignoring %s: it belongs to another configuration", path)
        return []
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    LOG.info("resuming from %s after epoch %d", path, len(state["history"]))
    return state["history"]


def _save_resume_state(path: Path, cfg: ExperimentConfig, model: PtychoPINN,
                       opt: torch.optim.Optimizer, sched, gen: torch.Generator,
                       history: list[dict[str, float]]) -> None:
    buf = io.BytesIO()
    torch.save({"config_hash": config_hash(cfg), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "history": history}, buf)
    write_atomic(path, buf.getvalue())


def train_model(cfg: ExperimentConfig, data: PtychoData, device: torch.device,
                resume_path: Path | None = None) -> tuple[PtychoPINN, list[dict[str, float]], float]:
    """Train on ``data``; returns the model, per-epoch history and the input scale.

    PINN mode uses only the counts; supervised mode (the PtychoNN-style
    baseline) fits the ground-truth patches with an L1 loss, same network. With
    ``resume_path`` the full training state is saved after every epoch and a
    rerun continues from it, ending with the same weights as an uninterrupted run.
    """
    torch.manual_seed(cfg.seed)
    model = PtychoPINN(cfg.model, data.N).to(device)
    groups = group_indices(data.positions_px, cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                           cfg.seed)
    counts = torch.from_numpy(data.counts).to(device)  # [n, N, N]
    offsets = torch.from_numpy(relative_offsets(data.positions_px, groups)).to(device)
    groups = torch.from_numpy(groups).to(device)
    targets = _targets(cfg, data, groups)
    probe = torch.from_numpy(data.probe).to(device)
    scale = input_scale(counts)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(  # per epoch, down to lr / 20
        opt, T_max=max(cfg.training.epochs, 1), eta_min=cfg.training.learning_rate / 20)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = _resume(resume_path, cfg, model, opt, sched, gen)
    bs, n = cfg.training.batch_size, len(groups)
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    for epoch in range(len(history) + 1, cfg.training.epochs + 1):
        order, total = torch.randperm(n, generator=gen), 0.0
        for start in range(0, n - bs + 1, bs):  # drop the ragged last batch
            idx = order[start:start + bs].to(device)
            if targets is None:
                loss = physics_loss(model, probe, counts[groups[idx]], offsets[idx], scale,
                                    cfg.training.loss)
            else:
                pred = model(counts[groups[idx]].sqrt() / scale, offsets[idx])
                loss = (pred - targets[idx]).abs().mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * bs
        sched.step()
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": total / (n - n % bs), "seconds": elapsed})
        LOG.info("epoch %d/%d loss %.5f (%.1f s)", epoch, cfg.training.epochs,
                 history[-1]["loss"], elapsed)
        if resume_path is not None:
            _save_resume_state(resume_path, cfg, model, opt, sched, gen, history)
        if cfg.training.max_minutes and elapsed > 60 * cfg.training.max_minutes:
            LOG.warning("stopping after %d epochs: training.max_minutes reached", epoch)
            break
    return model.cpu(), history, scale


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    lines = ["epoch,loss,seconds"] + [f"{h['epoch']},{h['loss']:.8g},{h['seconds']:.3f}"
                                      for h in history]
    write_atomic(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payload", type=Path, required=True,
                        help="resolved training payload (JSON) written by the validate step")
    parser.add_argument("--data", type=Path, required=True, help="training data (.cxi)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes model.pt, history.csv, loss.png here")
    cli.add_set_arg(parser)
    cli.add_execution_args(parser)
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in ("model.pt", "history.csv", "loss.png")]

    def load(a: argparse.Namespace) -> ExperimentConfig:
        try:
            text = a.payload.read_text()
        except OSError as exc:
            raise ConfigError([f"--payload: cannot read {a.payload} ({exc.strerror})"]) from None
        return create_training_payload(a.data, a.out_dir, cli.overrides_from_args(a),
                                       experiment=asdict(payload_from_json(text).config)).config

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        device = setup_execution(cfg.execution)
        data = read_cxi(args.data)
        t0 = time.perf_counter()
        resume = args.out_dir / RESUME_FILE
        model, history, scale = train_model(cfg, data, device, resume)
        seconds = time.perf_counter() - t0
        save_checkpoint(products[0], model, cfg, {"input_scale_train": scale,
                                                  "epochs_run": len(history)})
        resume.unlink(missing_ok=True)
        write_history(products[1], history)
        figures.loss_curve(products[2], history)
        figures.loss_curve(rep.directory / "loss.png", history)
        rep.record({"mode": cfg.training.mode, "patterns": len(data.counts),
                    "epochs": len(history),
                    "final_loss": history[-1]["loss"] if history else float("nan"),
                    "train_seconds": seconds,
                    "patterns_per_second": len(data.counts) * len(history) / max(seconds, 1e-9),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "device": str(device)})
        rep.verdict = (f"trained ({cfg.training.mode}) {len(history)} epochs on "
                       f"{len(data.counts)} patterns in {seconds:.0f} s")

    return cli.run_step("train", args, products, body, load_config=load,
                        inputs=[args.payload, args.data])


if __name__ == "__main__":
    raise SystemExit(main())
