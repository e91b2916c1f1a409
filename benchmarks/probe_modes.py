"""pty-chi with 1 and with K probe modes on a partially coherent simulated scan.

    python benchmarks/probe_modes.py [--modes 3] [--ratio 0.3] [--size 136] [--epochs 100]
                                     [--engine lsqml] [--threads 2]

Simulates one scan (``data.probe.modes`` = ``--modes`` orthogonal modes, each further mode
``--ratio`` times the power of the one before, N = 64, a ``--size`` px object, the default
raster), gives pty-chi a one-mode probe guess (the strongest true mode, scaled to the
total power), and reconstructs it twice with probe refinement: with ``iterative.probe_modes``
1 and with ``--modes`` (modes added by pty-chi's Hermite initialisation). For each it prints
the R-factor of its own object, probe and positions (:func:`ptycho_torch.quality.r_factor`,
with the Poisson noise floor), the amplitude / phase PSNR against the ground truth, the
mutual-coherence error of its probe against the true modes
(:func:`ptycho_torch.metrics.coherence_error`) and the seconds; then the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from ptycho_torch import iterative, ptychi_solver, quality
from ptycho_torch.config import DataConfig, ExperimentConfig, IterativeConfig, ProbeConfig
from ptycho_torch.metrics import coherence_error
from ptycho_torch.simulate import simulate_dataset


def simulate(modes: int, ratio: float, size: int) -> tuple[DataConfig, object]:
    """The partially coherent scan (N = 64) and its data config."""
    cfg = DataConfig(N=64, probe=ProbeConfig(modes=modes, mode_power_ratio=ratio))
    return cfg, simulate_dataset(cfg, size, (7, 1))


def solve(data, true_probe: np.ndarray, modes: int, args: argparse.Namespace) -> dict:
    """pty-chi with ``modes`` probe modes (refined) on ``data``: its scores."""
    cfg = ExperimentConfig()
    cfg = replace(cfg, iterative=IterativeConfig(engine=args.engine, epochs=args.epochs,
                                                 probe_refinement=True, probe_modes=modes),
                  execution=replace(cfg.execution, threads=args.threads))
    solved = ptychi_solver.reconstruct(data, cfg, False, lambda *a: None)
    predicted = quality.predicted_counts(solved.obj, solved.probe, solved.positions)
    r = quality.r_factor(data.counts, predicted, quality.valid_mask(data))
    q = iterative.quality(solved.obj, data)
    power = np.square(np.abs(solved.probe.reshape(-1, *solved.probe.shape[-2:]))).sum((1, 2))
    return {"modes": modes, "r_factor": r["r_factor"], "r_noise_floor": r["r_factor_poisson_expected"],
            "amplitude_psnr_db": q["amplitude"]["psnr"], "phase_psnr_db": q["phase"]["psnr"],
            "probe_coherence_error": coherence_error(solved.probe, true_probe),
            "mode_power_fractions": (power / power.sum()).tolist(),
            "solver_seconds": solved.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=136)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--engine", default="lsqml", choices=("lsqml", "epie"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg, data = simulate(args.modes, args.ratio, args.size)
    true = data.probe
    power = np.square(np.abs(true)).sum((1, 2))
    guess, _ = ptychi_solver.solver_probe(true, 1)
    given = replace(data, probe=guess[0])
    print(f"scan: {len(data.counts)} positions, N = {data.N}, {args.modes} modes holding "
          f"{np.round(power / power.sum(), 4).tolist()} of the power (modes 2+: "
          f"{1 - power[0] / power.sum():.3f}); simulated in {time.perf_counter() - t0:.1f} s")
    rows = [solve(given, true, k, args) for k in (1, args.modes)]
    print(f"{'modes':>5} {'R':>8} {'R_noise':>8} {'amp PSNR':>9} {'phase PSNR':>11} "
          f"{'coh. err':>9} {'seconds':>8}")
    for r in rows:
        print(f"{r['modes']:>5} {r['r_factor']:>8.4f} {r['r_noise_floor']:>8.4f} "
              f"{r['amplitude_psnr_db']:>9.2f} {r['phase_psnr_db']:>11.2f} "
              f"{r['probe_coherence_error']:>9.4f} {r['solver_seconds']:>8.1f}")
    print(json.dumps({"positions": len(data.counts), "N": data.N, "engine": args.engine,
                      "epochs": args.epochs, "true_mode_powers": (power / power.sum()).tolist(),
                      "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
