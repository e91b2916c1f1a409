"""Data-parallel training across processes: the launch (torchrun or a plain ``srun -n N``),
the process group, and the few collectives the training loop needs.

Every process draws the same global batch order and takes its equal share of each global
batch; DDP averages the gradients, so the run follows the one-process loss trajectory.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import distributed as dist

from ptycho_torch.config_factory import ConfigError


# Seconds a rank other than 0 waits before failing on a problem that rank 0 reports: torchrun
# stops every worker as soon as one exits with an error, and rank 0 must get to report first.
REPORT_GRACE_S = 10.0


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


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_mean(loss: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of every rank's (detached) loss: the loss of the global batch."""
    value = loss.detach().clone()
    dist.all_reduce(value)
    return value / world


def rank0_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, for all ranks (a wall-clock limit must stop them together)."""
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())
