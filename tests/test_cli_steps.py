"""The step CLIs on their own, without Snakemake: help, refusal of bad settings, validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_step
from ptycho_torch.evidence import sha256_file

pytestmark = pytest.mark.slow  # each test starts a step CLI or Python (~2-4 s on 2 cores)

STEPS = ("simulate", "validate", "probe_warmup", "train", "infer", "report")
BAD_SETS = ("--set", "data.N=33", "--set", "training.epochz=1")
REPORT_DIR = "reports/2026-01-01T000000Z/tiny"


@pytest.mark.parametrize("step", STEPS)
def test_help(step, tmp_path):
    out = run_step(step, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"usage: python -m ptycho_torch.{step}" in out.stdout


def assert_refused(out, tmp_path: Path) -> None:
    """Exit 2, every problem named by its key path, nothing written."""
    assert out.returncode == 2, out.stderr
    assert "error: data.N: 33 must be a power of two" in out.stderr
    assert "error: training.epochz: unknown key; did you mean 'epochs'?" in out.stderr
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_simulate_refuses_bad_settings(tmp_path):
    out = run_step("simulate", "--config", str(REPO / "tests/configs/tiny.yaml"), *BAD_SETS,
                   "--train-out", "train.cxi", "--test-out", "test.cxi",
                   "--report-dir", f"{REPORT_DIR}/simulate", cwd=tmp_path)
    assert_refused(out, tmp_path)


def test_validate_refuses_bad_settings(tmp_path):
    out = run_step("validate", "--config", str(REPO / "tests/configs/tiny.yaml"), *BAD_SETS,
                   "--train-data", "train.cxi", "--test-data", "test.cxi", "--out", "payload.json",
                   "--report-dir", f"{REPORT_DIR}/validate", cwd=tmp_path)
    assert_refused(out, tmp_path)


def test_validate_refuses_zero_epochs_without_an_initial_model(tmp_path):
    """Inference would run on the untrained network's random weights: refused, naming both
    keys, before anything is written."""
    out = run_step("validate", "--config", str(REPO / "tests/configs/tiny.yaml"),
                   "--set", "training.epochs=0", "--train-data", "train.cxi",
                   "--test-data", "test.cxi", "--out", "payload.json",
                   "--report-dir", f"{REPORT_DIR}/validate", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    [problem] = [line for line in out.stderr.splitlines() if line.startswith("error: training")]
    assert problem.startswith("error: training.epochs: 0 ") and "training.init_model" in problem
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A working directory holding a simulated tiny train.cxi and test.cxi."""
    workdir = tmp_path_factory.mktemp("cli")
    out = run_step("simulate", "--config", str(REPO / "tests/configs/tiny.yaml"),
                   "--train-out", "train.cxi", "--test-out", "test.cxi",
                   "--report-dir", f"{REPORT_DIR}/simulate", cwd=workdir)
    assert out.returncode == 0, out.stderr
    return workdir


def validate_args(report_step: str, *extra: str) -> list[str]:
    return ["--config", str(REPO / "tests/configs/tiny.yaml"), *extra,
            "--train-data", "train.cxi", "--test-data", "test.cxi",
            "--out", f"{report_step}/payload.json",
            "--report-dir", f"{REPORT_DIR}/{report_step}"]


def test_validate_writes_the_payload_and_its_evidence(tiny_data):
    out = run_step("validate", *validate_args("validate"), cwd=tiny_data)
    assert out.returncode == 0, out.stderr
    payload = tiny_data / "validate" / "payload.json"
    report = tiny_data / REPORT_DIR / "validate"
    assert json.loads(payload.read_text())["config"]["data"]["N"] == 16
    assert (report / "payload.json").read_bytes() == payload.read_bytes()
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["numbers"]["payload_sha256"] == sha256_file(payload)
    assert manifest["products"]["validate/payload.json"]["sha256"] == sha256_file(payload)
    assert manifest["numbers"]["N"] == 16 and manifest["numbers"]["train_patterns"] > 0
    assert "PASS" in (report / "summary.md").read_text()


def test_validate_names_every_data_mismatch_and_writes_nothing(tiny_data):
    out = run_step("validate", *validate_args("mismatch", "--set", "data.N=32"), cwd=tiny_data)
    assert out.returncode == 2, out.stderr
    problems = [line for line in out.stderr.splitlines() if line.startswith("error: data.N")]
    assert len(problems) == 2  # the training and the test data
    assert not (tiny_data / "mismatch").exists()
    assert not (tiny_data / REPORT_DIR / "mismatch").exists()


def test_execution_setup_sets_determinism_without_importing_the_compiler():
    """Each step sets torch's deterministic flag both ways, and does not pay the 1.3 s
    import of ``torch._inductor`` that ``torch.use_deterministic_algorithms`` would."""
    code = ("import sys, torch\n"
            "from ptycho_torch.config import ExecutionConfig\n"
            "from ptycho_torch.execution import setup_execution\n"
            "setup_execution(ExecutionConfig(deterministic=True))\n"
            "on = torch.are_deterministic_algorithms_enabled()\n"
            "setup_execution(ExecutionConfig(deterministic=False))\n"
            "print(on, torch.are_deterministic_algorithms_enabled(), "
            "'torch._inductor' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]


FREED_MEMORY = """
import ctypes, sys
import torch
from ptycho_torch.config import ExecutionConfig
from ptycho_torch.execution import setup_execution
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(k, ctypes.c_size_t) for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "setup":
    setup_execution(ExecutionConfig())
blocks = [torch.ones(3 << 20) for _ in range(8)]  # 8 tensors of 12 MiB
del blocks
print(libc.mallinfo2().fordblks >> 20)  # MiB free in the heap, kept for the next tensors
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_execution_setup_keeps_freed_tensor_memory_for_reuse():
    """After ``setup_execution`` the memory of freed tensors stays in the process's heap for
    the next ones (without it, glibc maps such blocks fresh and returns them on free, and
    the kernel faults and zeroes them again each time)."""
    free = {}
    for mode in ("plain", "setup"):
        out = subprocess.run([sys.executable, "-c", FREED_MEMORY, mode], capture_output=True,
                             text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr
        free[mode] = int(out.stdout.split()[-1])
    assert free["setup"] >= 96 > free["plain"], free
