"""Simulation throughput against its bare operations (FFT + Poisson), and peak memory.

    python benchmarks/simulate.py [--repeats 7] [--threads 2] [--quick]

Measured side by side in one run (medians of interleaved repeats; these shared
machines vary by +-50 % between runs, ratios much less):

* bound: the sum of the bare operations simulation cannot avoid, timed apart:
  ``fft``, ``torch.fft.fft2`` of a complex64 ``[n, N, N]`` batch, the shape of the
  default training set (the far field every pattern needs), and ``poisson``, exact
  Poisson draws ``[n, N, N]`` with the simulation's means (numpy ``Generator.poisson``
  on float64 means, one generator per block of ``simulate.NOISE_BLOCK`` patterns, on
  the same threads; nothing else);
* forward: the simulator's noise-free patterns (exact sub-pixel sampling, probe,
  far field, ``|F|^2``), ``simulate.expected_intensity``;
* noise: the exact Poisson draws, ``simulate.poisson_counts``;
* simulate: forward + photon scaling + noise, ``simulate.simulate_scan`` (the
  throughput figure; the target is >= 0.8 x the bound's patterns/s).

Peak memory (peak RSS ``VmHWM`` of a fresh subprocess, its mark reset after the imports
with Linux ``clear_refs``, so the import of torch does not hide it): simulating and
writing the default training set, the same at 10x the number of patterns, and
streaming the counts of a data set through :class:`ptycho_torch.cxi.CountsReader`
(a file written block by block, read back block by block: the peak stays far below
the data size, which is what lets train/infer handle data larger than memory).
Prints a table, then the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ptycho_torch import physics, simulate
from ptycho_torch.config import DataConfig, ExecutionConfig

TARGET = 0.8  # simulate patterns/s over the FFT+Poisson bound's


def default_scan(cfg: DataConfig, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object, unit probe and positions exactly as ``simulate_dataset`` draws them."""
    rng = simulate._streams((7, 0))
    pixel = physics.object_pixel_size_m(cfg.energy_eV, cfg.detector_distance_m,
                                        cfg.detector_pixel_size_m, cfg.N)
    probe = simulate.make_probe(cfg, pixel)
    obj = simulate.make_object(size, cfg.object, rng["object"])
    positions = simulate.scan_positions(size, cfg.N, cfg.scan, rng["scan"],
                                        simulate.scan_step(cfg.scan, probe))
    return obj, probe, positions


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bare_poisson(means: np.ndarray, seeds: np.ndarray, threads: int) -> None:
    """Exact Poisson draws (counts) with float64 ``means [n, N, N]`` (counts), one
    generator per block of ``NOISE_BLOCK`` patterns, blocks on ``threads`` threads.

    Each block's counts are dropped once drawn, so their memory is reused: the draws
    alone (kept, fresh pages would add ~30 % here; the simulation draws in place)."""
    blocks = range(0, len(means), simulate.NOISE_BLOCK)

    def draw(k: int) -> None:
        s = blocks[k]
        np.random.default_rng(seeds[k]).poisson(means[s:s + simulate.NOISE_BLOCK])
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(draw, range(len(blocks))))


