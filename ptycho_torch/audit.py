"""Audit the artifact tree: every result traceable, every tampering caught.

    python -m ptycho_torch.audit [PATH ...] [--json] [--strict] [--json-out FILE]

PATH (default ``reports``) is a project directory (holding ``reports/``), a reports
directory, a run directory ``reports/<run_id>``, an experiment directory
``reports/<run_id>/<experiment>`` or one step directory. Products are looked up in
``results/`` beside ``reports/``. The audit only reads; it never repairs.

Checks:

* run ids well-formed (``YYYY-MM-DDTHHMMSSZ``, a real UTC time); nothing else in
  ``reports/`` but run directories, ``latest`` and ``.gitkeep``; no empty run or
  experiment directories; ``reports/latest`` points at the newest run with an index;
* every step directory complete: ``summary.md``, ``<step>.log``, ``config.json``,
  the step's own evidence (validate: ``payload.json``; train: ``loss.png``; infer:
  ``reconstruction.png`` and ``metrics.json`` when it scored; report: a copy of each
  figure) and ``manifest.json``, which must verify (its ``manifest_sha256``), name
  this run, experiment and step, and hold every provenance field;
* every file in a step directory listed in its manifest with matching size and sha256,
  nothing missing, nothing stray; each step's manifest matches the sha256 that the
  run index (``index.json``, itself a verified product) recorded for it;
* every product (each file under ``results/`` except the audit's own ``audit/``, each
  file in a run directory, each product a manifest names) matches the newest manifest
  that records making it; products made by another run than the one audited are
  reported as information;
* Snakemake's own files, ``results/<experiment>/logs/<rule>.log`` and
  ``benchmarks/<rule>.tsv``, are checked like products against the newest manifest that
  ``sealed`` them (the report or study step after their rule, :mod:`ptycho_torch.evidence`).
  The files no step can seal (the report's, the study's and the audit's own, and those of
  rules no report or study step has run after yet) are listed as information, "not
  covered", with the reason; a sealed file that changed while a later step of its
  experiment ran is a warning (a rule that ran again; the next report seals it), otherwise
  a finding;
* every input a step recorded, when it is a product, matches a recorded version of it.

Levels: ``finding`` (exit status 1), ``warning`` (a finding with ``--strict``),
``info`` and ``ok``. Warnings: the code version is unknown (not a git checkout) or
dirty; a step FAILED (its summary says so; a failed step has no manifest, by
design); a product no surviving manifest records making, although a later step
recorded reading exactly this file (its producing report is missing); products not
checked because ``results/<experiment>/`` is absent (e.g. after ``make clean``) or
an external product (outside the project) is absent; ``reports/latest`` missing or
not pointing at the newest indexed run; hidden files in ``reports/``.

Exit status: 0 clean, 1 findings (or warnings with ``--strict``), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from ptycho_torch.evidence import CONFIG, MANIFEST, SUMMARY, digest_file, is_run_id
from ptycho_torch.files import write_atomic
from ptycho_torch.ledger import Ledger, Parts, Record, StepDir, read_ledger, table_of

LEVELS = ("ok", "info", "warning", "finding")
NOT_PRODUCTS = frozenset({"audit"})  # results/<experiment>/<these>/
SNAKEMAKE_FILES = frozenset({"logs", "benchmarks"})  # results/<experiment>/<these>/: sealed
# Rules whose Snakemake files no step can seal: Snakemake writes them while and after the
# step that seals the others runs (nothing in the workflow runs after it)
UNSEALABLE = MappingProxyType({"report": "the report step's own", "study": "the study step's own",
                               "report_with_comparison": "the report step's own",
                               "audit": "the audit's own"})
ALLOWED_IN_REPORTS = frozenset({"latest", ".gitkeep"})
STEP_EVIDENCE = MappingProxyType({"validate": ("payload.json",), "train": ("loss.png",),
                                  "infer": ("reconstruction.png",),
                                  "infer_file": ("reconstruction.png",)})
MANIFEST_KEYS = ("step", "run_id", "experiment", "status", "files", "products", "inputs",
                 "config_hash", "seed", "code", "packages", "host", "slurm_job_id",
                 "started_utc", "ended_utc", "duration_s")
REQUIRED_PACKAGES = ("python", "torch", "numpy", "h5py", "snakemake")

Digest = tuple[int, str]  # size, sha256


@dataclass(frozen=True)
class Row:
    """One line of the audit: a step directory, a product or an entry of the tree."""
    item: str
    kind: str  # "step" | "product" | "tree"
    level: str  # one of LEVELS
    message: str


@dataclass
class Tree:
    """The reports directory as found: structural rows, step and run-directory files."""
    root: Path
    rows: list[tuple[Parts, Row]] = field(default_factory=list)
    steps: list[StepDir] = field(default_factory=list)
    run_files: list[tuple[str, Path]] = field(default_factory=list)  # (run_id, file)


@dataclass(frozen=True)
class Scope:
    root: Path     # the reports directory
    project: Path  # its parent: manifests name products relative to it
    selections: tuple[Parts, ...]  # () = everything

    def covers(self, parts: Parts) -> bool:
        return any(parts[:len(sel)] == sel for sel in self.selections)

    def touches(self, parts: Parts) -> bool:
        """``parts`` lies inside a selection, or a selection lies inside it."""
        return any(parts[:len(s)] == s or s[:len(parts)] == parts for s in self.selections)


@dataclass
class Result:
    rows: list[Row]
    steps: int
    products: int
    bytes_hashed: int
    seconds: float

    def count(self, level: str) -> int:
        return sum(r.level == level for r in self.rows)

    def exit_status(self, strict: bool) -> int:
        bad = self.count("finding") + (self.count("warning") if strict else 0)
        return 1 if bad else 0


# ---------------------------------------------------------------- locating and walking

def locate(path: Path) -> Scope:
    """The reports directory holding ``path`` and what of it ``path`` selects."""
    path = path.resolve()
    if (path / "reports").is_dir():
        return Scope(path / "reports", path, ((),))
    for depth, candidate in enumerate((path, *path.parents[:3])):
        if is_run_id(candidate.name):
            parts = (candidate.name, *path.parts[len(path.parts) - depth:])
            return Scope(candidate.parent, candidate.parent.parent, (parts,))
    return Scope(path, path.parent, ((),))


def rel(path: Path, project: Path) -> str:
    try:
        return path.relative_to(project).as_posix()
    except ValueError:
        return str(path)


def walk(root: Path, project: Path) -> Tree:
    """List run, experiment and step directories; flag whatever else is there."""
    tree = Tree(root)
    for entry in sorted(root.iterdir()):
        item = rel(entry, project)
        if entry.name in ALLOWED_IN_REPORTS:
            continue
        if entry.name.startswith("."):
            tree.rows.append(((), Row(item, "tree", "warning", "hidden file left in reports/")))
        elif entry.is_symlink() or not entry.is_dir():
            tree.rows.append(((), Row(item, "tree", "finding",
                                      "stray: not a run directory (reports/<run_id>/)")))
        elif not is_run_id(entry.name):
            tree.rows.append(((), Row(item, "tree", "finding", f"malformed run id "
                                      f"{entry.name!r}: not a UTC time YYYY-MM-DDTHHMMSSZ")))
        else:
            walk_run(tree, entry, project)
    return tree


def walk_run(tree: Tree, run: Path, project: Path) -> None:
    children = sorted(run.iterdir())
    if not children:
        tree.rows.append(((run.name,), Row(rel(run, project), "tree", "finding",
                                           "empty run directory: no step left evidence")))
    for entry in children:
        if entry.is_file() and not entry.is_symlink():
            tree.run_files.append((run.name, entry))
        elif entry.is_dir() and not entry.is_symlink():
            walk_experiment(tree, entry, project)
        else:
            tree.rows.append(((run.name,), Row(rel(entry, project), "tree", "finding",
                                               "stray: neither a file nor a directory")))


def walk_experiment(tree: Tree, exp: Path, project: Path) -> None:
    parts = (exp.parent.name, exp.name)
    children = sorted(exp.iterdir())
    if not children:
        tree.rows.append((parts, Row(rel(exp, project), "tree", "finding",
                                     "empty experiment directory")))
    for entry in children:
        if entry.is_dir() and not entry.is_symlink():
            tree.steps.append(StepDir(entry, (*parts, entry.name)))
        else:
            tree.rows.append((parts, Row(rel(entry, project), "tree", "finding",
                                         "stray: not a step directory")))


# ---------------------------------------------------------------- hashing

def hash_file(path: Path) -> Digest | str:
    """(size, sha256) of a file, or why it could not be read."""
    try:
        return digest_file(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def hash_files(paths: Iterable[Path], workers: int | None = None) -> dict[Path, Digest | str]:
    """Hash many files; with ``workers`` > 1 on a thread pool (hashlib releases the GIL),
    one batch per thread, balanced by size, so that small files cost no per-task overhead."""
    unique = sorted(set(paths), key=str)
    workers = min(workers or min(4, os.cpu_count() or 1), len(unique))
    if workers <= 1:
        return {p: hash_file(p) for p in unique}
    by_size = sorted(unique, key=lambda p: p.stat().st_size if p.is_file() else 0, reverse=True)
    batches = [by_size[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda batch: [(p, hash_file(p)) for p in batch], batches)
        return dict(pair for batch in done for pair in batch)


def step_listing(step: StepDir) -> tuple[list[Path], list[Path]]:
    """(regular files, other entries) of a step directory."""
    files, others = [], []
    with os.scandir(step.path) as it:
        for entry in sorted(it, key=lambda e: e.name):
            (files if entry.is_file(follow_symlinks=False) else others).append(Path(entry.path))
    return files, others


# ---------------------------------------------------------------- manifests and provenance


def required_evidence(step: str, m: Mapping[str, Any]) -> set[str]:
    """The files a step directory must hold besides its manifest."""
    names = {SUMMARY, f"{step}.log", CONFIG, *STEP_EVIDENCE.get(step, ())}
    if step in ("infer", "infer_file") and any(
            Path(k).name == "metrics.json" for k in table_of(m, "products")):
        names.add("metrics.json")
    if step == "report":
        names |= {Path(k).name for k in table_of(m, "inputs") if k.endswith(".png")}
    return names


# ---------------------------------------------------------------- step checks

def describe_mismatch(found: Digest, size: Any, sha: Any, manifest: str = "the manifest") -> str:
    """How a file differs from its record: truncated, grew, or same size but other bytes."""
    if isinstance(size, int) and found[0] < size:
        return f"truncated: {found[0]} bytes, {manifest} records {size}"
    if isinstance(size, int) and found[0] > size:
        return f"grew: {found[0]} bytes, {manifest} records {size}"
    return f"modified: sha256 {found[1][:12]}..., {manifest} records {str(sha)[:12]}..."


def check_files(m: Mapping[str, Any], files: list[Path], hashes: Mapping[Path, Digest | str],
                step: str) -> list[str]:
    """Findings about the files of one step directory against its manifest."""
    recorded = table_of(m, "files")
    on_disk = {p.name: p for p in files if p.name != MANIFEST}
    out = []
    for name in sorted(set(recorded) | set(on_disk)):
        if name not in on_disk:
            out.append(f"{name}: missing: the manifest lists it, it is not on disk")
        elif name not in recorded:
            out.append(f"{name}: stray: on disk, not in the manifest")
        else:
            found, entry = hashes[on_disk[name]], recorded[name] or {}
            if isinstance(found, str):
                out.append(f"{name}: {found}")
            elif found != (entry.get("size"), entry.get("sha256")):
                out.append(f"{name}: " + describe_mismatch(found, entry.get("size"),
                                                           entry.get("sha256")))
    absent = sorted(required_evidence(step, m) - set(recorded) - set(on_disk))
    out += [f"{name}: required evidence of the {step} step is absent" for name in absent]
    return out


def check_fields(m: Mapping[str, Any]) -> list[str]:
    """Findings about the provenance fields a manifest must hold."""
    out = []
    absent = [k for k in MANIFEST_KEYS if k not in m]
    if absent:
        out.append(f"manifest.json lacks {', '.join(absent)}")
    out += [f"manifest.json: {k} is not a JSON object" for k in ("files", "products", "inputs")
            if k in m and not isinstance(m[k], dict)]
    packages = table_of(m, "packages")
    unversioned = [p for p in REQUIRED_PACKAGES if p not in packages]
    if unversioned:
        out.append(f"manifest.json lacks the versions of {', '.join(unversioned)}")
    if "status" in m and m["status"] != "ok":
        out.append(f"manifest.json: status {m['status']!r}, not 'ok'")
    for name, entry in table_of(m, "products").items():
        if isinstance(entry, dict) and entry.get("missing"):
            out.append(f"{name}: the step recorded its product as missing")
    return out


def code_warnings(m: Mapping[str, Any]) -> list[str]:
    code = table_of(m, "code")
    if code.get("git_commit") in (None, "", "unknown"):
        return ["code version unknown (not run from a git checkout)"]
    if code.get("dirty") is not False:
        return [f"code was dirty (uncommitted changes) at commit {str(code['git_commit'])[:12]}"]
    return []


def check_unfinished(step: StepDir, files: list[Path]) -> list[tuple[str, str]]:
    """A step directory without a manifest: failed (a warning) or incomplete (a finding)."""
    names = {p.name for p in files}
    summary = step.path / SUMMARY
    title = summary.read_text(errors="replace").partition("\n")[0] if summary.is_file() else ""
    failed = "FAILED" in title
    absent = sorted({SUMMARY, f"{step.parts[2]}.log"} - names)
    rows = [("finding", f"{n}: required evidence is absent") for n in absent]
    if failed:
        return rows + [("warning", "failed: summary.md says FAILED (a failed step writes no "
                                   "manifest and keeps no products)")]
    return rows + [("finding", "incomplete: no manifest.json (the step did not finish, or "
                               "its manifest was deleted)")]


def check_step(step: StepDir, ledger: Ledger, files: list[Path], others: list[Path],
               hashes: Mapping[Path, Digest | str]) -> list[tuple[str, str]]:
    """(level, message) pairs for one step directory; empty when it is complete and intact."""
    out = [("finding", f"{p.name}: stray: not a regular file") for p in others]
    if not (step.path / MANIFEST).is_file():
        return out + check_unfinished(step, files)
    if step.parts in ledger.problems:
        return out + [("finding", f"manifest.json: {ledger.problems[step.parts]}")]
    m = ledger.manifests[step.parts]
    out += [("finding", msg) for msg in check_fields(m) + check_files(m, files, hashes,
                                                                      step.parts[2])]
    out += [("finding", msg) for msg in check_inputs(m, ledger)]
    return out + [("warning", msg) for msg in code_warnings(m)]


def check_inputs(m: Mapping[str, Any], ledger: Ledger) -> list[str]:
    """An input that is some step's product must match a version of it some step made."""
    out = []
    for name, entry in table_of(m, "inputs").items():
        made = ledger.producers.get(name, [])
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if made and sha and not any(r.sha256 == sha for r in made):
            out.append(f"input {name}: read with sha256 {sha[:12]}..., which no manifest "
                       "records making (altered before this step read it)")
    return out


