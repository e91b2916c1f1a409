"""Training throughput: ``ptycho_torch.train.train_model`` against a bare loop, side by side.

    python benchmarks/train.py [--sizes 32 64] [--patterns 100] [--epochs 2] [--repeats 5]
                               [--threads 2] [--mode pinn|supervised] [--profile] [--no-memory]

For each pattern size N a small training set is simulated in-process
(``ptycho_torch.simulate.simulate_dataset``; the config comes from
``ptycho_torch.config_factory.resolve_config`` overrides: N, an object just big enough for
about ``--patterns`` scan positions, ``--epochs``, ``--threads``). Then, interleaved
``--repeats`` times (the order alternates; medians are reported):

* real: ``train_model(cfg, data, device)``, the training step's own function, end to end:
  grouping, model set-up, per-batch gathering of the grouped counts, the loss, NaN check,
  ``loss.item()``, scheduler, the per-epoch copy of the weights (the last good model kept
  if the loss diverges) and per-epoch history/logging;
* bare: the same network (same seed), loss and Adam optimiser on the same batches in the
  same order, gathered beforehand: only forward + backward + optimiser step per batch.

Throughput is in patterns/s: scan positions (each anchors a group of gridsize^2 patterns)
times epochs, per second, as the train step reports it (``patterns_per_second``). The
target is real/bare >= 0.8 (ratio of the medians; the ratio of the fastest runs is shown
next to it, less sensitive to other load on the machine). ``--profile`` prints the top of
a cProfile of one real run, to find where the overhead goes.

Peak memory: for each N a fresh subprocess simulates and trains once and reports its
``resource.getrusage`` peak RSS (``ru_maxrss``, torch import included), its RSS just
before training and the peak RSS during training (``VmHWM`` after resetting the mark with
Linux ``clear_refs``; null where that is not available); the table shows ``ru_maxrss`` and
what training added on top of the RSS before it.

Timings on these shared machines vary by up to +-50 % between runs: the ratio, measured
side by side in one run, is the number to read. Prints a table, then the same as JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ptycho_torch import physics
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.dataset import PtychoData
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.model import PtychoPINN, input_scale, physics_loss
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.execution import setup_execution
from ptycho_torch.train import train_model

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.8


def make_config(N: int, patterns: int, epochs: int, threads: int, mode: str) -> ExperimentConfig:
    """The default experiment at pattern size N, with an object that holds about
    ``patterns`` raster positions (step 4 px, N/2 + jitter from the edges)."""
    per_side = max(3, round(math.sqrt(patterns)))
    side = N + 4 * (per_side - 1) + 2
    return resolve_config(None, {
        "experiment": f"bench_N{N}", "data.N": N, "data.object.train_size_px": side,
        "data.object.test_size_px": side, "data.scan.step_px": 4.0,
        "training.epochs": epochs, "training.mode": mode, "training.max_minutes": 0.0,
        "execution.threads": threads, "execution.device": "cpu"})


def simulate(cfg: ExperimentConfig) -> PtychoData:
    return simulate_dataset(cfg.data, cfg.data.object.train_size_px, (cfg.seed, 0),
                            workers=max(1, cfg.execution.threads))


def processed(cfg: ExperimentConfig, data: PtychoData) -> int:
    """Patterns (group anchors) the training loop steps through: full batches, all epochs."""
    n, bs = len(data.counts), cfg.training.batch_size
    return (n - n % bs) * cfg.training.epochs


def real_run(cfg: ExperimentConfig, data: PtychoData, device: torch.device) -> float:
    t0 = time.perf_counter()
    train_model(cfg, data, device)
    return time.perf_counter() - t0


def gather_batches(cfg: ExperimentConfig, data: PtychoData, device: torch.device) -> dict:
    """Every batch of every epoch, gathered in train_model's order (same generator)."""
    groups = group_indices(data.positions_px, cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                           cfg.seed)
    counts = torch.from_numpy(data.counts).to(device)
    offsets = torch.from_numpy(relative_offsets(data.positions_px, groups)).to(device)
    groups = torch.from_numpy(groups).to(device)
    targets = None
    if cfg.training.mode == "supervised":
        pos = torch.from_numpy(data.positions_px)[groups.cpu()].reshape(-1, 2)
        targets = physics.extract_patches(torch.from_numpy(data.ground_truth), pos, data.N)
        targets = targets.reshape(*groups.shape, data.N, data.N).to(device)
    scale = input_scale(counts)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs, n = cfg.training.batch_size, len(groups)
    batches = []
    for _ in range(cfg.training.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - bs + 1, bs):
            idx = order[start:start + bs].to(device)
            x = counts[groups[idx]].contiguous()
            batches.append((x, (x.sqrt() / scale).contiguous(), offsets[idx].contiguous(),
                            None if targets is None else targets[idx].contiguous()))
    return {"batches": batches, "probe": torch.from_numpy(data.probe).to(device), "scale": scale}


