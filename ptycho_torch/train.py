"""Unsupervised PINN training on measured counts (no ground truth is used).

``python -m ptycho_torch.train --payload payload.json --data train.cxi
--out-dir results/<exp>/train --report-dir DIR`` writes ``model.pt``,
``history.csv`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ptycho_torch import cli, figures
from ptycho_torch.config import ExecutionConfig, ExperimentConfig
from ptycho_torch.config_factory import ConfigError, create_training_payload, payload_from_json
from ptycho_torch.data import PtychoData, read_cxi
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.model import PtychoPINN, input_scale, physics_loss, save_checkpoint
from ptycho_torch.reports import StepReport, write_atomic

LOG = logging.getLogger("ptycho_torch")


def setup_execution(ex: ExecutionConfig) -> torch.device:
    """Apply threads/determinism and pick the device (``auto``: CUDA if visible)."""
    if ex.threads:
        torch.set_num_threads(ex.threads)
    torch.use_deterministic_algorithms(ex.deterministic)
    if ex.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["execution.device: 'cuda' was asked for but no CUDA device is "
                           "visible (use 'auto' or 'cpu')"])
    return torch.device("cuda" if ex.device != "cpu" and torch.cuda.is_available() else "cpu")


def train_model(cfg: ExperimentConfig, data: PtychoData,
                device: torch.device) -> tuple[PtychoPINN, list[dict[str, float]], float]:
    """Train on ``data``; returns the model, per-epoch history and the input scale."""
    torch.manual_seed(cfg.seed)
    model = PtychoPINN(cfg.model, data.N).to(device)
    groups = group_indices(data.positions_px, cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                           cfg.seed)
    counts = torch.from_numpy(data.counts).to(device)  # [n, N, N]
    offsets = torch.from_numpy(relative_offsets(data.positions_px, groups)).to(device)
    groups = torch.from_numpy(groups).to(device)
    probe = torch.from_numpy(data.probe).to(device)
    scale = input_scale(counts)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(  # per epoch, down to lr / 20
        opt, T_max=max(cfg.training.epochs, 1), eta_min=cfg.training.learning_rate / 20)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs, n = cfg.training.batch_size, len(groups)
    history, t0 = [], time.perf_counter()
    for epoch in range(1, cfg.training.epochs + 1):
        order, total = torch.randperm(n, generator=gen), 0.0
        for start in range(0, n - bs + 1, bs):  # drop the ragged last batch
            idx = order[start:start + bs].to(device)
            loss = physics_loss(model, probe, counts[groups[idx]], offsets[idx], scale,
                                cfg.training.loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}: "
                                         "check the data for NaN/inf counts")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * bs
        sched.step()
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": total / (n - n % bs), "seconds": elapsed})
        LOG.info("epoch %d/%d loss %.5f (%.1f s)", epoch, cfg.training.epochs,
                 history[-1]["loss"], elapsed)
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
        model, history, scale = train_model(cfg, data, device)
        seconds = time.perf_counter() - t0
        save_checkpoint(products[0], model, cfg, {"input_scale_train": scale,
                                                  "epochs_run": len(history)})
        write_history(products[1], history)
        figures.loss_curve(products[2], history)
        figures.loss_curve(rep.directory / "loss.png", history)
        rep.record({"patterns": len(data.counts), "epochs": len(history),
                    "final_loss": history[-1]["loss"] if history else float("nan"),
                    "train_seconds": seconds,
                    "patterns_per_second": len(data.counts) * len(history) / max(seconds, 1e-9),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "device": str(device)})
        rep.verdict = f"trained {len(history)} epochs on {len(data.counts)} patterns in {seconds:.0f} s"

    return cli.run_step("train", args, products, body, load_config=load,
                        inputs=[args.payload, args.data])


if __name__ == "__main__":
    raise SystemExit(main())