def trusted_index(index_file: Path, project: Path, ledger: Ledger,
                  hashes: Mapping[Path, Digest | str]) -> dict[str, Any] | None:
    """A run's index.json, if it is what the report step's (verified) manifest recorded."""
    made = ledger.producers.get(rel(index_file, project), [])
    found = hashes.get(index_file)
    if not made or not isinstance(found, tuple) or (made[-1].size, made[-1].sha256) != found:
        return None  # the product check reports it
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def check_index(run: str, index: Mapping[str, Any], tree: Tree,
                hashes: Mapping[Path, Digest | str]) -> list[tuple[Parts, str]]:
    """Each step of the run index must still be there with the manifest it recorded, and
    no step directory may have joined the run after its report step."""
    exp = index.get("experiment")
    listed = {s.get("step"): s.get("manifest_sha256") for s in index.get("steps", [])
              if isinstance(s, dict)}
    present = {sd.parts[2]: sd for sd in tree.steps if sd.parts[:2] == (run, exp)}
    out = []
    for name, sha in sorted(listed.items(), key=lambda kv: str(kv[0])):
        sd = present.get(name)
        found = hashes.get(sd.path / MANIFEST) if sd else None
        if sd is None:
            out.append(((run, str(exp), str(name)),
                        "step directory missing: the run index lists it"))
        elif sha and isinstance(found, tuple) and found[1] != sha:
            out.append((sd.parts, "manifest.json differs from the one the run index recorded"))
    out += [(sd.parts, "not in the run index: added after the report step ran")
            for name, sd in sorted(present.items()) if name not in listed and name != "report"]
    return out


