"""Every command in README.md is run by this test, by another named test or by CI.

The README's shell blocks are parsed line by line. Each command must match one rule of
:data:`COVERAGE`, or the test fails naming it, so a command added to the README without a
check fails here:

* ``dry-run``: Snakemake commands, run with ``-n`` in a copy of the workflow, their
  placeholder files (``my.yaml``, ``scan.cxi``, ...) made tiny or empty: the target, the
  profile, the config files and the overrides must all resolve;
* ``help``: Python commands, run with ``--help``: the module or script must import and
  parse its arguments (their real runs are in the benchmarks and the tests below);
* ``ci``: make targets, each a line of ``.ci/run``;
* ``make``: make targets CI does not run (``make test-fast``: a part of ``make test``), run
  with ``make -n``: the target and its prerequisites must exist;
* ``test``: commands whose real run a named test performs (checked to exist).
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, clean_env, copy_workflow

# (command pattern, how it is covered, the argument of that check)
COVERAGE: tuple[tuple[str, str, str], ...] = (
    (r"make test-fast\b", "make", ""),
    (r"make (run|test|lint)\b", "ci", ""),
    (r"make bench\b", "help", "benchmarks/run_all.py"),
    (r"\.venv/bin/snakemake .*--report ", "test",
     "tests/test_workflow.py::test_snakemake_html_report"),
    (r"\.venv/bin/snakemake ", "dry-run", ""),
    (r"\.venv/bin/torchrun ", "test",
     "tests/test_distributed.py::test_two_gloo_processes_follow_the_one_process_run"),
    (r"\.venv/bin/python (-m \S+|\S+\.py)", "help", ""),
)
# placeholder files of the README's commands, made in the workflow copy for the dry runs
PLACEHOLDERS = ("scan.cxi", "scan.npz", "old/model.pt", "data/my_scan.cxi")


def readme_commands() -> list[str]:
    """Each command line of README.md's ```sh blocks, its comment removed."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    lines = (line.split(" #")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def coverage(command: str) -> tuple[str, str]:
    """(kind, argument) of the first :data:`COVERAGE` rule that ``command`` matches."""
    for pattern, kind, arg in COVERAGE:
        if re.match(pattern, command):
            return kind, arg
    raise AssertionError(f"README command covered by no test or CI step: {command!r} "
                         f"(add a rule to tests/test_readme.py COVERAGE)")


def test_the_readme_has_commands_and_each_is_covered():
    commands = readme_commands()
    assert len(commands) > 20
    for command in commands:
        coverage(command)


def test_ci_runs_the_make_targets_the_readme_names():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in readme_commands():
        if coverage(command)[0] == "ci":
            assert any(line.split("#")[0].strip() == command for line in ci), \
                f".ci/run does not run {command!r}"


def test_the_tests_named_for_readme_commands_exist():
    for command in readme_commands():
        kind, node = coverage(command)
        if kind == "test":
            path, name = node.split("::")
            tree = ast.parse((REPO / path).read_text())
            assert name in {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}, \
                f"{node} (named for {command!r}) does not exist"


@pytest.mark.parametrize("command", [c for c in readme_commands() if coverage(c)[0] == "make"])
def test_readme_make_target_resolves_as_a_dry_run(command):
    run = subprocess.run([*shlex.split(command), "-n"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, f"{command!r} -n: exit {run.returncode}\n{run.stderr[-3000:]}"


def dry_run_argv(command: str) -> list[str]:
    """The Snakemake command as a dry run with this interpreter; ``my.yaml`` the tiny config."""
    words = [TINY if w == "my.yaml" else w for w in shlex.split(command)[1:]]
    return [sys.executable, "-m", "snakemake", *words, "-n"]


@pytest.fixture(scope="module")
def placeholder_workflow(tmp_path_factory) -> Path:
    work = copy_workflow(tmp_path_factory.mktemp("readme"))
    for name in PLACEHOLDERS:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).touch()
    return work


@pytest.mark.parametrize("command", [c for c in readme_commands()
                                     if coverage(c)[0] == "dry-run"])
@pytest.mark.slow
def test_readme_snakemake_command_resolves_as_a_dry_run(command, placeholder_workflow):
    run = subprocess.run(dry_run_argv(command), cwd=placeholder_workflow, env=clean_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{command!r} -n: exit {run.returncode}\n{run.stderr[-3000:]}"
    assert "Job stats" in run.stdout + run.stderr or "Nothing to be done" in run.stdout + run.stderr


# scripts that import torch before parsing their arguments: ~2 s each on 2 shared cores
TORCH_AT_START = ("benchmarks/imperfect_scan.py", "benchmarks/infer.py", "benchmarks/simulate.py",
                  "benchmarks/train.py", "benchmarks/realistic_scan.py",
                  "benchmarks/per_scan_refinement.py")


@pytest.mark.parametrize("command", [
    pytest.param(c, marks=pytest.mark.slow) if any(s in c for s in TORCH_AT_START) else c
    for c in readme_commands() if coverage(c)[0] == "help"])
def test_readme_python_command_parses_its_arguments(command):
    kind, script = coverage(command)
    words = shlex.split(command)
    target = (["-m", words[2]] if words[1] == "-m" else [words[1]]) if not script else [script]
    run = subprocess.run([sys.executable, *target, "--help"], cwd=REPO, env=clean_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "usage:" in run.stdout, \
        f"{command!r} --help: exit {run.returncode}\n{run.stderr[-3000:]}"
