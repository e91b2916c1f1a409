"""Shared test helpers: a scratch copy of the workflow, real Snakemake / step-CLI runs in it,
and small data sets (a synthetic scan, its CXI file, a PtychoPINN NPZ)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
import sys
from pathlib import Path

import numpy as np
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


@dataclass(frozen=True)
class WorkflowRun:
    """A Snakemake invocation in a workflow copy: the directory and what it printed."""
    workdir: Path
    out: subprocess.CompletedProcess


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


# ----------------------------------------------------------------- small data sets

def synthetic_scan(n: int = 6, N: int = 8, seed: int = 0):
    """A random :class:`~ptycho_torch.dataset.PtychoData`: Poisson counts ``[n, N, N]``, a
    complex probe ``[N, N]``, positions inside a 24 x 28 px object with a ground truth, and
    attrs of each kind (number, list, nested dict, text)."""
    from ptycho_torch.dataset import PtychoData
    rng = np.random.default_rng(seed)
    return PtychoData(
        counts=rng.poisson(50.0, (n, N, N)).astype(np.float32),
        probe=(rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))).astype(np.complex64),
        positions_px=np.stack([rng.uniform(5, 14, n), rng.uniform(5, 17, n)], 1),
        object_shape=(24, 28), energy_eV=6200.0, detector_distance_m=1.5,
        detector_pixel_size_m=55e-6, object_pixel_size_m=2.1e-8,
        ground_truth=(rng.uniform(0.5, 1, (24, 28)) * np.exp(1j * rng.uniform(-1, 1, (24, 28)))
                      ).astype(np.complex64),
        attrs={"nphotons": 1.0e4, "seed": [3, 0], "generator": {"object": {"kind": "grf"}},
               "note": "synthetic"})


@pytest.fixture
def cxi_scan(tmp_path: Path):
    """``(path, data)``: :func:`synthetic_scan` written to ``tmp_path/scan.cxi``."""
    from ptycho_torch.cxi import write_cxi
    d = synthetic_scan()
    path = tmp_path / "scan.cxi"
    write_cxi(path, d)
    return path, d


def edit_h5(path: Path, fn) -> None:
    """Apply ``fn(h5py.File)`` to the HDF5 file ``path`` in place."""
    import h5py
    with h5py.File(path, "r+") as f:
        fn(f)


def small_data_config():
    """A :class:`~ptycho_torch.config.DataConfig` of 16 px patterns that simulates fast."""
    from ptycho_torch.config import DataConfig, ProbeConfig, ScanConfig
    return DataConfig(N=16, nphotons=1e4, probe=ProbeConfig(pupil_radius_px=4.0),
                      scan=ScanConfig(step_px=6.0))


def ptychopinn_npz(path: Path, *, N: int = 16, n: int = 12, legacy: bool = False,
                   with_object: bool = True, extras: bool = False, noise: bool = True,
                   coords_dtype=np.float64, seed: int = 0) -> dict:
    """A data set written the way PtychoPINN's get_image_patches sees it: pad the object
    by N/2, translate by -(x, y) (integer here), crop N x N; amplitudes sqrt(counts).
    Returns the arrays written."""
    rng = np.random.default_rng(seed)
    H = W = 48
    obj = ((0.5 + 0.5 * rng.uniform(size=(H, W))) * np.exp(1j * rng.uniform(-1, 1, (H, W))))
    probe = np.zeros((N, N), complex)
    probe[N // 4: 3 * N // 4, N // 4: 3 * N // 4] = 30.0 * np.exp(1j * rng.uniform(-1, 1, (N // 2,
                                                                                         N // 2)))
    x = rng.integers(N // 2, W - N // 2, n).astype(float)
    y = rng.integers(N // 2, H - N // 2, n).astype(float)
    padded = np.pad(obj, N // 2)
    amps = []
    for xi, yi in zip(x.astype(int), y.astype(int)):
        patch = padded[yi:yi + N, xi:xi + N]  # translate by -(x, y), crop [:N, :N]
        inten = np.abs(np.fft.fftshift(np.fft.fft2(probe * patch, norm="ortho"))) ** 2
        amps.append(np.sqrt(rng.poisson(inten) if noise else inten))
    amp = np.stack(amps).astype(np.float32)
    arrays = {("diff3d" if legacy else "diffraction"):
              np.ascontiguousarray(np.moveaxis(amp, 0, -1)) if legacy else amp,
              "probeGuess": probe.astype(np.complex64),
              "xcoords": x.astype(coords_dtype), "ycoords": y.astype(coords_dtype)}
    if with_object:
        arrays["objectGuess"] = obj.astype(np.complex64)
    if extras:
        arrays.update(scan_index=np.zeros(n, np.int64), xcoords_start=x - 0.25,
                      ycoords_start=y + 0.5)
    np.savez(path, **arrays)
    return arrays


def npz_arrays(path: Path) -> dict:
    """Every array of the NPZ file ``path``, by name."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def npz_edit(path: Path, **changes) -> None:
    """Rewrite the NPZ file ``path`` with arrays replaced (``None``: removed)."""
    arrays = npz_arrays(path)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


# The tiny experiment as a mapping, for in-process training (tests/test_model.py,
# test_train.py, test_distributed.py): N = 16, 2 epochs, one thread.
TINY_EXPERIMENT = {"experiment": "tiny",
                   "data": {"N": 16, "object": {"train_size_px": 40, "test_size_px": 40},
                            "probe": {"pupil_radius_px": 3.0}},
                   "training": {"epochs": 2, "batch_size": 8}, "execution": {"threads": 1}}


def tiny_config(**overrides):
    """TINY_EXPERIMENT with dotted-key overrides (``training__epochs=3`` for
    ``training.epochs``)."""
    from ptycho_torch.config_factory import resolve_config
    return resolve_config(TINY_EXPERIMENT, {k.replace("__", "."): v for k, v in overrides.items()})


@pytest.fixture(scope="module")
def tiny():
    """TINY_EXPERIMENT's config and a simulated scan of 40 positions (once per module)."""
    from ptycho_torch.config_factory import resolve_config
    from ptycho_torch.simulate import simulate_dataset
    cfg = resolve_config(TINY_EXPERIMENT)
    return cfg, simulate_dataset(cfg.data, 40, (cfg.seed, 0))


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
    from ptycho_torch.cxi import write_cxi
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