# ---------------------------------------------------------------- products

def product_candidates(scope: Scope, tree: Tree, ledger: Ledger) -> dict[str, Path]:
    """Product name (as manifests write it) -> path, for everything the scope covers:
    the whole scope: every file under results/ and in run directories; a run or an
    experiment: the results/ of its experiments (and a run's own files); always: the
    products its manifests name."""
    everything = () in scope.selections
    runs = {s[0] for s in scope.selections if len(s) == 1}
    exps = {s[1] for s in scope.selections if len(s) == 2}
    exps |= {sd.parts[1] for sd in tree.steps if sd.parts[0] in runs}
    names: dict[str, Path] = {}
    results = scope.project / "results"
    for path in sorted(results.rglob("*")) if results.is_dir() else []:
        inside = path.relative_to(results).parts
        if path.is_dir() or (len(inside) > 2 and inside[1] in NOT_PRODUCTS):
            continue
        if everything or inside[0] in exps:
            names[rel(path, scope.project)] = path
    for run, path in tree.run_files:
        if everything or run in runs:
            names[rel(path, scope.project)] = path
    for parts, m in ledger.manifests.items():
        if scope.covers(parts):
            for name in [*table_of(m, "products"), *table_of(m, "sealed")]:
                names.setdefault(name, Path(name) if Path(name).is_absolute()
                                 else scope.project / name)
    return names


