"""Inference: where the infer step's time goes, and the reconstruction path against the bare
network forward.

    python benchmarks/infer.py [--repeats 5] [--end-to-end 3] [--threads 2] [--model model.pt]
                               [--profile]

The default experiment (``config/config.yaml``) and its test set, simulated in-process
exactly as the simulate step does (``simulate_dataset(..., (seed, 1))``). The model is
``--model`` (e.g. ``results/default/train/model.pt`` after ``make run``) or, by default, the
freshly initialised network (seeded): the cost of a forward pass does not depend on the
weights, and the calibration runs its fixed number of steps either way.

1. Side by side, interleaved ``--repeats`` times (the order alternates; medians):

   * bare: the network's forward passes alone on the same batches of
     ``infer.inference_batch`` groups, gathered and normalised beforehand;
   * real: what the infer step does to produce its reconstruction, counts to stitched
     object, with the configured calibration (``infer.reconstruct``: grouping, gathering
     and normalisation, forward, phase synchronisation, calibration on the counts,
     probe-weighted stitching), then writing ``reconstruction.h5`` and ``.npz``.

   The issue #16 target: everything after the network (sync + calibration + stitching)
   costs no more than the network, i.e. ``after / network <= 1``.

2. End to end (``--end-to-end`` runs, median): ``python -m ptycho_torch.infer`` on the test
   set written as CXI, with the default inference settings. The step times its own parts
   and records them in its manifest (``<part>_seconds``): network, phase sync, calibration,
   stitching, writing, scoring, the no-ground-truth quality assessment (R-factor and the
   half-data FRC, which predicts, stitches and calibrates each half again) and figures;
   printed with their sum against the wall time of the command (the rest: process start,
   imports, checks, evidence).

3. With ``--model``, what each part of the reconstruction is worth (amplitude / phase PSNR
   against the ground truth): the network's patches phase-synchronised only; with the
   calibration; and the calibration given constant patches (no network: one fitted complex
   factor per scan position, a coarse solver of its own).

Timings on these shared machines vary by up to +-50 % between runs: the ratios, measured
side by side in one run, are the numbers to read. Prints a table, then the same as JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from ptycho_torch import infer, products
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.cxi import write_cxi
from ptycho_torch.dataset import PtychoData
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.metrics import score
from ptycho_torch.likelihood import ValidPixels
from ptycho_torch.model import PtychoPINN, input_scale, load_model, save_checkpoint
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.stitch import scanned_region, stitch
from ptycho_torch.execution import setup_execution

REPO = Path(__file__).resolve().parents[1]

TARGET = 1.0  # (sync + calibration + stitching) / network
STEP_PARTS = infer.RECONSTRUCTION_PARTS + infer.AFTER_PARTS


def default_config(threads: int) -> ExperimentConfig:
    """config/config.yaml (its experiment keys), on the CPU with ``threads`` threads."""
    loaded = yaml.safe_load((REPO / "config/config.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    return resolve_config({k: v for k, v in loaded.items() if k in fields},
                          {"execution.threads": threads, "execution.device": "cpu"})


def gather(cfg: ExperimentConfig, data: PtychoData) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The network inputs of ``infer.predict_patches``, batch by batch: (amplitudes, offsets)."""
    groups = group_indices(data.positions_px, cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                           cfg.seed)
    offsets = torch.from_numpy(relative_offsets(data.positions_px, groups))
    counts = torch.from_numpy(data.counts)
    scale, bs = input_scale(counts), infer.inference_batch(cfg, torch.device("cpu"))
    return [((counts[groups[i:i + bs]].sqrt() / scale).contiguous(), offsets[i:i + bs])
            for i in range(0, len(groups), bs)]


@torch.inference_mode()
def bare(model: PtychoPINN, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for amplitudes, offsets in batches:
        model(amplitudes, offsets)


def real(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig,
         out: Path) -> infer.Reconstruction:
    rec = infer.reconstruct(model, data, cfg, torch.device("cpu"))
    products.write_ptychodus(out / "reconstruction.h5", rec.obj, data, [], cfg.experiment)
    products.write_reconstruction_npz(out / "reconstruction.npz", rec.obj, data)
    return rec


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def end_to_end(workdir: Path, run: int, threads: int) -> dict[str, float]:
    """Wall time of ``python -m ptycho_torch.infer`` on the test set (default settings) and
    the seconds of each part that the step recorded in its manifest."""
    report = workdir / f"reports/2026-01-01T00000{run}Z/bench/infer"
    cmd = [sys.executable, "-m", "ptycho_torch.infer", "--model", "model.pt", "--data",
           "test.cxi", "--out-dir", f"e2e{run}", "--threads", str(threads),
           "--report-dir", str(report.relative_to(workdir))]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"python -m ptycho_torch.infer failed:\n{out.stderr[-3000:]}")
    numbers = json.loads((report / "manifest.json").read_text())["numbers"]
    return {"wall": seconds, **{p: numbers[f"{p}_seconds"] for p in STEP_PARTS}}


