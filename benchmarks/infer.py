"""Inference throughput: the infer step's reconstruction path against the bare network forward.

    python benchmarks/infer.py [--repeats 5] [--end-to-end 3] [--threads 2] [--model model.pt]
                               [--profile]

The default experiment (``config/config.yaml``) and its test set, simulated in-process
exactly as the simulate step does (``simulate_dataset(..., (seed, 1))``). The model is
``--model`` or, by default, the freshly initialised network (seeded): the cost of a forward
pass does not depend on the weights. Interleaved ``--repeats`` times (the order alternates;
medians reported):

* bare: the network's forward passes alone (``torch.no_grad``) on the same batches of
  ``execution.inference_batch_size`` groups, gathered and normalised beforehand;
* real: what the infer step does to produce its reconstruction, minus the calibration:
  ``infer.reconstruct`` (grouping, per-batch gathering and normalisation, forward,
  phase synchronisation, probe-weighted stitching) with ``calibration_iterations = 0``,
  then writing ``reconstruction.h5`` and ``reconstruction.npz``;
* the other stages of the step, timed on their own: the calibration (``stitch`` with the
  configured calibration minus without), scoring against the ground truth
  (``infer.evaluate``) and the three figures (``infer.write_figures``).

Throughput is in patterns/s (test-set scan positions per second). The target is
real/bare >= 0.8: stitching and file writing must not dominate the forward pass.

End to end (``--end-to-end`` runs, median): the wall time of the whole step as a command,
``python -m ptycho_torch.infer`` on the test set written as CXI, with the default inference
settings: process start, imports, checks, reconstruction with phase synchronisation and
calibration, scoring, the no-ground-truth quality assessment (``ptycho_torch.quality``: it
predicts, stitches and calibrates each half of the data again), all products, figures and
evidence.

Timings on these shared machines vary by up to +-50 % between runs: the ratio, measured
side by side in one run, is the number to read. Prints a table, then the same as JSON.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ptycho_torch import infer  # noqa: E402
from ptycho_torch.config import ExperimentConfig  # noqa: E402
from ptycho_torch.config_factory import resolve_config  # noqa: E402
from ptycho_torch.data import PtychoData, write_cxi  # noqa: E402
from ptycho_torch.grouping import group_indices, relative_offsets  # noqa: E402
from ptycho_torch.model import (PtychoPINN, ValidPixels, input_scale, load_model,  # noqa: E402
                                 save_checkpoint)
from ptycho_torch.simulate import simulate_dataset  # noqa: E402
from ptycho_torch.stitch import stitch  # noqa: E402
from ptycho_torch.train import setup_execution  # noqa: E402

TARGET = 0.8


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
    scale, bs = input_scale(counts), cfg.execution.inference_batch_size
    return [((counts[groups[i:i + bs]].sqrt() / scale).contiguous(), offsets[i:i + bs])
            for i in range(0, len(groups), bs)]


@torch.no_grad()
def bare(model: PtychoPINN, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for amplitudes, offsets in batches:
        model(amplitudes, offsets)


def real(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig, out: Path) -> None:
    rec = infer.reconstruct(model, data, cfg, torch.device("cpu"))
    infer.write_ptychodus(out / "reconstruction.h5", rec.obj, data, [], cfg.experiment)
    infer.write_reconstruction_npz(out / "reconstruction.npz", rec.obj, data)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stages(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig, uncal: ExperimentConfig,
           out: Path) -> dict[str, float]:
    """Seconds of the calibration, the scoring and the figures, one run each."""
    patches = infer.predict_patches(model, data, cfg, torch.device("cpu"))
    args = (patches, data.positions_px, data.object_shape, data.probe)
    pixels = ValidPixels.of(data)
    t_plain = timed(lambda: stitch(*args, uncal.inference, data.counts, pixels))
    t0 = time.perf_counter()
    obj, record = stitch(*args, cfg.inference, data.counts, pixels)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = infer.evaluate(obj, data, Path("test.cxi"))
    t_score = time.perf_counter() - t0
    t_fig = timed(lambda: infer.write_figures(out, obj, data, metrics))
    return {"calibration": t_cal - t_plain, "scoring": t_score, "figures": t_fig}


def end_to_end(workdir: Path, run: int, threads: int) -> float:
    """Wall time of ``python -m ptycho_torch.infer`` on the test set (default settings)."""
    cmd = [sys.executable, "-m", "ptycho_torch.infer", "--model", "model.pt", "--data",
           "test.cxi", "--out-dir", f"e2e{run}", "--threads", str(threads),
           "--report-dir", f"reports/2026-01-01T00000{run}Z/bench/infer"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"python -m ptycho_torch.infer failed:\n{out.stderr[-3000:]}")
    return seconds


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
    uncal = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference,
                                                                   calibration_iterations=0))
    batches = gather(cfg, data)
    runs = [("real", lambda: real(model, data, uncal, workdir)), ("bare", lambda: bare(model, batches))]
    times: dict[str, list[float]] = {"real": [], "bare": [], "calibration": [], "scoring": [],
                                     "figures": []}
    real(model, data, uncal, workdir)  # warm-up (allocator, kernels): not timed
    for r in range(args.repeats):
        for name, fn in runs if r % 2 == 0 else runs[::-1]:
            times[name].append(timed(fn))
        for name, seconds in (stages(model, data, cfg, uncal, workdir).items()
                              if args.stages else ()):
            times[name].append(seconds)
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(real, model, data, uncal, workdir)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumtime").print_stats(25)
        print(f"--- cProfile of the real path (sorted by cumulative time)\n{text.getvalue()}")
    e2e = [end_to_end(workdir, k, args.threads) for k in range(args.end_to_end)]
    n = len(data.counts)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    return {"N": data.N, "patterns": n, "object_shape": list(data.object_shape),
            "batch_size": cfg.execution.inference_batch_size,
            "calibration_iterations": cfg.inference.calibration_iterations,
            "seconds": times, "median_seconds": med,
            "real_patterns_per_s": n / med["real"], "bare_patterns_per_s": n / med["bare"],
            "ratio": med["bare"] / med["real"],
            "ratio_of_best_runs": min(times["bare"]) / min(times["real"]),
            "end_to_end_seconds": e2e,
            "end_to_end_median_s": statistics.median(e2e) if e2e else None}


def table(r: dict) -> str:
    med = r["median_seconds"]
    rows = [("patterns", str(r["patterns"])),
            ("bare forward", f"{med['bare']:.3f} s  ({r['bare_patterns_per_s']:.0f} patterns/s)"),
            ("real path (no calibration)",
             f"{med['real']:.3f} s  ({r['real_patterns_per_s']:.0f} patterns/s)"),
            ("real/bare", f"{r['ratio']:.2f} (best runs {r['ratio_of_best_runs']:.2f}), "
                          + ("ok" if r["ratio"] >= TARGET else f"< {TARGET}")),
            ("end to end (python -m ptycho_torch.infer)",
             f"{r['end_to_end_median_s']:.1f} s" if r["end_to_end_median_s"] else "-")]
    labels = {"calibration": f"calibration ({r['calibration_iterations']} steps)",
              "scoring": "scoring against ground truth", "figures": "figures (3 PNG)"}
    rows[4:4] = [(label, f"{med[k]:.3f} s") for k, label in labels.items() if k in med]
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
    parser.add_argument("--no-stages", dest="stages", action="store_false",
                        help="skip timing the calibration, scoring and figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    print(f"inference of the default test set, {args.threads} thread(s), medians of "
          f"{args.repeats} (target real/bare >= {TARGET})")
    print(table(result))
    print(json.dumps({"benchmark": "infer", "torch": torch.__version__, "threads": args.threads,
                      "repeats": args.repeats, "target_ratio": TARGET, "result": result},
                     indent=2))


if __name__ == "__main__":
    main()