def check_product(name: str, path: Path, scope: Scope, ledger: Ledger,
                  hashes: Mapping[Path, Digest | str]) -> tuple[str, str]:
    """(level, message) for one product: does the newest manifest recording it match?"""
    made = [r for r in ledger.producers.get(name, []) if r.sha256]
    found = hashes.get(path)
    if found is None:
        return absent_product(name, path, scope, made)
    if isinstance(found, str):
        return "finding", found
    snakemake_file = snakemake_rule(name)
    if not made and snakemake_file:
        return "info", not_covered(snakemake_file)
    if not made:
        return untraced_product(name, found, ledger)
    newest = made[-1]
    verb = "sealed" if newest.sealed else "made"
    if (newest.size, newest.sha256) == found:
        if scope.covers(newest.parts):
            return "ok", f"{verb} by {newest.where}"
        return "info", f"{verb} by another run or step: {newest.where} (its manifest matches)"
    rerun = snakemake_file and later_step(name, newest, ledger)
    if rerun:
        return "warning", (f"changed since {newest.where} sealed it; {rerun} ran later (its rule "
                           "ran again?): not covered until a report or study step seals it")
    return "finding", changed_product(name, found, made, ledger)


def snakemake_rule(name: str) -> str | None:
    """The rule of a Snakemake file ``results/<experiment>/{logs,benchmarks}/<rule>.*``,
    else None."""
    parts = Path(name).parts
    if len(parts) == 4 and parts[0] == "results" and parts[2] in SNAKEMAKE_FILES:
        return Path(parts[3]).stem
    return None


