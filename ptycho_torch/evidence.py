"""Per-step evidence: ``reports/<run_id>/<experiment>/<step>/``.

Each step directory holds ``summary.md`` (what ran, inputs, key numbers, verdict),
the step log ``<step>.log``, step-specific evidence (``config.json`` always), and
``manifest.json``, written last and atomically. The manifest records:

* ``files``: sha256 and size of every other file in the step directory;
* ``products``: sha256 and size of every product the step wrote (``results/...``);
* ``inputs``: sha256 and size of every input it read, so a product is traceable to
  the exact files it was made from;
* ``sealed`` (report and study steps only): sha256 and size of the files Snakemake wrote
  for the steps before it (``results/<experiment>/logs/<rule>.log`` and
  ``benchmarks/<rule>.tsv``), which no step can record about itself: the log is still
  open and the benchmark not yet written while a step runs;
* ``config_hash`` (resolved science settings), ``seed``, ``code`` (git commit and
  dirty flag, ``"unknown"``/``None`` outside a git checkout), ``packages`` (Python,
  torch, numpy, h5py, snakemake, ...), ``host``, ``slurm_job_id``, ``workdir``,
  ``command``, ``started_utc``, ``ended_utc``, ``duration_s``;
* ``manifest_sha256``: sha256 of the manifest's own canonical JSON without this
  key (:func:`manifest_digest`), so an edited manifest is detectable.

A step that crashed has a summary saying FAILED and no manifest, so it never looks
complete. ``python -m ptycho_torch.audit`` checks all of this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ptycho_torch.files import write_atomic
from ptycho_torch.formatting import number

RUN_ID_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}Z$")
RUN_ID_FORMAT = "%Y-%m-%dT%H%M%SZ"
MANIFEST = "manifest.json"
SUMMARY = "summary.md"
CONFIG = "config.json"
SELF_HASH = "manifest_sha256"
PACKAGES = ("torch", "numpy", "h5py", "snakemake", "scikit-image", "matplotlib", "PyYAML")
HASH_BUFFER = 1 << 20  # 1 MiB reads: hashlib's sha256 then runs at memory speed


def new_run_id(now: datetime | None = None) -> str:
    """UTC timestamp ``YYYY-MM-DDTHHMMSSZ`` naming one invocation."""
    return (now or datetime.now(timezone.utc)).strftime(RUN_ID_FORMAT)


def is_run_id(name: str) -> bool:
    """True if ``name`` is a well-formed run id: the pattern and a real UTC time."""
    if not RUN_ID_PATTERN.match(name):
        return False
    try:
        datetime.strptime(name, RUN_ID_FORMAT)
    except ValueError:
        return False
    return True


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def digest_file(path: Path, chunk: int = HASH_BUFFER) -> tuple[int, str]:
    """(size, hex sha256) of a file, read unbuffered into one reused buffer of at most
    ``chunk`` bytes (no larger than the file: small files cost no big allocation)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(max(4096, min(chunk, os.fstat(f.fileno()).st_size)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def sha256_file(path: Path, chunk: int = HASH_BUFFER) -> str:
    """Hex sha256 of a file."""
    return digest_file(path, chunk)[1]


def file_entry(path: Path) -> dict[str, Any]:
    size, sha = digest_file(path)
    return {"sha256": sha, "size": size}


def path_key(path: Path | str) -> str:
    """How a product or input is named in a manifest: relative to the working directory
    when it lies below it (the audit resolves such names against the project directory,
    so a copied or moved tree still audits), else absolute."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON, without its own ``manifest_sha256`` key."""
    body = {k: v for k, v in manifest.items() if k != SELF_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_manifest(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, None)`` if ``path`` holds a manifest whose content hash verifies, else
    ``(None, problem)`` naming what is wrong (unreadable, not JSON, no or wrong hash)."""
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(manifest, dict):
        return None, "not a JSON object"
    if SELF_HASH not in manifest:
        return None, f"no {SELF_HASH}: written by an older version or edited"
    if manifest[SELF_HASH] != manifest_digest(manifest):
        return None, "edited: its content does not match its manifest_sha256"
    return manifest, None


def code_version(root: Path | None = None) -> dict[str, Any]:
    """Git commit and dirty flag of the checkout holding this package.

    ``{"git_commit": "unknown", "dirty": None}`` when there is no such checkout: git
    missing, not a repository, a repository without commits, or one that does not track
    this package (e.g. an installed copy inside an unrelated repository)."""
    root = root or Path(__file__).resolve().parent.parent
    unknown = {"git_commit": "unknown", "dirty": None}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if head.returncode != 0 or not head.stdout.strip():
            return unknown
        tracked = git("ls-files", "--error-unmatch", "--", "ptycho_torch/evidence.py")
        status = git("status", "--porcelain", "--untracked-files=no")
        if tracked.returncode != 0 or status.returncode != 0:
            return unknown
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"git_commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, Any]:
    """Where and with what a step runs: code version, package versions, host, SLURM job id."""
    return {"code": code_version(), "packages": package_versions(), "host": platform.node(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def entries(paths: list[Path]) -> dict[str, Any]:
    """sha256 and size of each path (``{"missing": true}`` for one that does not exist)."""
    return {path_key(p): file_entry(p) if Path(p).is_file() else {"missing": True}
            for p in paths}


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
    inputs: list[Path] = field(default_factory=list)
    sealed: list[Path] = field(default_factory=list)  # Snakemake's files of earlier steps
    started: str = field(default_factory=utc_now)
    t0: float = field(default_factory=time.perf_counter)
    environment: dict[str, Any] | None = None  # default: environment() when finishing

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
                 f"- duration: {seconds:.2f} s", f"- config hash: `{self.config_hash}`",
                 f"- seed: {self.seed}",
                 f"- command: `{' '.join(shlex.quote(a) for a in sys.argv)}`"]
        lines += [f"- input: `{path_key(p)}`" for p in self.inputs]
        lines += [f"- product: `{path_key(p)}`" for p in self.products]
        lines += [f"- sealed: `{path_key(p)}`" for p in self.sealed]
        if self.numbers:
            lines += ["", "| quantity | value |", "|---|---|"]
            lines += [f"| {k} | {number(v)} |" for k, v in self.numbers.items()]
        return "\n".join(lines) + "\n"

    def finish(self, ok: bool) -> None:
        """Write ``summary.md``; on success also ``manifest.json`` (last, atomically)."""
        ended, seconds = utc_now(), time.perf_counter() - self.t0
        for handler in logging.getLogger("ptycho_torch").handlers:
            handler.flush()
        status = "OK" if ok else "FAILED"
        write_atomic(self.directory / SUMMARY, self._summary(status, ended, seconds))
        if not ok:
            return
        files = {p.name: file_entry(p) for p in sorted(self.directory.iterdir())
                 if p.is_file() and not p.is_symlink() and p.name != MANIFEST}
        manifest = {
            "step": self.step, "run_id": self.run_id, "experiment": self.experiment,
            "status": "ok", "files": files, "products": entries(self.products),
            "inputs": entries(self.inputs),
            **({"sealed": entries(self.sealed)} if self.sealed else {}), "config_hash": self.config_hash, "seed": self.seed,
            **(self.environment or environment()),
            "workdir": str(Path.cwd()), "command": sys.argv,
            "started_utc": self.started, "ended_utc": ended, "duration_s": round(seconds, 3),
            "numbers": self.numbers,
        }
        manifest = json.loads(json.dumps(manifest, default=str))  # exactly what is stored
        manifest[SELF_HASH] = manifest_digest(manifest)
        self.write_json(MANIFEST, manifest)
