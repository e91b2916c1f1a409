"""The provenance ledger: which step of which run made (or read) which file, as the verified
step manifests under ``reports/`` record it. The audit checks the evidence with it, the
report lists each product's provenance, and the comparison and the hybrid find the step
that made a file (and the seconds it took) through it.

A manifest counts only when it verifies (:func:`ptycho_torch.evidence.load_manifest`: its
own sha256) and belongs to the directory it lies in; files are named as manifests write
them (:func:`ptycho_torch.evidence.path_key`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ptycho_torch.evidence import MANIFEST, is_run_id, load_manifest, path_key, sha256_file

Parts = tuple[str, ...]   # (run_id, experiment, step), or a prefix of it


@dataclass(frozen=True)
class StepDir:
    """One step's evidence directory ``reports/<run_id>/<experiment>/<step>/``."""
    path: Path
    parts: Parts  # (run_id, experiment, step)

    @property
    def name(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class Record:
    """What one manifest recorded about one file it made or read."""
    parts: Parts  # (run_id, experiment, step) of the manifest
    ended: str
    sha256: str | None
    size: int | None
    sealed: bool = False  # a Snakemake file the step sealed, not a product it made

    @property
    def where(self) -> str:
        return "/".join(self.parts)


@dataclass
class Ledger:
    """Every verified manifest of the tree and what they record making and reading."""
    manifests: dict[Parts, dict[str, Any]] = field(default_factory=dict)
    problems: dict[Parts, str] = field(default_factory=dict)
    producers: dict[str, list[Record]] = field(default_factory=dict)
    consumers: dict[str, list[Record]] = field(default_factory=dict)
    unverified: dict[str, list[Parts]] = field(default_factory=dict)  # named by a bad manifest

    def made(self, name: str, sha256: str) -> list[Record]:
        """The records of the manifests that made the file ``name`` (as manifests write it)
        with exactly this content, oldest first (sealed Snakemake files excluded)."""
        return [r for r in self.producers.get(name, []) if r.sha256 == sha256 and not r.sealed]


def table_of(m: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``m[key]`` when it is a JSON object (files, products, inputs), else empty."""
    value = m.get(key)
    return value if isinstance(value, dict) else {}


def identity_problem(step: StepDir, m: Mapping[str, Any]) -> str | None:
    found = (m.get("run_id"), m.get("experiment"), m.get("step"))
    if found != step.parts:
        return (f"manifest.json belongs to {'/'.join(map(str, found))}, not to "
                f"{step.name} (moved or copied evidence)")
    return None


def read_ledger(steps: Iterable[StepDir]) -> Ledger:
    """The ledger of the manifests of ``steps``: each one verified (its own hash, and that it
    belongs to its directory); records of a file sorted by run id, then end time."""
    ledger = Ledger()
    for step in steps:
        path = step.path / MANIFEST
        if not path.is_file():
            continue
        m, problem = load_manifest(path)
        problem = problem or identity_problem(step, m)
        if problem:
            ledger.problems[step.parts] = problem
            for name in unverified_products(path):
                ledger.unverified.setdefault(name, []).append(step.parts)
            continue
        ledger.manifests[step.parts] = m
        for key, table in (("products", ledger.producers), ("sealed", ledger.producers),
                           ("inputs", ledger.consumers)):
            for name, entry in table_of(m, key).items():
                entry = entry if isinstance(entry, dict) else {}
                table.setdefault(name, []).append(Record(
                    step.parts, str(m.get("ended_utc")), entry.get("sha256"), entry.get("size"),
                    key == "sealed"))
    for table in (ledger.producers, ledger.consumers):
        for records in table.values():
            records.sort(key=lambda r: (r.parts[0], r.ended))
    return ledger


def unverified_products(path: Path) -> list[str]:
    """Product names in a manifest that does not verify (only to explain findings)."""
    try:
        products = json.loads(path.read_text()).get("products")
    except (OSError, ValueError, AttributeError):
        return []
    return list(products) if isinstance(products, dict) else []


def step_dirs(reports_root: Path, experiment: str = "*") -> list[StepDir]:
    """Every step directory ``<run_id>/<experiment>/<step>/`` under ``reports_root`` whose run
    directory is named by a run id (``latest`` only repeats a run), sorted."""
    return [StepDir(d, (d.parents[1].name, d.parent.name, d.name))
            for d in sorted(reports_root.glob(f"*/{experiment}/*"))
            if d.is_dir() and is_run_id(d.parents[1].name)]


def producer(product: Path, reports_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The manifest (path, content) of the newest step under ``reports_root`` that made
    exactly the file ``product`` (its name and its current sha256), or None."""
    ledger = read_ledger(step_dirs(reports_root))
    made = ledger.made(path_key(product), sha256_file(product))
    if not made:
        return None
    run_id, experiment, step = made[-1].parts
    return reports_root / run_id / experiment / step / MANIFEST, ledger.manifests[made[-1].parts]


def provenance(reports_root: Path, experiment: str) -> list[dict[str, Any]]:
    """Each existing product named by a manifest of ``experiment``: its path, current sha256
    and the newest run and step whose manifest records that content (``None`` if none
    does). The report step's own manifests are left out (its products are being remade)."""
    ledger = read_ledger(s for s in step_dirs(reports_root, experiment) if s.parts[2] != "report")
    rows = []
    for path in sorted(ledger.producers):
        if Path(path).is_file() and not all(r.sealed for r in ledger.producers[path]):
            digest = sha256_file(Path(path))
            made = ledger.made(path, digest)
            run, _, step = made[-1].parts if made else (None, None, None)
            rows.append({"path": path, "sha256": digest, "run_id": run, "step": step})
    return rows