def not_covered(rule: str) -> str:
    """Why no manifest seals the log or benchmark of ``rule``."""
    if rule in UNSEALABLE:
        return (f"not covered: {UNSEALABLE[rule]} Snakemake file, written while and after the "
                "step that seals the others runs")
    return (f"not covered: no report or study step has run after rule {rule!r} (they seal "
            "the log and benchmark of the rules before them)")


def later_step(name: str, seal: Record, ledger: Ledger) -> str | None:
    """A step that made products of the same experiment and started after ``seal`` was
    written (its rule may have rewritten the file since), or None."""
    prefix = "/".join(Path(name).parts[:2]) + "/"  # results/<experiment>/
    later = sorted((str(m.get("started_utc")), "/".join(parts))
                   for parts, m in ledger.manifests.items()
                   if str(m.get("started_utc")) > seal.ended
                   and any(p.startswith(prefix) for p in table_of(m, "products")))
    return later[-1][1] if later else None


def untraced_product(name: str, found: Digest, ledger: Ledger) -> tuple[str, str]:
    """A product no verified manifest records making."""
    if name in ledger.unverified:
        return "finding", (f"not traceable: the manifest of {'/'.join(ledger.unverified[name][-1])}"
                           f", which names it, does not verify")
    read = [r for r in ledger.consumers.get(name, []) if r.sha256 == found[1]]
    if read:
        return "warning", (f"no manifest records making this file (its producing report is "
                           f"missing); {read[-1].where} recorded reading exactly it")
    return "finding", "untraced: no manifest records making this file (stray?)"


