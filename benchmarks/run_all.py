"""Every benchmark in one run, one table of figures and ratios: ``make bench``.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--out FILE]

Runs the benchmark scripts of this folder one after another, each in its own process and
never two at once (they time the machine): ``simulate``, ``train``, ``infer``, ``audit``,
``pipeline`` (the default experiment end to end) and ``compare`` (PINN, supervised
baseline and iterative pty-chi reference, ``snakemake compare`` of the default
experiment). Each script prints a table and then, last, one JSON object; this collects
those objects, prints one table of the headline figures (below) and writes everything,
the headline rows and each script's whole JSON, to ``benchmarks/runs/<UTC time>.json``
(git-ignored; ``--out`` names another file) for tracking over time.

Headline figures (a script that fails or lacks a figure shows "n/a" and the run goes on;
the exit status is 1 if any script failed):

* pipeline: end-to-end wall time of ``snakemake`` on the default experiment, and the
  share of it spent outside the steps' own work (Snakemake and process start-up);
* training: patterns/s of the train step's loop and its ratio to a bare
  forward/backward/step loop (target >= 0.8), per pattern size;
* inference: patterns/s of the infer step's path (counts to stitched object) and the cost of
  everything after the network against the network (target <= 1);
* PINN inference time vs pty-chi's time to equal quality (the speed-up; > 1: the PINN is
  faster; target >= 10), the quality gap PINN - pty-chi in dB (amplitude, phase), the
  hybrid's time to pty-chi's final quality over pty-chi's own (target <= 1/3), and the
  break-even scan counts (PINN and hybrid against pty-chi);
* simulation and audit throughput ratios (against a bare FFT + exact Poisson draws,
  target >= 0.8, and ``sha256sum``).

``--quick``: small sizes everywhere and the tiny experiment for the pipeline and the
comparison (minutes instead of ~30 min on 2 CPU cores; the figures are then not the
default experiment's). Timings on shared machines vary by up to +-50 % between runs; the
ratios, measured side by side within one script, much less.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ptycho_torch.formatting import number

HERE = Path(__file__).resolve().parent
# name -> (arguments, arguments with --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "simulate": ([], ["--repeats", "3", "--quick"]),
    "train": ([], ["--sizes", "32", "--repeats", "3", "--no-memory"]),
    "infer": ([], ["--repeats", "3", "--end-to-end", "1"]),
    "audit": ([], ["--steps", "200", "--repeats", "2"]),
    "pipeline": ([], ["--tiny"]),
    "compare": ([], ["--tiny"]),
}
Row = tuple[str, Any, str]  # figure, value, unit or note


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last JSON object a script printed: from the last line opening one, to the end."""
    lines = stdout.rstrip().splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                return json.loads("\n".join(lines[start:]))
            except json.JSONDecodeError:
                continue
    return None


def run(name: str, args: list[str]) -> tuple[dict[str, Any] | None, float, str]:
    """Run ``benchmarks/<name>.py ARGS``; (its JSON or None, wall seconds, error text)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args], cwd=HERE.parent,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    sys.stdout.write(out.stdout)
    result = last_json(out.stdout) if out.returncode == 0 else None
    error = "" if result else (f"exit {out.returncode}: {out.stderr.strip()[-500:]}"
                               if out.returncode else "no JSON object at the end of its output")
    return result, seconds, error


def _get(d: Any, *path: Any) -> Any:
    """``d[path[0]][path[1]]...``, or None where a key or index is missing."""
    for key in path:
        try:
            d = d[key]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def headline(results: dict[str, dict[str, Any] | None]) -> list[Row]:
    """The figures of the module docstring, from each script's JSON."""
    p, t, i, c = (results.get(k) or {} for k in ("pipeline", "train", "infer", "compare"))
    s, a = results.get("simulate") or {}, results.get("audit") or {}
    share = _get(p, "outside_steps_share")
    rows: list[Row] = [
        (f"pipeline end to end ({_get(p, 'experiment') or 'n/a'})", _get(p, "wall_s"), "s"),
        ("pipeline overhead share (outside the steps' own work)",
         None if share is None else 100 * share, "%")]
    for r in _get(t, "results") or [{}]:
        n = r.get("N", "?")
        rows += [(f"training patterns/s (N={n})", r.get("real_patterns_per_s"), "patterns/s"),
                 (f"training / bare loop (N={n})", r.get("ratio"), "ratio, target >= 0.8")]
    rows += [
        ("inference patterns/s", _get(i, "result", "real_patterns_per_s"), "patterns/s"),
        ("sync + calibration + stitching / network",
         _get(i, "result", "after_network_over_network"), "ratio, target <= 1"),
        (f"PINN reconstruction ({_get(c, 'experiment') or 'n/a'})",
         _get(c, "pinn_reconstruction_seconds"), "s"),
        ("pty-chi to the PINN's quality", _get(c, "iterative_seconds_to_pinn_quality"), "s"),
        ("speed-up PINN vs pty-chi at equal quality",
         _get(c, "speedup_pinn_vs_iterative_at_equal_quality"), "x (> 1: PINN faster)"),
        ("quality gap PINN - pty-chi, amplitude",
         _get(c, "quality_gap_pinn_minus_iterative_db", "amplitude"), "dB"),
        ("quality gap PINN - pty-chi, phase",
         _get(c, "quality_gap_pinn_minus_iterative_db", "phase"), "dB"),
        ("hybrid / pty-chi time to pty-chi's final PSNR - 0.5 dB",
         _get(c, "hybrid_over_iterative_time_to_iterative_quality"), "ratio, target <= 1/3"),
        ("break-even scans, PINN vs pty-chi at the PINN's quality",
         _get(c, "break_even_scans_at_pinn_quality"), "scans"),
        ("break-even scans, hybrid vs pty-chi at pty-chi's quality",
         _get(c, "break_even_scans_at_iterative_quality"), "scans"),
        ("simulation / FFT+Poisson bound", _ratio(s, "ratio_to_fft_poisson_bound", "simulate"),
         "ratio, target >= 0.8"),
        ("audit hashing / sha256sum", _get(a, "audit_vs_sha256sum"), "ratio, target >= 0.8")]
    return rows


def _ratio(d: dict[str, Any], key: str, stage: str) -> Any:
    """``d[key]``, or ``d[key][stage]`` where the script keeps one ratio per stage."""
    v = _get(d, key)
    return v.get(stage) if isinstance(v, dict) else v


def table(rows: list[Row], fmt: Callable[[Any], str]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {fmt(value):>10}  {unit}" for name, value, unit in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, tiny experiment")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/runs/<time>.json)")
    args = parser.parse_args()
    started = datetime.now(timezone.utc)
    results, seconds, errors = {}, {}, {}
    for name in args.only or BENCHMARKS:
        print(f"=== benchmarks/{name}.py", flush=True)
        results[name], seconds[name], error = run(name, BENCHMARKS[name][bool(args.quick)])
        if error:
            errors[name] = error
            print(f"benchmarks/{name}.py failed: {error}", file=sys.stderr)
    rows = headline(results)
    print(f"\n=== summary ({'quick' if args.quick else 'full'} run, started "
          f"{started:%Y-%m-%d %H:%M:%S} UTC)")
    print(table(rows, number))
    if errors:
        print("failed: " + ", ".join(errors))
    out = args.out or HERE / "runs" / f"{started:%Y-%m-%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"started_utc": started.isoformat(), "quick": args.quick,
              "headline": [{"figure": f, "value": v, "unit": u} for f, v, u in rows],
              "seconds": seconds, "errors": errors, "results": results}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"written: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