def bare_run(cfg: ExperimentConfig, N: int, prepared: dict, device: torch.device) -> float:
    """Forward + backward + optimiser step only, on pre-gathered batches."""
    torch.manual_seed(cfg.seed)
    model = PtychoPINN(cfg.model, N).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    probe, scale, loss_name = prepared["probe"], prepared["scale"], cfg.training.loss
    t0 = time.perf_counter()
    for counts, amplitudes, offsets, target in prepared["batches"]:
        if target is None:
            loss = physics_loss(model, probe, counts, offsets, scale, loss_name)
        else:
            loss = (model(amplitudes, offsets) - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def throughput(cfg: ExperimentConfig, repeats: int) -> dict:
    device = setup_execution(cfg.execution)
    data = simulate(cfg)
    prepared = gather_batches(cfg, data, device)
    real_run(cfg, data, device)  # warm-up (allocator, kernels): not timed
    real, bare = [], []
    for r in range(repeats):
        runs = [("real", lambda: real_run(cfg, data, device)),
                ("bare", lambda: bare_run(cfg, data.N, prepared, device))]
        for name, fn in runs if r % 2 == 0 else runs[::-1]:
            (real if name == "real" else bare).append(fn())
    done = processed(cfg, data)
    real_pps, bare_pps = done / statistics.median(real), done / statistics.median(bare)
    best = (done / min(real)) / (done / min(bare))
    return {"N": data.N, "positions": len(data.counts), "epochs": cfg.training.epochs,
            "batch_size": cfg.training.batch_size, "gridsize": cfg.model.gridsize,
            "mode": cfg.training.mode, "patterns_processed": done,
            "real_seconds": real, "bare_seconds": bare,
            "real_patterns_per_s": real_pps, "bare_patterns_per_s": bare_pps,
            "ratio": real_pps / bare_pps, "ratio_of_best_runs": best}


def profile_real(cfg: ExperimentConfig, top: int = 25) -> str:
    device = setup_execution(cfg.execution)
    data = simulate(cfg)
    prof = cProfile.Profile()
    prof.enable()
    train_model(cfg, data, device)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------- memory (subprocess)

def _status(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


def child(args: argparse.Namespace) -> None:
    """One configuration in this (fresh) process: simulate, train once, print peak RSS."""
    cfg = make_config(args.child, args.patterns, args.epochs, args.threads, args.mode)
    device = setup_execution(cfg.execution)
    data = simulate(cfg)
    before = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the VmHWM mark (Linux)
        reset = True
    except OSError:
        reset = False
    train_model(cfg, data, device)
    print(json.dumps({"N": args.child,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_training_mb": before,
                      "training_peak_rss_mb": _status("VmHWM") if reset else None}))


def memory(N: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(N), "--patterns", str(args.patterns),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--mode", args.mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- output

def table(rows: list[dict]) -> str:
    head = ("N", "positions", "epochs", "real pat/s", "bare pat/s", "real/bare", "(best runs)",
            "target", "maxrss MB", "training +MB")
    lines = [head]
    for r in rows:
        mem = r.get("memory", {})
        lines.append((str(r["N"]), str(r["positions"]), str(r["epochs"]),
                      f"{r['real_patterns_per_s']:.1f}", f"{r['bare_patterns_per_s']:.1f}",
                      f"{r['ratio']:.2f}", f"{r['ratio_of_best_runs']:.2f}",
                      "ok" if r["ratio"] >= TARGET else f"< {TARGET}",
                      f"{mem['maxrss_mb']:.0f}" if mem else "-",
                      f"{mem['training_peak_rss_mb'] - mem['rss_before_training_mb']:.0f}"
                      if mem.get("training_peak_rss_mb") is not None else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--patterns", type=int, default=100, help="about this many positions")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("pinn", "supervised"), default="pinn")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one real run per size")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for N in args.sizes:
        cfg = make_config(N, args.patterns, args.epochs, args.threads, args.mode)
        row = throughput(cfg, args.repeats)
        if not args.no_memory:
            row["memory"] = memory(N, args)
        if args.profile:
            print(f"--- cProfile of train_model, N = {N} (sorted by own time)\n"
                  f"{profile_real(cfg)}")
        rows.append(row)
    print(f"training throughput, {args.mode}, {args.threads} thread(s), batch "
          f"{rows[0]['batch_size']}, gridsize {rows[0]['gridsize']}, medians of {args.repeats} "
          f"(target real/bare >= {TARGET})")
    print(table(rows))
    print(json.dumps({"benchmark": "train", "torch": torch.__version__, "threads": args.threads,
                      "repeats": args.repeats, "target_ratio": TARGET, "results": rows},
                     indent=2))


if __name__ == "__main__":
    main()