def changed_product(name: str, found: Digest, made: list[Record], ledger: Ledger) -> str:
    """How a product differs from what the newest manifest recording it made."""
    newest = made[-1]
    later = [u for u in ledger.unverified.get(name, []) if u[0] >= newest.parts[0]]
    if later:
        return f"not traceable: the newest manifest naming it, {'/'.join(later[-1])}'s, " \
               "does not verify"
    older = [r for r in made[:-1] if r.sha256 == found[1]]
    if older:
        return f"modified: matches what {older[-1].where} made, but {newest.where} remade it later"
    return describe_mismatch(found, newest.size, newest.sha256, f"{newest.where}'s manifest")


def absent_product(name: str, path: Path, scope: Scope, made: list[Record]) -> tuple[str, str]:
    where = made[-1].where if made else "no manifest"
    try:
        inside = path.relative_to(scope.project).parts
    except ValueError:
        return "warning", f"absent, outside the project (made by {where}): not checked"
    if inside[0] == "results" and len(inside) > 2 and not (scope.project / "results" /
                                                           inside[1]).is_dir():
        return "warning", f"results/{inside[1]}/ is absent (cleaned?): not checked"
    verb = "sealed" if made and made[-1].sealed else "made"
    return "finding", f"missing: {verb} by {where}, not on disk"


# ---------------------------------------------------------------- the audit

def check_latest(tree: Tree, project: Path) -> list[Row]:
    latest = tree.root / "latest"
    indexed = sorted(run for run, f in tree.run_files if f.name == "index.md")
    item = rel(latest, project)
    if not latest.is_symlink():
        if latest.exists():
            return [Row(item, "tree", "finding", "not a symbolic link to a run directory")]
        return [Row(item, "tree", "warning", "missing, although a run has an index")] \
            if indexed else []
    target = os.readlink(latest)
    if not (tree.root / target).is_dir() or not is_run_id(Path(target).name) \
            or (tree.root / target).resolve().parent != tree.root.resolve():
        return [Row(item, "tree", "finding", f"points at {target!r}, not a run directory here")]
    if indexed and Path(target).name != indexed[-1]:
        return [Row(item, "tree", "warning",
                    f"points at {target}, the newest run with an index is {indexed[-1]}")]
    return [Row(item, "tree", "ok", f"points at {target}")]


def index_findings(scope: Scope, tree: Tree, ledger: Ledger,
                   hashes: Mapping[Path, Digest | str]) -> list[tuple[Parts, str]]:
    out = []
    for run, f in tree.run_files:
        if f.name == "index.json" and scope.touches((run,)):
            index = trusted_index(f, scope.project, ledger, hashes)
            out += check_index(run, index, tree, hashes) if index else []
    return out


def step_rows(scope: Scope, tree: Tree, ledger: Ledger, listings: dict[Parts, tuple],
              hashes: Mapping[Path, Digest | str]) -> list[Row]:
    """One row per problem of each step directory in scope (one "ok" row if none)."""
    by_index = index_findings(scope, tree, ledger, hashes)
    rows = []
    for sd in tree.steps:
        if sd.parts not in listings:
            continue
        found = check_step(sd, ledger, *listings[sd.parts], hashes)
        found += [("finding", msg) for parts, msg in by_index if parts == sd.parts]
        item = rel(sd.path, scope.project)
        rows += [Row(item, "step", lvl, msg) for lvl, msg in found] or [
            Row(item, "step", "ok", f"{len(listings[sd.parts][0])} files verified")]
    present = {sd.parts for sd in tree.steps}
    return rows + [Row(rel(scope.root.joinpath(*parts), scope.project), "step", "finding", msg)
                   for parts, msg in by_index if parts not in present and scope.covers(parts)]


