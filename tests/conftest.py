"""Shared test helpers: a scratch copy of the workflow, and real Snakemake / step-CLI runs in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = "tests/configs/tiny.yaml"
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "ptycho_torch")


def copy_workflow(dest: Path) -> Path:
    """Snakefile, workflow/, config/, profiles/, the package and tests/configs/ into ``dest``.

    The package travels along so that a run tests this checkout's code, unaffected by
    edits made while it runs (``python -m`` imports from the working directory first).
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in WORKFLOW_PARTS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    shutil.copytree(REPO / "tests" / "configs", dest / "tests" / "configs")
    return dest


def clean_env() -> dict[str, str]:
    """The environment without an inherited run id (each invocation must pick its own)."""
    env = {k: v for k, v in os.environ.items() if k != "PTYCHO_RUN_ID"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``snakemake --profile profiles/local ARGS`` in ``workdir``; output in ``.stdout``."""
    return subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", *args],
                          cwd=workdir, env=clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def run_step(step: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m ptycho_torch.<step> ARGS`` in ``cwd``; stderr separate from stdout."""
    return subprocess.run([sys.executable, "-m", f"ptycho_torch.{step}", *args], cwd=cwd,
                          env=clean_env(), capture_output=True, text=True, timeout=600)


def jobs_run(output: str) -> set[str]:
    """Rule names in the "Job stats" table of a Snakemake run (empty if nothing to do)."""
    table = output.partition("Job stats:")[2].partition("total")[0]
    return set(re.findall(r"^(\w+)\s+\d+\s*$", table, flags=re.MULTILINE))


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): two threads on a loaded 2-core machine are several times slower for
    these small tensors."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def iterative_without_truth(tmp_path_factory) -> Path:
    """The iterative step (pty-chi, real runs) on the tiny experiment's test scan with its
    ground truth removed, as a measured scan: ``long`` (30 epochs, ``iterative.half_data_frc``
    on) and ``short`` (2 epochs, off), each under ``results/<name>/`` with its evidence
    under ``reports/<RUN>/<name>/iterative/`` of the returned directory."""
    import json
    from dataclasses import replace

    from ptycho_torch import iterative, simulate
    from ptycho_torch.config_factory import resolve_config
    from ptycho_torch.data import write_cxi
    work = tmp_path_factory.mktemp("no_truth")
    d = resolve_config(REPO / TINY).data
    scan = simulate.simulate_dataset(d, d.object.test_size_px, (7, 1))
    write_cxi(work / "test.cxi", replace(scan, ground_truth=None, true_probe=None))
    for name, epochs, halves in (("long", 30, True), ("short", 2, False)):
        settings = {"experiment": name, "data": {"N": 16}, "execution": {"threads": 1},
                    "iterative": {"epochs": epochs, "batch_size": 16, "half_data_frc": halves}}
        code = iterative.main(["--config-json", json.dumps(settings), "--data",
                               str(work / "test.cxi"), "--out-dir", str(work / "results" / name),
                               "--report-dir",
                               str(work / f"reports/2026-01-01T000000Z/{name}/iterative")])
        assert code == 0, name
    return work
