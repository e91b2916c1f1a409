"""Quality and time of the three methods: PINN, supervised baseline, iterative pty-chi reference.

    python benchmarks/compare.py [--tiny] [--keep]

Runs ``snakemake compare`` of the default experiment (or tests/configs/tiny.yaml with
--tiny) from scratch in a temporary copy of the workflow: simulate, train the PINN and the
supervised baseline, reconstruct the test set with both, with pty-chi and with the hybrid
(pty-chi started from the PINN's object), compare
(``python -m ptycho_torch.compare``). From its ``comparison.json``:

* per method: amplitude and phase PSNR (dB), training and reconstruction seconds (each
  step's own measurement: the PINN's network + stitching, pty-chi's solver);
* speed-up: the seconds pty-chi needed to reach the PINN's amplitude and phase PSNR (its
  first scored checkpoint at or above both) over the PINN's reconstruction seconds (> 1:
  the trained PINN reconstructs a new scan faster than pty-chi reaches its quality; null
  when pty-chi did not reach it within ``iterative.epochs``);
* quality gap: PINN minus pty-chi PSNR after all its epochs, amplitude and phase (dB);
* the hybrid (pty-chi from the PINN's object, the PINN's reconstruction time included):
  its time to pty-chi's final amplitude and phase PSNR less 0.5 dB, pty-chi's own time to
  it from its default start, and their ratio (< 1: the hybrid is faster);
* break-even: scans after which training once plus reconstructing each costs less than
  pty-chi per scan, at the PINN's quality (the PINN) and at pty-chi's (the hybrid);
* wall: the whole ``snakemake compare`` invocation (all steps, training included).

Without pty-chi (``make iterative``) the iterative figures are null. Timings on these
shared machines vary by up to +-50 % between runs. Prints a table, then the same as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import experiment_name, run_snakemake, workflow_benchmark_cli

from ptycho_torch.formatting import number

PARTS = ("amplitude", "phase")


def run_compare(workdir: Path, tiny: bool) -> tuple[dict[str, Any], float]:
    """``snakemake compare`` in ``workdir``: (its comparison.json, wall seconds)."""
    wall = run_snakemake(workdir, tiny, "compare")
    path = workdir / f"results/{experiment_name(tiny)}/compare/comparison.json"
    return json.loads(path.read_text()), wall


def summary(comparison: dict[str, Any], wall: float) -> dict[str, Any]:
    """The headline figures of one comparison (see the module docstring)."""
    methods = {m["name"]: m for m in comparison["methods"]}
    pinn, it = methods["pinn"], methods.get("iterative")
    usable = it is not None and not it["unavailable"]
    match = next((q for q in comparison["time_to_quality"]
                  if q["method"] == "iterative" and q["matches"] == "pinn"), None)
    reached = bool(match and match["reached"])
    return {
        "benchmark": "compare", "experiment": comparison["experiment"], "wall_s": wall,
        "methods": {name: {**{f"{p}_psnr_db": m[p]["psnr"] for p in PARTS},
                           "training_seconds": m["training_seconds"],
                           "reconstruction_seconds": m["reconstruction_seconds"],
                           "unavailable": m["unavailable"]} for name, m in methods.items()},
        "pinn_reconstruction_seconds": pinn["reconstruction_seconds"],
        "iterative_seconds_to_pinn_quality": match["seconds"] if reached else None,
        "iterative_epochs_to_pinn_quality": match["epoch"] if reached else None,
        "speedup_pinn_vs_iterative_at_equal_quality": (
            match["seconds"] / pinn["reconstruction_seconds"]
            if reached and pinn["reconstruction_seconds"] else None),
        "quality_gap_pinn_minus_iterative_db": (
            {p: pinn[p]["psnr"] - it[p]["psnr"] for p in PARTS} if usable else None),
        **hybrid_figures(comparison),
        "verdict": comparison["verdict"]}


def hybrid_figures(comparison: dict[str, Any]) -> dict[str, Any]:
    """The hybrid's time to the iterative method's final quality (its final PSNR - 0.5 dB)
    against the iterative method's own, their ratio, and the break-even scan counts."""
    finals = {(f["method"], f["target_of"]): f for f in comparison.get("time_to_final_quality", [])}
    hy, it = (finals.get((m, "iterative"), {}) for m in ("pinn_iterative", "iterative"))
    seconds = {"hybrid": hy.get("seconds"), "iterative": it.get("seconds")}
    even = {b["method"]: b["scans"] for b in comparison.get("break_even", [])
            if b["against"] == "iterative"}
    return {"hybrid_seconds_to_iterative_quality": seconds["hybrid"],
            "hybrid_epochs_to_iterative_quality": hy.get("epoch"),
            "iterative_seconds_to_own_final_quality": seconds["iterative"],
            "hybrid_over_iterative_time_to_iterative_quality": (
                seconds["hybrid"] / seconds["iterative"] if None not in seconds.values()
                else None),
            "break_even_scans_at_pinn_quality": even.get("pinn"),
            "break_even_scans_at_iterative_quality": even.get("pinn_iterative")}


def print_table(r: dict[str, Any]) -> None:
    print(f"method comparison, experiment {r['experiment']!r} (snakemake compare: "
          f"{r['wall_s']:.0f} s wall)")
    print(f"{'method':15s} {'amp PSNR dB':>12s} {'phase PSNR dB':>14s} {'train s':>9s} "
          f"{'recon s':>9s}")
    for name, m in r["methods"].items():
        note = f"  ({m['unavailable']})" if m["unavailable"] else ""
        print(f"{name:15s} {number(m['amplitude_psnr_db']):>12s} "
              f"{number(m['phase_psnr_db']):>14s} {number(m['training_seconds']):>9s} "
              f"{number(m['reconstruction_seconds']):>9s}{note}")
    print(f"iterative to the PINN's quality: {number(r['iterative_seconds_to_pinn_quality'])} s "
          f"({number(r['iterative_epochs_to_pinn_quality'])} epochs) vs PINN "
          f"{number(r['pinn_reconstruction_seconds'])} s: speed-up "
          f"{number(r['speedup_pinn_vs_iterative_at_equal_quality'])}")
    gap = r["quality_gap_pinn_minus_iterative_db"] or {}
    print(f"quality gap PINN - iterative: amplitude {number(gap.get('amplitude'))} dB, "
          f"phase {number(gap.get('phase'))} dB")
    print(f"to the iterative method's final PSNR - 0.5 dB: hybrid (PINN time included) "
          f"{number(r['hybrid_seconds_to_iterative_quality'])} s "
          f"({number(r['hybrid_epochs_to_iterative_quality'])} epochs), iterative from its "
          f"own start {number(r['iterative_seconds_to_own_final_quality'])} s: ratio "
          f"{number(r['hybrid_over_iterative_time_to_iterative_quality'])}")
    print(f"break-even against the iterative method: {number(r['break_even_scans_at_pinn_quality'])}"
          f" scans at the PINN's quality (PINN), "
          f"{number(r['break_even_scans_at_iterative_quality'])} at the iterative quality "
          "(hybrid)")


def main() -> None:
    workflow_benchmark_cli(__doc__, "ptycho-bench-compare-",
                           lambda d, tiny: summary(*run_compare(d, tiny)), print_table)


if __name__ == "__main__":
    main()
