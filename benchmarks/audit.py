"""Throughput of the artifact audit, next to ``sha256sum`` on the same files.

    python benchmarks/audit.py [--steps 1000] [--evidence-kb 256] [--product-kb 1024]
                               [--repeats 3] [--keep]

Builds a reports/ + results/ tree of ``--steps`` step reports in a temporary directory
(real manifests written by :class:`ptycho_torch.evidence.StepReport`: 5 steps per run and
experiment, 4 experiments, as many runs as needed; each step directory holds its summary,
log, config and one evidence file of ``--evidence-kb``; each step rewrites one product of
``--product-kb`` in results/ and reads the previous step's). Then, with the files in the
page cache (one untimed pass first), best of ``--repeats``:

* ``sha256sum``: coreutils over the files the audit hashes (one process, via xargs);
* ``hash_files``: the audit's hashing alone, on 1 thread and on its default pool;
* ``audit``: ``ptycho_torch.audit.audit`` end to end (walk, manifests, hashing, checks).

MB/s counts hashed bytes (1 MB = 10^6 bytes). Target: audit >= 0.8 x sha256sum.
Prints a table, then the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from ptycho_torch import audit
from ptycho_torch.evidence import StepReport, environment, new_run_id
from ptycho_torch.files import write_atomic

REPO = Path(__file__).resolve().parents[1]

STEPS = ("prepare", "fit", "predict", "score", "summarize")
EXPERIMENTS = ("alpha", "beta", "gamma", "delta")


def make_tree(project: Path, n_steps: int, evidence_bytes: int, product_bytes: int,
              env: dict | None = None) -> Path:
    """``n_steps`` step reports under ``project/reports`` (products under results/), all
    with the provenance ``env`` (default: this process's, computed once); returns the
    reports directory. The steps run with ``project`` as the working directory."""
    env = env or environment()
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    old_cwd = os.getcwd()
    os.chdir(project)
    try:
        done, run = 0, 0
        while done < n_steps:
            run_dir = Path("reports") / new_run_id(start + timedelta(minutes=run))
            for exp in EXPERIMENTS:
                for i, step in enumerate(STEPS[:n_steps - done]):
                    make_step(run_dir / exp / step, step, exp, i, env, evidence_bytes,
                              product_bytes)
                    done += 1
                if done >= n_steps:
                    break
            run += 1
    finally:
        os.chdir(old_cwd)
    return project / "reports"


def make_step(directory: Path, step: str, exp: str, i: int, env: dict, evidence_bytes: int,
              product_bytes: int) -> None:
    directory.mkdir(parents=True)
    product = Path("results", exp, step, "product.bin")
    inputs = [Path("results", exp, STEPS[i - 1], "product.bin")] if i else []
    rep = StepReport(directory, step, [product], config_hash="0" * 64, seed=i,
                     inputs=inputs, environment=env)
    rep.write_json("config.json", {"experiment": exp, "step": step})
    (directory / f"{step}.log").write_text(f"{step}: synthetic step for the audit benchmark\n")
    (directory / "evidence.bin").write_bytes(os.urandom(evidence_bytes))
    write_atomic(product, os.urandom(product_bytes))
    rep.record({"index": i})
    rep.verdict = "synthetic"
    rep.finish(ok=True)


def hashed_files(project: Path) -> list[Path]:
    """What the audit of the whole tree hashes: every file of reports/ and results/."""
    return sorted(p for top in ("reports", "results") for p in (project / top).rglob("*")
                  if p.is_file() and not p.is_symlink())


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sha256sum(files: list[Path]) -> None:
    listing = b"\0".join(str(p).encode() for p in files)
    subprocess.run(["xargs", "-0", "sha256sum"], input=listing, stdout=subprocess.DEVNULL,
                   check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--evidence-kb", type=int, default=256)
    parser.add_argument("--product-kb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    args = parser.parse_args(argv)
    if not shutil.which("sha256sum"):
        print("sha256sum not found", file=sys.stderr)
        return 2
    project = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    try:
        t0 = time.perf_counter()
        reports = make_tree(project, args.steps, args.evidence_kb * 1024, args.product_kb * 1024)
        built = time.perf_counter() - t0
        files = hashed_files(project)
        total = sum(p.stat().st_size for p in files)
        sha256sum(files)  # untimed: page cache warm for everyone
        check = audit.audit([reports])
        if check.count("finding") or check.steps != args.steps:
            print(audit.table([r for r in check.rows if r.level == "finding"][:20]))
            print(f"the generated tree does not audit clean ({check.count('finding')} "
                  f"finding(s), {check.steps} steps)", file=sys.stderr)
            return 1
        rows = measure(files, reports, args.repeats, check.bytes_hashed)
    finally:
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)
    report(rows, args, len(files), total, built, project if args.keep else None)
    return 0


def measure(files: list[Path], reports: Path, repeats: int, audit_bytes: int) -> list[dict]:
    total = sum(p.stat().st_size for p in files)
    pool = min(4, os.cpu_count() or 1)
    timings = [
        ("sha256sum (coreutils, xargs)", total, best_of(repeats, lambda: sha256sum(files))),
        ("hash_files, 1 thread", total,
         best_of(repeats, lambda: audit.hash_files(files, workers=1))),
        (f"hash_files, {pool} threads", total,
         best_of(repeats, lambda: audit.hash_files(files, workers=pool))),
        ("audit (end to end)", audit_bytes, best_of(repeats, lambda: audit.audit([reports]))),
    ]
    base = total / 1e6 / timings[0][2]
    return [{"method": name, "mb": round(nbytes / 1e6, 1), "seconds": round(sec, 3),
             "mb_per_s": round(nbytes / 1e6 / sec, 1),
             "vs_sha256sum": round(nbytes / 1e6 / sec / base, 2)}
            for name, nbytes, sec in timings]


def report(rows: list[dict], args: argparse.Namespace, n_files: int, total: int, built: float,
           kept: Path | None) -> None:
    print(f"audit benchmark: {args.steps} step reports, {n_files} files, {total / 1e6:.1f} MB "
          f"(built in {built:.1f} s{f', kept in {kept}' if kept else ''}); "
          f"best of {args.repeats}, warm page cache, {os.cpu_count()} CPU(s)")
    print(f"{'method':<30} {'MB':>8} {'s':>8} {'MB/s':>8} {'x sha256sum':>12}")
    for r in rows:
        print(f"{r['method']:<30} {r['mb']:>8.1f} {r['seconds']:>8.3f} {r['mb_per_s']:>8.1f} "
              f"{r['vs_sha256sum']:>12.2f}")
    ratio = rows[-1]["vs_sha256sum"]
    print(f"audit / sha256sum = {ratio:.2f} (target >= 0.8): {'met' if ratio >= 0.8 else 'MISSED'}")
    print(json.dumps({"benchmark": "audit", "steps": args.steps, "files": n_files,
                      "bytes": total, "repeats": args.repeats, "cpus": os.cpu_count(),
                      "rows": rows, "audit_vs_sha256sum": ratio, "target": 0.8}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
