"""Per-step evidence: ``reports/<run_id>/<experiment>/<step>/``.

Each step directory holds ``summary.md`` (what ran, key numbers, verdict), the
step log ``<step>.log``, step-specific evidence, and ``manifest.json``, written
last and atomically: sha256 and size of every file in the directory and of the
products written under ``results/``, the config hash, the code version, package
versions, host, SLURM job id, UTC start/end and duration. A step that crashed
has a summary saying so and no manifest, so it never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RUN_ID_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}Z$")
MANIFEST = "manifest.json"
SUMMARY = "summary.md"
PACKAGES = ("torch", "numpy", "h5py", "snakemake", "scikit-image", "matplotlib", "PyYAML")


def new_run_id(now: datetime | None = None) -> str:
    """UTC timestamp ``YYYY-MM-DDTHHMMSSZ`` naming one invocation."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H%M%SZ")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` via a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def code_version() -> dict[str, Any]:
    """Git commit and dirty flag of the checkout holding this package ('unknown' outside git)."""
    root = Path(__file__).resolve().parent.parent
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit != "unknown" else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    return {"git_commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class StepReport:
    """Collects a step's evidence; :meth:`finish` writes summary and manifest."""
    directory: Path
    step: str
    products: list[Path]
    config_hash: str | None = None
    seed: int | None = None
    verdict: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    started: str = field(default_factory=utc_now)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def run_id(self) -> str:
        return self.directory.resolve().parent.parent.name

    @property
    def experiment(self) -> str:
        return self.directory.resolve().parent.name

    def record(self, numbers: dict[str, Any]) -> None:
        """Key numbers for the summary table and the manifest."""
        self.numbers.update(numbers)

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.directory / name
        write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def _summary(self, status: str, ended: str, seconds: float) -> str:
        lines = [f"# {self.step}: {status}", "", self.verdict or "", "",
                 f"- run id: `{self.run_id}`", f"- experiment: `{self.experiment}`",
                 f"- started (UTC): {self.started}", f"- ended (UTC): {ended}",
                 f"- duration: {seconds:.2f} s", f"- config hash: `{self.config_hash}`"]
        lines += [f"- input: `{p}`" for p in self.inputs]
        lines += [f"- product: `{p}`" for p in self.products]
        if self.numbers:
            lines += ["", "| quantity | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in self.numbers.items()]
        return "\n".join(lines) + "\n"

    def finish(self, ok: bool) -> None:
        """Write ``summary.md``; on success also ``manifest.json`` (last, atomically)."""
        ended, seconds = utc_now(), time.perf_counter() - self.t0
        for handler in logging.getLogger("ptycho_torch").handlers:
            handler.flush()
        write_atomic(self.directory / SUMMARY, self._summary("OK" if ok else "FAILED", ended, seconds))
        if not ok:
            return
        files = {p.name: file_entry(p) for p in sorted(self.directory.iterdir())
                 if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
        manifest = {
            "step": self.step, "run_id": self.run_id, "experiment": self.experiment,
            "status": "ok", "files": files,
            "products": {str(p): file_entry(p) for p in self.products},
            "inputs": self.inputs, "config_hash": self.config_hash, "seed": self.seed,
            "code": code_version(), "packages": package_versions(),
            "host": platform.node(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started_utc": self.started, "ended_utc": ended, "duration_s": round(seconds, 3),
            "numbers": self.numbers, "command": sys.argv,
        }
        self.write_json(MANIFEST, manifest)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
