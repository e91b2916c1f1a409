"""End-to-end cost of the Snakemake pipeline and the share spent outside the steps' compute.

    python benchmarks/pipeline.py [--tiny] [--keep]

Runs the default experiment (or tests/configs/tiny.yaml with --tiny) from scratch in a
temporary copy of the workflow and compares three clocks:

* wall: the whole ``snakemake`` invocation;
* jobs: Snakemake's benchmark files (results/<exp>/benchmarks/<step>.tsv, column ``s``):
  each job's process from start to exit, interpreter start and imports included;
* steps: the manifests' ``duration_s``: each step's own work, after its imports.

wall - jobs is Snakemake's own cost (DAG, scheduling, bookkeeping); jobs - steps is the
per-process start-up (Python, ``import torch``). Prints a table, then the same as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "workflow", "config", "profiles", "ptycho_torch", "tests/configs")
STEPS = ("simulate", "validate", "train", "infer", "report")
T = TypeVar("T")


def copy_workflow(dest: Path) -> None:
    for name in PARTS:
        src, dst = REPO / name, dest / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)


def in_workflow_copy(prefix: str, keep: bool, work: Callable[[Path], T]) -> T:
    """``work(dir)`` in a fresh temporary copy of the workflow, removed afterwards unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        copy_workflow(workdir)
        return work(workdir)
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def experiment_name(tiny: bool) -> str:
    return "tiny" if tiny else "default"


def run_snakemake(workdir: Path, tiny: bool, *targets: str) -> float:
    """``snakemake [targets]`` of the default (or tiny) experiment in ``workdir``, from scratch
    and with a new run id; returns its wall seconds, exits with Snakemake's output on failure."""
    args = ["--configfile", "tests/configs/tiny.yaml"] if tiny else []
    env = {k: v for k, v in os.environ.items() if k != "PTYCHO_RUN_ID"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local",
                          *targets, *args], cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"snakemake {' '.join(targets)} failed:\n{out.stdout[-3000:]}\n"
                 f"{out.stderr[-3000:]}")
    return wall


def measure(workdir: Path, tiny: bool) -> dict:
    """Run the pipeline once in ``workdir``; returns the clocks per step and in total."""
    wall = run_snakemake(workdir, tiny)
    exp = experiment_name(tiny)
    (run_dir,) = [p for p in (workdir / "reports").iterdir() if not p.is_symlink()]
    steps = {}
    for step in STEPS:
        manifest = json.loads((run_dir / exp / step / "manifest.json").read_text())
        with open(workdir / "results" / exp / "benchmarks" / f"{step}.tsv") as f:
            job_s = float(next(csv.DictReader(f, delimiter="\t"))["s"])
        steps[step] = {"step_s": manifest["duration_s"], "job_s": job_s}
    step_s = sum(s["step_s"] for s in steps.values())
    job_s = sum(s["job_s"] for s in steps.values())
    return {"experiment": exp, "wall_s": round(wall, 2), "jobs_s": round(job_s, 2),
            "steps_s": round(step_s, 2), "steps": steps,
            "outside_steps_share": round((wall - step_s) / wall, 3),
            "snakemake_share": round((wall - job_s) / wall, 3),
            "process_startup_share": round((job_s - step_s) / wall, 3)}


def print_table(r: dict) -> None:
    print(f"pipeline benchmark, experiment {r['experiment']!r}")
    print(f"{'step':10s} {'job (s)':>9s} {'step (s)':>9s} {'start-up (s)':>13s}")
    for name, s in r["steps"].items():
        print(f"{name:10s} {s['job_s']:9.2f} {s['step_s']:9.2f} {s['job_s'] - s['step_s']:13.2f}")
    startup = r["jobs_s"] - r["steps_s"]
    print(f"{'total':10s} {r['jobs_s']:9.2f} {r['steps_s']:9.2f} {startup:13.2f}")
    print(f"wall time {r['wall_s']:.2f} s; outside the steps' own work: "
          f"{100 * r['outside_steps_share']:.1f} % (Snakemake {100 * r['snakemake_share']:.1f} %, "
          f"process start-up {100 * r['process_startup_share']:.1f} %)")


def workflow_benchmark_cli(doc: str, prefix: str, work: Callable[[Path, bool], dict],
                           show: Callable[[dict], None]) -> None:
    """The command line of the benchmarks that run the workflow (this one, compare.py):
    ``--tiny`` and ``--keep``; ``work(copy, tiny)`` in a temporary workflow copy, then the
    table (``show``) and, last, the same as JSON."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test experiment")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    result = in_workflow_copy(prefix, args.keep, lambda d: work(d, args.tiny))
    show(result)
    print(json.dumps(result, indent=2))


def main() -> None:
    workflow_benchmark_cli(__doc__, "ptycho-bench-", measure, print_table)


if __name__ == "__main__":
    main()
