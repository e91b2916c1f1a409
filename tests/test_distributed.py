"""Data-parallel training: torchrun with 2 gloo processes on CPU follows the 1-process run.

Both runs use the same global batch (``training.batch_size``): each of the 2 ranks takes
half of every batch and DDP averages the gradients, so loss trajectories and weights agree
up to floating-point reduction order. Only rank 0 writes products and evidence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch.config_factory import ConfigError, resolve_config
from ptycho_torch.model import PtychoPINN
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.distributed import Launch, launch_from_env
from test_train import TINY, _train_cmd, _write_payload  # pytest puts tests/ on the import path

pytestmark = pytest.mark.slow  # torchrun and training subprocesses: 15-35 s each

LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID")
REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


def _env(**extra: str) -> dict[str, str]:
    """A single-process environment (no inherited launcher variables), CPU only."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return dict(env, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", **extra)


def _torchrun(nproc: int, out: str, report: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *_train_cmd(out, report)[1:], *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _history(path: Path) -> np.ndarray:
    """The (epoch, loss) columns of history.csv."""
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), ndmin=2)


@pytest.fixture(scope="module")
def data():
    cfg = resolve_config(TINY)
    return simulate_dataset(cfg.data, 40, (cfg.seed, 0))


def test_two_gloo_processes_follow_the_one_process_run(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs must stay inside the working directory
    _write_payload(tmp_path, data, epochs=EPOCHS)
    one = subprocess.run(_train_cmd("one", "rep/one"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    before = {p for p in tmp_path.rglob("*") if p.is_file()}

    two = _torchrun(2, "two", "rep/two")
    assert two.returncode == 0, two.stderr

    h1, h2 = _history(tmp_path / "one/history.csv"), _history(tmp_path / "two/history.csv")
    assert h1.shape == h2.shape == (EPOCHS, 2)
    np.testing.assert_allclose(h2, h1, rtol=1e-4)  # reduction order differs, nothing else
    w1 = torch.load(tmp_path / "one/model.pt", weights_only=True)
    w2 = torch.load(tmp_path / "two/model.pt", weights_only=True)
    assert w2["meta"]["epochs_run"] == EPOCHS and w2["config"] == w1["config"]
    cfg = resolve_config(TINY)
    torch.manual_seed(cfg.seed)  # the weights both runs started from, as train makes them
    w0 = PtychoPINN(cfg.model, data.N, torch.from_numpy(data.probe)).state_dict()
    for name, p in w1["state_dict"].items():
        # Adam turns rounding noise (reduction order) into whole steps of ~lr for weights
        # whose gradient is ~0, so the runs agree relative to how far training moved them
        moved, apart = (p - w0[name]).norm(), (w2["state_dict"][name] - p).norm()
        assert apart <= 0.2 * moved, (name, float(apart / moved))  # measured: at most 0.09

    # one checkpoint, one report: rank 1 wrote nothing (no stray, temporary or resume file)
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
            and p not in before}
    assert made == {"two/model.pt", "two/history.csv", "two/loss.png", "rep/two/config.json",
                    "rep/two/loss.png", "rep/two/summary.md", "rep/two/train.log",
                    "rep/two/manifest.json"}
    assert two.stderr.count("report: rep/two") == 1
    numbers = json.loads((tmp_path / "rep/two/manifest.json").read_text())["numbers"]
    assert numbers["world_size"] == 2 and numbers["distributed"] == "gloo"
    single = json.loads((tmp_path / "rep/one/manifest.json").read_text())["numbers"]
    assert single["world_size"] == 1 and single["distributed"] == "none"


def test_batch_size_not_divisible_by_the_processes_is_refused(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_payload(tmp_path, data, epochs=1)
    odd = ("--set", "training.batch_size=7")
    # rank 0 as torchrun starts it: the config is checked before any process group is joined
    rank0 = subprocess.run([*_train_cmd("out", "rep/train"), *odd], capture_output=True,
                           text=True, timeout=300, env=_env(WORLD_SIZE="2", RANK="0",
                                                            LOCAL_RANK="0"))
    assert rank0.returncode == 2, rank0.stderr
    assert "training.batch_size: 7 is not divisible by the 2" in rank0.stderr
    assert "Traceback" not in rank0.stderr
    run = _torchrun(2, "out", "rep/train", *odd)
    assert run.returncode != 0
    assert run.stderr.count("error: training.batch_size: 7") == 1  # rank 0 speaks for both
    assert not (tmp_path / "out").exists() and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, None),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, Launch(3, 1, 4, "torchrun")),
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"},
     Launch(1, 1, 2, "srun")),
    # an sbatch script asking for 4 tasks is not one of 4 ranks (no job step of its own)
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, None),
    # torchrun inside the one-task srun step the SLURM executor runs a job in
    ({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "WORLD_SIZE": "2", "RANK": "1",
      "LOCAL_RANK": "1"}, Launch(1, 1, 2, "torchrun")),
])
def test_launch_is_read_from_torchrun_or_srun_variables(environ, expected):
    assert launch_from_env(environ) == expected


@pytest.mark.parametrize("environ", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"},
                                     {"SLURM_STEP_NUM_TASKS": "2"}])
def test_a_broken_launcher_environment_is_a_config_error(environ):
    with pytest.raises(ConfigError, match="distributed launch"):
        launch_from_env(environ)
