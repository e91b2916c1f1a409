"""A larger scan as a beamline would give it: the infer step's wall time against pty-chi's.

    python benchmarks/large_scan.py [--keep] [--no-iterative] [--epochs 8]

Simulates, in a temporary copy of the workflow, a scan of about 1,000 patterns of 64 x 64
px: a probe read from a file (``probe.npy``, written here: a focused disk whose pupil
carries a smooth aberration, 3 mm out of focus), a dense Fermat-spiral scan (irregular,
3.5 px mean step), and a Gaussian-random-field object whose features span several sizes
(``spectral_slope`` 2.5, features from ~4 px up). Then ``snakemake infer iterative`` of
that experiment: the PINN trained for ``--epochs`` (default 8), the infer step on the test
scan with the default inference settings, and pty-chi's 100 LSQML epochs on the same file.

Prints, from the Snakemake benchmark files (``results/<exp>/benchmarks/<step>.tsv``: each
job's process wall time, interpreter start included) and the steps' manifests and
``metrics.json``:

* the infer step's wall time and its reconstruction seconds (counts to stitched object);
* pty-chi's 100-epoch solver seconds and its job's wall time;
* their ratio (issue #16 target: infer wall <= 1/5 of pty-chi's 100 epochs);
* the same infer step run again, straight after, with ``inference.half_data_frc: false``
  (no resolution estimate: about one reconstruction less), and its ratio;
* amplitude and phase PSNR of both, and the epochs and seconds pty-chi needed to reach the
  PINN's.

``--no-iterative`` runs only up to infer (e.g. to measure an older checkout of the pipeline
on the same data: the simulation and training are deterministic). Timings on these shared
machines vary by up to +-50 % between runs. Prints a table, then the same as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline import in_workflow_copy, run_snakemake

EXP = "large_scan"
N = 64


def probe_file(path: Path) -> None:
    """A 64 x 64 complex probe: disk pupil (radius 9 px) with a smooth aberration (0.6 rad
    of astigmatism and coma), focused, Fresnel-propagated by 3 mm at 8 keV, 2 m, 75 um."""
    import torch

    from ptycho_torch import physics
    k = (np.arange(N) - N // 2) / 9.0
    u, v = np.meshgrid(k, k, indexing="ij")
    pupil = (u ** 2 + v ** 2 <= 1.0) * np.exp(1j * 0.6 * (u ** 2 - v ** 2 + u * (u ** 2 + v ** 2)))
    focus = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil), norm="ortho"))
    pixel = physics.object_pixel_size_m(8000.0, 2.0, 75e-6, N)
    probe = physics.fresnel_propagate(torch.from_numpy(focus), 3e-3,
                                      physics.wavelength_m(8000.0), pixel).numpy()
    np.save(path, probe.astype(np.complex64))


def overlay(epochs: int) -> dict[str, Any]:
    return {"experiment": EXP,
            "data": {"N": N, "probe": {"kind": "file", "file": "probe.npy"},
                     "scan": {"kind": "fermat", "step_px": 3.5},
                     "object": {"train_size_px": 176, "test_size_px": 176,
                                "spectral_slope": 2.5, "feature_size_px": 4.0}},
            "training": {"epochs": epochs}}


def job_seconds(workdir: Path, step: str) -> float:
    with open(workdir / f"results/{EXP}/benchmarks/{step}.tsv") as f:
        return float(next(csv.DictReader(f, delimiter="\t"))["s"])


def manifest_numbers(workdir: Path, step: str) -> dict[str, Any]:
    (run_dir,) = [p for p in (workdir / "reports").iterdir() if not p.is_symlink()
                  and p.is_dir() and p.name != "without_frc"]
    return json.loads((run_dir / EXP / step / "manifest.json").read_text())["numbers"]


def psnr(workdir: Path, step: str) -> dict[str, float]:
    m = json.loads((workdir / f"results/{EXP}/{step}/metrics.json").read_text())
    return {p: m[p]["psnr"] for p in ("amplitude", "phase")}


def infer_without_frc(workdir: Path) -> float:
    """Wall seconds (interpreter start included, as Snakemake's benchmark files) of the infer
    step on the same model and test file with ``inference.half_data_frc: false``."""
    results = f"results/{EXP}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptycho_torch.infer", "--model",
                    f"{results}/train/model.pt", "--data", f"{results}/simulate/test.cxi",
                    "--out-dir", f"{results}/infer_without_frc", "--set",
                    "inference.half_data_frc=false", "--threads", "2", "--report-dir",
                    f"reports/without_frc/{EXP}/infer"], cwd=workdir, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def measure(workdir: Path, epochs: int, iterative: bool) -> dict[str, Any]:
    probe_file(workdir / "probe.npy")
    (workdir / "large.yaml").write_text(yaml.safe_dump(overlay(epochs)))
    targets = ["infer", "iterative"] if iterative else ["infer"]
    wall = run_snakemake(workdir, False, *targets, "--configfile", "large.yaml")
    infer = manifest_numbers(workdir, "infer")
    out: dict[str, Any] = {
        "experiment": EXP, "patterns": infer["patterns"], "training_epochs": epochs,
        "snakemake_wall_s": wall, "train_job_s": job_seconds(workdir, "train"),
        "infer_job_s": job_seconds(workdir, "infer"),
        "infer_reconstruction_s": infer["reconstruction_seconds"],
        "infer_parts_s": {k[:-len("_seconds")]: v for k, v in infer.items()
                          if k.endswith("_seconds") and k != "reconstruction_seconds"},
        "pinn_psnr_db": psnr(workdir, "infer"),
        "infer_job_without_half_data_frc_s": infer_without_frc(workdir)}
    if iterative:
        it = manifest_numbers(workdir, "iterative")
        metrics = json.loads((workdir / f"results/{EXP}/iterative/metrics.json").read_text())
        target = out["pinn_psnr_db"]
        reach = next((c for c in metrics["convergence"]
                      if all(c[p]["psnr"] >= target[p] for p in target)), None)
        out.update({"iterative_solver_s": it["reconstruction_seconds"],
                    "iterative_job_s": job_seconds(workdir, "iterative"),
                    "iterative_epochs": it["epochs"], "iterative_psnr_db": psnr(workdir, "iterative"),
                    "iterative_to_pinn_quality": (
                        {"epoch": reach["epoch"], "seconds": reach["seconds"]} if reach else None),
                    "infer_job_over_iterative_solver": out["infer_job_s"] / it["reconstruction_seconds"],
                    "infer_job_without_half_data_frc_over_iterative_solver":
                        out["infer_job_without_half_data_frc_s"] / it["reconstruction_seconds"]})
    return out


def print_table(r: dict[str, Any]) -> None:
    print(f"large scan: {r['patterns']} patterns of {N} x {N}, PINN trained "
          f"{r['training_epochs']} epochs (snakemake: {r['snakemake_wall_s']:.0f} s wall)")
    print(f"  train job: {r['train_job_s']:.1f} s")
    print(f"  infer job: {r['infer_job_s']:.1f} s wall; reconstruction "
          f"{r['infer_reconstruction_s']:.2f} s (" + ", ".join(
              f"{k} {v:.2f}" for k, v in r["infer_parts_s"].items()) + ")")
    q = r["pinn_psnr_db"]
    print(f"  PINN: amplitude {q['amplitude']:.2f} dB, phase {q['phase']:.2f} dB")
    print(f"  infer job without the half-data FRC: {r['infer_job_without_half_data_frc_s']:.1f} s")
    if "iterative_solver_s" not in r:
        return
    q, reach = r["iterative_psnr_db"], r["iterative_to_pinn_quality"]
    print(f"  pty-chi: {r['iterative_epochs']} epochs in {r['iterative_solver_s']:.1f} s "
          f"(job {r['iterative_job_s']:.1f} s): amplitude {q['amplitude']:.2f} dB, phase "
          f"{q['phase']:.2f} dB; the PINN's PSNR after "
          + (f"{reach['epoch']} epochs, {reach['seconds']:.1f} s" if reach else "- (not reached)"))
    print(f"  infer job / pty-chi's {r['iterative_epochs']} epochs: "
          f"{r['infer_job_over_iterative_solver']:.3f} (target <= 0.2); without the half-data "
          f"FRC {r['infer_job_without_half_data_frc_over_iterative_solver']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-iterative", dest="iterative", action="store_false",
                        help="stop after infer (no pty-chi)")
    parser.add_argument("--epochs", type=int, default=8, help="PINN training epochs")
    args = parser.parse_args()
    result = in_workflow_copy("ptycho-bench-large-", args.keep,
                              lambda d: measure(d, args.epochs, args.iterative))
    print_table(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