def worth(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig) -> dict[str, dict]:
    """Amplitude / phase PSNR (dB) of the network's patches synchronised only, calibrated,
    and of constant patches calibrated (no network)."""
    patches = infer.predict_patches(model, data, cfg, torch.device("cpu"))
    region, pixels = scanned_region(data.positions_px), ValidPixels.of(data)
    plain = dataclasses.replace(cfg.inference, calibration_iterations=0)
    out = {}
    for name, p, inference in (("network, phase sync only", patches, plain),
                               ("network + calibration", patches, cfg.inference),
                               ("constant patches + calibration", torch.ones_like(patches),
                                cfg.inference)):
        obj, _ = stitch(p, data.positions_px, data.object_shape, data.probe, inference,
                        data.counts, pixels)
        m = score(obj[region], data.ground_truth[region])
        out[name] = {"amplitude_psnr_db": m["amplitude"]["psnr"],
                     "phase_psnr_db": m["phase"]["psnr"]}
    return out


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    cfg = default_config(args.threads)
    setup_execution(cfg.execution)
    data = simulate_dataset(cfg.data, cfg.data.object.test_size_px, (cfg.seed, 1),
                            workers=args.threads)
    write_cxi(workdir / "test.cxi", data)
    if args.model:
        model = load_model(args.model, cfg)
    else:
        torch.manual_seed(cfg.seed)
        model = PtychoPINN(cfg.model, data.N).eval()
    save_checkpoint(workdir / "model.pt", model, cfg, {})
    batches = gather(cfg, data)
    parts: dict[str, list[float]] = {p: [] for p in infer.RECONSTRUCTION_PARTS}
    times: dict[str, list[float]] = {"real": [], "bare": []}

    def run_real() -> None:
        rec = real(model, data, cfg, workdir)
        for p in parts:
            parts[p].append(rec.seconds[p])

    runs = [("real", run_real), ("bare", lambda: bare(model, batches))]
    real(model, data, cfg, workdir)  # warm-up (allocator, kernels): not timed
    for r in range(args.repeats):
        for name, fn in runs if r % 2 == 0 else runs[::-1]:
            times[name].append(timed(fn))
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(real, model, data, cfg, workdir)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumtime").print_stats(25)
        print(f"--- cProfile of the real path (sorted by cumulative time)\n{text.getvalue()}")
    e2e = [end_to_end(workdir, k, args.threads) for k in range(args.end_to_end)]
    n = len(data.counts)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_parts = {k: statistics.median(v) for k, v in parts.items()}
    after = sum(med_parts[p] for p in infer.RECONSTRUCTION_PARTS[1:])
    out = {"N": data.N, "patterns": n, "object_shape": list(data.object_shape),
           "batch_size": infer.inference_batch(cfg, torch.device("cpu")),
           "calibration_iterations": cfg.inference.calibration_iterations,
           "calibration_patterns": cfg.inference.calibration_patterns,
           "seconds": times, "median_seconds": med, "parts_median_seconds": med_parts,
           "reconstruction_median_s": sum(med_parts.values()),
           "after_network_over_network": after / med_parts["network"],
           "real_patterns_per_s": n / med["real"], "bare_patterns_per_s": n / med["bare"],
           "ratio": med["bare"] / med["real"],
           "end_to_end": e2e,
           "end_to_end_median": ({k: statistics.median(r[k] for r in e2e) for k in e2e[0]}
                                 if e2e else None)}
    if args.model and data.ground_truth is not None:
        out["quality"] = worth(model, data, cfg)
    return out


def table(r: dict) -> str:
    med, parts = r["median_seconds"], r["parts_median_seconds"]
    rows = [("patterns", str(r["patterns"])),
            ("bare forward", f"{med['bare']:.3f} s  ({r['bare_patterns_per_s']:.0f} patterns/s)"),
            ("real path: counts to stitched object, files",
             f"{med['real']:.3f} s  ({r['real_patterns_per_s']:.0f} patterns/s)"),
            ("bare / real", f"{r['ratio']:.2f}")]
    rows += [(f"  {p}", f"{parts[p]:.3f} s") for p in infer.RECONSTRUCTION_PARTS]
    rows += [("  reconstruction (sum)", f"{r['reconstruction_median_s']:.3f} s"),
             ("(sync + calibration + stitching) / network",
              f"{r['after_network_over_network']:.2f} (target <= {TARGET:g})")]
    e2e = r["end_to_end_median"]
    if e2e:
        rows.append(("end to end: python -m ptycho_torch.infer", f"{e2e['wall']:.2f} s wall"))
        rows += [(f"  {p}", f"{e2e[p]:.3f} s") for p in STEP_PARTS]
        total = sum(e2e[p] for p in STEP_PARTS)
        rows.append(("  parts' sum / wall", f"{total:.2f} s / {e2e['wall']:.2f} s = "
                                            f"{total / e2e['wall']:.2f} (the rest: start-up, "
                                            "imports, checks, evidence)"))
    for name, q in (r.get("quality") or {}).items():
        rows.append((f"quality: {name}", f"{q['amplitude_psnr_db']:.2f} / "
                                         f"{q['phase_psnr_db']:.2f} dB amplitude / phase"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--end-to-end", type=int, default=3, help="runs of the step command")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a model.pt of the default experiment")
    parser.add_argument("--profile", action="store_true", help="cProfile one real path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    print(f"inference of the default test set, {args.threads} thread(s), medians of "
          f"{args.repeats}")
    print(table(result))
    print(json.dumps({"benchmark": "infer", "torch": torch.__version__, "threads": args.threads,
                      "repeats": args.repeats, "target_after_over_network": TARGET,
                      "result": result}, indent=2))


if __name__ == "__main__":
    main()
