"""The rule files' style checks (workflow/scripts/check_style.py, `make lint`, .ci/run): this
checkout passes them, and a copy with a misformatted rule or a new lint fails them, naming
what is wrong."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, copy_workflow

CHECK = REPO / "workflow" / "scripts" / "check_style.py"
pytestmark = pytest.mark.slow  # loads the workflow (snakemake --lint) once per run: ~10 s


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the workflow with the pyproject.toml holding snakefmt's line length."""
    copy_workflow(tmp_path)
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_this_checkout_is_formatted_and_has_only_accepted_lints():
    out = check(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 problem(s)" in out.stdout


def test_a_misformatted_rule_fails_naming_its_file(checkout):
    rule_file = checkout / "workflow" / "rules" / "report.smk"
    rule_file.write_text(rule_file.read_text().replace("    input:\n", "    input :\n", 1))
    out = check(checkout)
    assert out.returncode == 1, out.stdout + out.stderr
    [problem] = out.stderr.splitlines()
    assert problem.startswith("snakefmt: ") and "workflow/rules/report.smk" in problem


def test_a_new_lint_fails_naming_the_rule_and_the_lint(checkout):
    """A rule without a log: a finding workflow/lint-allowed.yaml does not accept."""
    rule_file = checkout / "workflow" / "rules" / "audit.smk"
    rule_file.write_text(rule_file.read_text() + '\n\nrule scratch:\n    output:\n        "x.txt",\n'
                         '    shell:\n        "touch {output}"\n')
    out = check(checkout)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.splitlines() == [
        "snakemake --lint: rule scratch: No log directive defined "
        "(not in workflow/lint-allowed.yaml)"]


def test_an_allowance_needs_its_reason(checkout):
    allowed = checkout / "workflow" / "lint-allowed.yaml"
    allowed.write_text(allowed.read_text() + "- lint: No log directive defined\n")
    out = check(checkout)
    assert out.returncode == 2 and "needs 'lint' and 'reason'" in out.stderr, out.stderr
