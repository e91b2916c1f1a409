"""Style checks of the rule files: formatted (snakefmt) and linted (snakemake --lint).

    python workflow/scripts/check_style.py [DIR]    # DIR: a checkout (default: this one)

Run by ``make lint`` (and so by .ci/run). Two checks, both in DIR:

* ``snakefmt --check Snakefile workflow/``, with the line length of DIR's
  ``pyproject.toml`` (``[tool.snakefmt]``); ``snakefmt Snakefile workflow/`` fixes it;
* ``snakemake --lint``: every finding must be accepted in ``workflow/lint-allowed.yaml``,
  which names each accepted lint with its reason. Any other finding fails the check.
  (Snakemake 9's ``--lint json`` prints text, so its text output is parsed.)

Exit status 0 when both pass, 1 with what failed (the files, the new lints), 2 when a
check could not run (no pyproject.toml, the workflow does not load).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

RULE_FILES = ("Snakefile", "workflow")
ALLOWED = Path("workflow", "lint-allowed.yaml")
ITEM = re.compile(r"^Lints for (?:snakefile (?P<file>.+)|rule (?P<rule>\S+) \(.*\)):$")
TITLE = re.compile(r"^    \* (?P<title>.+?):?$")


def parse_lints(text: str) -> list[tuple[str, str]]:
    """``(item, title)`` of each finding in ``snakemake --lint``'s text output; the item is
    ``rule <name>`` or ``snakefile <path>``."""
    found, item = [], None
    for line in text.splitlines():
        if m := ITEM.match(line):
            item = f"rule {m['rule']}" if m["rule"] else f"snakefile {m['file']}"
        elif item and (m := TITLE.match(line)):
            found.append((item, m["title"]))
    return found


def allowed_lints(path: Path) -> dict[str, str]:
    """Accepted lint title -> its reason, from ``workflow/lint-allowed.yaml``."""
    entries = yaml.safe_load(path.read_text()) or []
    bad = [e for e in entries if not (isinstance(e, dict) and e.get("lint") and e.get("reason"))]
    if bad:
        raise ValueError(f"{path}: every entry needs 'lint' and 'reason'; not: {bad}")
    return {e["lint"]: e["reason"] for e in entries}


def check_format(root: Path) -> list[str]:
    """Problems snakefmt finds (files it would reformat or cannot parse)."""
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--verbose", "--config",
                          str(root / "pyproject.toml"), *RULE_FILES], cwd=root,
                         capture_output=True, text=True)
    if out.returncode == 0:
        return []
    said = [line for line in (out.stdout + out.stderr).splitlines()
            if "[ERROR]" in line or "is different" in line]
    return ["snakefmt: " + line for line in said] or [f"snakefmt: exit {out.returncode}"]


def check_lints(root: Path) -> list[str]:
    """``snakemake --lint`` findings not accepted in ``workflow/lint-allowed.yaml``."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=root,
                         capture_output=True, text=True)
    text = out.stdout + out.stderr
    lints = parse_lints(text)
    if out.returncode != 0 and not lints:
        raise RuntimeError(f"snakemake --lint could not check the workflow:\n{text[-2000:]}")
    allowed = allowed_lints(root / ALLOWED)
    return [f"snakemake --lint: {item}: {title} (not in {ALLOWED})"
            for item, title in lints if title not in allowed]


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[2]).resolve()
    if not (root / "pyproject.toml").is_file():
        print(f"error: {root}/pyproject.toml not found (snakefmt's line length)", file=sys.stderr)
        return 2
    try:
        problems = check_format(root) + check_lints(root)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"workflow style: {len(problems)} problem(s)"
          + ("" if problems else ": formatted, and every lint accepted in " + str(ALLOWED)))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