def audit_scope(scope: Scope, workers: int | None = None) -> Result:
    """Audit what ``scope`` selects of one reports directory (and its results/)."""
    t0 = time.perf_counter()
    tree = walk(scope.root, scope.project)
    ledger = read_ledger(tree.steps)
    listings = {sd.parts: step_listing(sd) for sd in tree.steps if scope.covers(sd.parts)}
    products = product_candidates(scope, tree, ledger)
    indexes = [f for run, f in tree.run_files if f.name == "index.json" and scope.touches((run,))]
    hashes = hash_files([*(p for files, _ in listings.values() for p in files),
                         *(p for p in products.values() if p.is_file()), *indexes], workers)
    rows = [row for parts, row in tree.rows if scope.covers(parts)]
    rows += check_latest(tree, scope.project) if () in scope.selections else []
    rows += step_rows(scope, tree, ledger, listings, hashes)
    rows += [Row(name, "product", *check_product(name, path, scope, ledger, hashes))
             for name, path in sorted(products.items())]
    hashed = sum(d[0] for d in hashes.values() if isinstance(d, tuple))
    return Result(rows, len(listings), len(products), hashed, time.perf_counter() - t0)


def merge_scopes(paths: list[Path]) -> list[Scope]:
    """One scope per reports directory named, with all selections in it."""
    by_root: dict[Path, Scope] = {}
    for path in paths:
        s = locate(path)
        old = by_root.get(s.root)
        by_root[s.root] = s if old is None else Scope(s.root, s.project,
                                                      old.selections + s.selections)
    return list(by_root.values())


def audit(paths: list[Path], workers: int | None = None) -> Result:
    """Audit every path (see the module doc); never writes anything."""
    results = [audit_scope(s, workers) for s in merge_scopes(paths)]
    return Result([r for res in results for r in res.rows], sum(r.steps for r in results),
                  sum(r.products for r in results), sum(r.bytes_hashed for r in results),
                  sum(r.seconds for r in results))


# ---------------------------------------------------------------- output

def table(rows: list[Row]) -> str:
    status = {"ok": "ok", "info": "info", "warning": "WARNING", "finding": "FINDING"}
    header = ("step / product", "status", "finding")
    lines = [(r.item, status[r.level], r.message) for r in rows]
    w0 = max(len(header[0]), *(len(line[0]) for line in lines)) if lines else len(header[0])
    w1 = max(len(s) for s in status.values())
    fmt = f"{{:<{w0}}}  {{:<{w1}}}  {{}}"
    return "\n".join([fmt.format(*header), fmt.format("-" * w0, "-" * w1, "-" * 7),
                      *(fmt.format(*line) for line in lines)])


def summary_line(res: Result, strict: bool) -> str:
    mb = res.bytes_hashed / 1e6
    rate = mb / res.seconds if res.seconds > 0 else 0.0
    verdict = "CLEAN" if res.exit_status(strict) == 0 else "NOT CLEAN"
    return (f"{verdict}: {res.count('finding')} finding(s), {res.count('warning')} warning(s)"
            f"{' (strict: warnings count)' if strict else ''}; {res.steps} step director"
            f"{'y' if res.steps == 1 else 'ies'}, {res.products} products, {mb:.1f} MB hashed "
            f"in {res.seconds:.2f} s ({rate:.0f} MB/s)")


def to_json(res: Result, strict: bool, paths: list[Path]) -> dict[str, Any]:
    return {"paths": [str(p) for p in paths], "strict": strict,
            "clean": res.exit_status(strict) == 0, "exit_status": res.exit_status(strict),
            "counts": {level: res.count(level) for level in LEVELS},
            "stats": {"steps": res.steps, "products": res.products,
                      "bytes_hashed": res.bytes_hashed, "seconds": round(res.seconds, 4)},
            "rows": [asdict(r) for r in res.rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="*", metavar="PATH",
                        help="project, reports, run, experiment or step directory "
                             "(default: reports)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--json-out", type=Path, metavar="FILE",
                        help="also write the JSON to FILE (atomically)")
    parser.add_argument("--strict", action="store_true", help="warnings count as findings")
    parser.add_argument("--workers", type=int, help="hashing threads (default: up to 4)")
    args = parser.parse_args(argv)
    paths = args.paths or [Path("reports")]
    missing = [p for p in paths if not p.is_dir()]
    if missing:
        for p in missing:
            print(f"error: {p}: no such directory", file=sys.stderr)
        return 2
    try:
        res = audit(paths, args.workers)
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    doc = to_json(res, args.strict, paths)
    if args.json_out:
        write_atomic(args.json_out, json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(res.rows))
        print(summary_line(res, args.strict))
    return res.exit_status(args.strict)


if __name__ == "__main__":
    raise SystemExit(main())