def throughput(cfg: DataConfig, repeats: int, threads: int) -> dict:
    """Medians (s) of the bound's parts (fft, poisson; bound = their sum), forward,
    noise and full simulation, interleaved."""
    obj, probe, positions = default_scan(cfg, cfg.object.train_size_px)
    n, N = len(positions), cfg.N
    batch = torch.randn(n, N, N, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    expected = simulate.expected_intensity(obj, probe, positions)
    scale = cfg.nphotons / expected.sum(axis=(1, 2), dtype=np.float64).mean()
    means = expected.astype(np.float64) * scale  # counts, as poisson_counts draws them
    seeds = np.random.default_rng(1).integers(0, 2 ** 63, size=-(-n // simulate.NOISE_BLOCK))
    runs = {
        "fft": lambda: torch.fft.fft2(batch),
        "poisson": lambda: bare_poisson(means, seeds, threads),
        "forward": lambda: simulate.expected_intensity(obj, probe, positions),
        "noise": lambda: simulate.poisson_counts(expected.copy(), scale,
                                                 np.random.default_rng(1), threads),
        "simulate": lambda: simulate.simulate_scan(obj, probe, positions, cfg.nphotons,
                                                   np.random.default_rng(1), workers=threads),
    }
    for fn in runs.values():  # warm up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    copy_s = statistics.median(timed(expected.copy) for _ in range(repeats))
    med = {k: statistics.median(v) for k, v in times.items()}
    med["noise"] = max(med["noise"] - copy_s, 1e-9)  # the copy is only for the benchmark
    med["bound"] = med["fft"] + med["poisson"]
    return {"patterns": n, "N": N, "object_px": cfg.object.train_size_px, "seconds": med,
            "groups": len(simulate.fraction_groups(positions, N)[1])}


PEAK = """
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
def peak_reset():
    # after the imports: reset the peak-RSS mark (Linux clear_refs 5) and note the RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")
def peak():
    return _status("VmHWM")
"""

CHILD_SIM = PEAK + """
import json, time
from ptycho_torch import simulate
from ptycho_torch.config import DataConfig
from ptycho_torch.cxi import write_cxi
base = peak_reset()
t0 = time.perf_counter()
d = simulate.simulate_dataset(DataConfig(), {size}, (7, 0), {threads})
write_cxi({out!r}, d)
print(json.dumps({{"patterns": len(d.counts), "seconds": time.perf_counter() - t0,
                  "rss_before_mb": base, "peak_mb": peak()}}))
"""

CHILD_STREAM_WRITE = PEAK + """
import json
import numpy as np
from ptycho_torch.cxi import write_cxi
from ptycho_torch.dataset import PtychoData
base = peak_reset()
n, N, block = {n}, {N}, 512
rng = np.random.default_rng(0)
blocks = (rng.poisson(50.0, (min(block, n - s), N, N)).astype(np.float32)
          for s in range(0, n, block))
d = PtychoData(counts=np.zeros((0, N, N), np.float32), probe=np.ones((N, N), np.complex64),
               positions_px=np.full((n, 2), N / 2 + 1.0), object_shape=(N + 4, N + 4),
               energy_eV=8000.0, detector_distance_m=2.0, detector_pixel_size_m=75e-6,
               object_pixel_size_m=1e-7)
write_cxi({out!r}, d, blocks)
print(json.dumps({{"rss_before_mb": base, "peak_mb": peak()}}))
"""

CHILD_STREAM_READ = PEAK + """
import json, sys, time
from ptycho_torch.cxi import CountsReader
base = peak_reset()
t0 = time.perf_counter()
with CountsReader({out!r}) as counts:
    mean = counts.mean()
    n = len(counts)
print(json.dumps({{"patterns": n, "mean": mean, "seconds": time.perf_counter() - t0,
                  "rss_before_mb": base, "peak_mb": peak()}}))
"""


def child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        sys.exit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def size_for(cfg: DataConfig, patterns: int) -> int:
    """Smallest training-object side whose default raster holds at least ``patterns``."""
    size = cfg.object.train_size_px
    while True:
        lo, hi = cfg.N / 2 + cfg.scan.jitter_px, size - cfg.N / 2 - 1 - cfg.scan.jitter_px
        if (math.floor((hi - lo) / cfg.scan.step_px) + 1) ** 2 >= patterns:
            return size
        size += 1


def memory(cfg: DataConfig, threads: int, n_default: int, quick: bool) -> dict:
    """Peak RSS (MiB) of fresh processes, measured after their imports: 1x and 10x
    simulation (+ CXI write), and streaming write/read of a bigger data set."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "sim.cxi")
        fmt = dict(threads=threads, out=out)
        res = {"default": child(CHILD_SIM.format(size=cfg.object.train_size_px, **fmt))}
        big = size_for(cfg, 10 * n_default)
        res["x10"] = child(CHILD_SIM.format(size=big, **fmt))
        res["x10"]["object_px"] = big
        for key in ("default", "x10"):
            res[key]["counts_mb"] = res[key]["patterns"] * cfg.N ** 2 * 4 / 2 ** 20
        n_stream, n_side = (2048, 64) if quick else (8192, 64)
        stream = {"patterns": n_stream, "N": n_side,
                  "counts_mb": n_stream * n_side ** 2 * 4 / 2 ** 20,
                  "write": child(CHILD_STREAM_WRITE.format(n=n_stream, N=n_side, out=out))}
        stream["read"] = child(CHILD_STREAM_READ.format(out=out))
        stream["file_mb"] = Path(out).stat().st_size / 2 ** 20
        res["stream"] = stream
    for r in (res["default"], res["x10"], res["stream"]["write"], res["stream"]["read"]):
        r["increment_mb"] = r["peak_mb"] - r["rss_before_mb"]
    return res


def report(tp: dict, mem: dict, threads: int) -> dict:
    n, s = tp["patterns"], tp["seconds"]
    rate = {k: n / v for k, v in s.items()}
    stages = ("fft", "poisson", "bound", "forward", "noise", "simulate")
    ratio = {k: rate[k] / rate["bound"] for k in stages}
    print(f"simulation throughput: default training set, {n} patterns of {tp['N']}x{tp['N']}, "
          f"object {tp['object_px']} px, {tp['groups']} sub-pixel groups, {threads} threads")
    print(f"{'stage':<10} {'median s':>10} {'patterns/s':>12} {'vs FFT+Poisson':>15}")
    for name in stages:
        print(f"{name:<10} {s[name]:>10.4f} {rate[name]:>12.0f} {ratio[name]:>15.2f}")
    met = ratio["simulate"] >= TARGET
    print(f"target: simulate >= {TARGET} x bound (fft + poisson): {'met' if met else 'NOT met'} "
          f"({ratio['simulate']:.2f}); beyond the bound: forward - fft "
          f"{s['forward'] - s['fft']:.4f} s, noise - poisson {s['noise'] - s['poisson']:.4f} s, "
          f"simulate - forward - noise {s['simulate'] - s['forward'] - s['noise']:.4f} s")
    print()
    print(f"{'peak memory (fresh process, after imports)':<46} {'patterns':>9} {'data MiB':>9} "
          f"{'RSS MiB':>8} {'peak MiB':>9} {'+MiB':>7}")
    rows = [("simulate + write, default", mem["default"], mem["default"]["patterns"],
             mem["default"]["counts_mb"]),
            (f"simulate + write, 10x ({mem['x10']['object_px']} px object)", mem["x10"],
             mem["x10"]["patterns"], mem["x10"]["counts_mb"]),
            ("stream-write counts (512-pattern blocks)", mem["stream"]["write"],
             mem["stream"]["patterns"], mem["stream"]["counts_mb"]),
            ("stream-read counts (CountsReader.mean)", mem["stream"]["read"],
             mem["stream"]["patterns"], mem["stream"]["counts_mb"])]
    for label, r, patterns, mb in rows:
        print(f"{label:<46} {patterns:>9} {mb:>9.1f} {r['rss_before_mb']:>8.1f} "
              f"{r['peak_mb']:>9.1f} {r['increment_mb']:>7.1f}")
    return {"threads": threads, "patterns": n, "N": tp["N"], "subpixel_groups": tp["groups"],
            "seconds": s, "patterns_per_second": rate, "ratio_to_fft_poisson_bound": ratio,
            "target_ratio": TARGET, "target_met": met, "memory": mem}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=ExecutionConfig().threads)
    parser.add_argument("--quick", action="store_true", help="smaller streaming test")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DataConfig()
    tp = throughput(cfg, args.repeats, args.threads)
    mem = memory(cfg, args.threads, tp["patterns"], args.quick)
    result = report(tp, mem, args.threads)
    print()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
