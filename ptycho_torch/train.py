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
import io
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import distributed as dist

from ptycho_torch import cli, figures, physics
from ptycho_torch.config import ExecutionConfig, ExperimentConfig
from ptycho_torch.config_factory import (ConfigError, config_hash, create_training_payload,
                                         payload_from_json)
from ptycho_torch.data import DataFileError, PtychoData, read_cxi
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


@dataclass(frozen=True)
class Launch:
    """This process's place in a multi-process (data-parallel) launch."""
    rank: int
    local_rank: int
    world_size: int
    launcher: str  # "torchrun" (its environment variables) or "srun"


def launch_from_env(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The multi-process launch this process is part of; None for a single process.

    torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; a plain ``srun -n N`` step sets ``SLURM_STEP_NUM_TASKS``,
    ``SLURM_PROCID`` and ``SLURM_LOCALID`` (the step's, not the allocation's
    ``SLURM_NTASKS``: a batch script is not one of N ranks). torchrun's variables
    win, so torchrun inside a one-task srun step (how the SLURM executor runs a
    job) is a torchrun launch.
    """
    try:
        if "WORLD_SIZE" in environ:
            world, rank = int(environ["WORLD_SIZE"]), int(environ.get("RANK", "0"))
            local, launcher = int(environ.get("LOCAL_RANK", str(rank))), "torchrun"
        elif int(environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
            world, rank = int(environ["SLURM_STEP_NUM_TASKS"]), int(environ["SLURM_PROCID"])
            local, launcher = int(environ.get("SLURM_LOCALID", "0")), "srun"
        else:
            return None
    except (KeyError, ValueError) as exc:
        raise ConfigError([f"distributed launch: unusable launcher environment "
                           f"({exc!r})"]) from None
    if world > 1 and not 0 <= rank < world:
        raise ConfigError([f"distributed launch: rank {rank} outside world size {world}"])
    return Launch(rank, local, world, launcher) if world > 1 else None


def _srun_rendezvous(environ: Mapping[str, str]) -> dict[str, str]:
    """``MASTER_ADDR``/``MASTER_PORT`` for a plain srun step, unless set: the step's first
    node, and a port derived from the job id (the same in every rank)."""
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "localhost")
    if "[" in nodes or "," in nodes:  # a compressed list: let SLURM expand it
        nodes = subprocess.run(["scontrol", "show", "hostnames", nodes], check=True,
                               capture_output=True, text=True).stdout.split()[0]
    port = 29500 + int(environ.get("SLURM_JOB_ID", "0")) % 10000
    return {"MASTER_ADDR": environ.get("MASTER_ADDR", nodes),
            "MASTER_PORT": environ.get("MASTER_PORT", str(port))}


@contextmanager
def process_group(launch: Launch | None, device: torch.device) -> Iterator[torch.device]:
    """Join the launch's process group for the duration (gloo on CPU, NCCL on CUDA, chosen
    from the resolved device) and yield this rank's device (``cuda:LOCAL_RANK``).
    A single process (``launch`` None) gets ``device`` back and no process group."""
    if launch is None:
        yield device
        return
    if device.type == "cuda":
        # GPU LOCAL_RANK of the node's; or the only one a rank sees (srun --gpus-per-task=1)
        visible = torch.cuda.device_count()
        if launch.local_rank >= visible > 1:
            raise ConfigError([f"execution.device: one CUDA device per process is needed, but "
                               f"local rank {launch.local_rank} sees only {visible}"])
        device = torch.device("cuda", launch.local_rank if visible > 1 else 0)
        torch.cuda.set_device(device)
    if launch.launcher == "srun":
        os.environ.update(_srun_rendezvous(os.environ))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=launch.rank, world_size=launch.world_size,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def check_batch_size(batch_size: int, world_size: int) -> None:
    """Each of the processes takes an equal share of every global batch."""
    if batch_size % world_size:
        raise ConfigError([f"training.batch_size: {batch_size} is not divisible by the "
                           f"{world_size} training processes (each takes an equal share of "
                           "every batch)"])


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _global_mean(loss: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of every rank's (detached) loss: the loss of the global batch."""
    value = loss.detach().clone()
    dist.all_reduce(value)
    return value / world


def _rank0_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, for all ranks (a wall-clock limit must stop them together)."""
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


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

    Inside a process group (:func:`process_group`) the model is wrapped in
    DistributedDataParallel: every rank draws the same batch order and computes
    the loss on its equal share of each global batch, DDP averages the gradients
    (= the gradient of the global-batch mean loss) and the history holds the
    global mean; only rank 0 writes the resume state.
    """
    rank, world = _rank_and_world()
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
    # DDP's constructor is a collective: no rank passes it before all have read the resume
    # state, so rank 0 cannot overwrite that file under another rank.
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    bs, n = cfg.training.batch_size, len(groups)
    check_batch_size(bs, world)
    lo, hi = rank * (bs // world), (rank + 1) * (bs // world)  # this rank's share
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    for epoch in range(len(history) + 1, cfg.training.epochs + 1):
        order, total = torch.randperm(n, generator=gen), 0.0
        for start in range(0, n - bs + 1, bs):  # drop the ragged last batch
            idx = order[start + lo:start + hi].to(device)
            if targets is None:
                loss = physics_loss(net, probe, counts[groups[idx]], offsets[idx], scale,
                                    cfg.training.loss)
            else:
                pred = net(counts[groups[idx]].sqrt() / scale, offsets[idx])
                loss = (pred - targets[idx]).abs().mean()
            value = loss if world == 1 else _global_mean(loss, world)  # every rank checks it
            if not torch.isfinite(value):
                raise FloatingPointError(f"training loss became {value.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += value.item() * bs
        sched.step()
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": total / (n - n % bs), "seconds": elapsed})
        LOG.info("epoch %d/%d loss %.5f (%.1f s)", epoch, cfg.training.epochs,
                 history[-1]["loss"], elapsed)
        if resume_path is not None and rank == 0:
            _save_resume_state(resume_path, cfg, model, opt, sched, gen, history)
        over = bool(cfg.training.max_minutes) and elapsed > 60 * cfg.training.max_minutes
        if world > 1 and cfg.training.max_minutes:  # clocks differ: all stop when rank 0 does
            over = _rank0_says(over, device)
        if over:
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
        data = read_cxi(args.data)  # before joining: a bad file stops every rank alike
        resume = args.out_dir / RESUME_FILE
        with process_group(launch, device) as device:
            backend = dist.get_backend() if launch else "none"
            t0 = time.perf_counter()
            model, history, scale = train_model(cfg, data, device, resume)
            seconds = time.perf_counter() - t0
        if rep is None:
            return  # ranks other than 0 write nothing
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
                    "device": str(device),
                    "world_size": launch.world_size if launch else 1,
                    "distributed": backend})
        rep.verdict = (f"trained ({cfg.training.mode}) {len(history)} epochs on "
                       f"{len(data.counts)} patterns in {seconds:.0f} s")

    if launch and launch.rank != 0:  # the same config checks and training, no evidence
        LOG.setLevel(logging.ERROR)  # rank 0 logs (and warns) for all
        try:
            body(load(args), None)
        except (ConfigError, DataFileError):
            return 2  # rank 0 prints the problems
        return 0
    return cli.run_step("train", args, products, body, load_config=load,
                        inputs=[args.payload, args.data])


if __name__ == "__main__":
    raise SystemExit(main())
