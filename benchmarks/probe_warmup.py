"""The PINN given a probe 20 % out of focus: with the given probe, with the probe warm-up
(``model.probe_source: iterative``), and with the true probe.

    python benchmarks/probe_warmup.py [--train-size 104] [--test-size 96] [--epochs 20]
                                      [--warmup-epochs 30]

Simulates the default experiment's geometry (N = 32, probe focused 5 mm before the object)
with training and test objects of the given sides; the files record the probe 1 mm further
from focus (``data.probe.given_defocus_m``, as ``benchmarks/imperfect_scan.py --case
defocus``). Trains the PINN (``--epochs``) three times, each with the library code the steps
run (:func:`ptycho_torch.warmup.warm_up`, :func:`ptycho_torch.train.train_model`,
:func:`ptycho_torch.infer.reconstruct`): with the given probe, with the warm-up's probe
(warm-up on the training scan, its probe also for the test scan), and with the true probe.
Prints per run the probe's error against the truth (:func:`ptycho_torch.metrics.probe_error`),
amplitude / phase PSNR of the test object (phase also with a linear ramp removed), the
R-factor (no ground truth needed) and the seconds of the warm-up, the training and the
reconstruction; then the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch


from ptycho_torch.config_factory import resolve_config
from ptycho_torch.infer import reconstruct
from ptycho_torch.metrics import probe_error
from ptycho_torch.products import evaluate
from ptycho_torch.quality import predicted_counts, r_factor, valid_mask
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.train import train_model
from ptycho_torch.warmup import apply_warmup, keep_photons, warm_up


def run(name: str, cfg, train, test, warmup_seconds: float = 0.0) -> dict[str, Any]:
    """Train on ``train``, reconstruct and score ``test`` (both with their ``probe``)."""
    t0 = time.perf_counter()
    model, history, _ = train_model(cfg, train, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    rec = reconstruct(model.eval(), test, cfg, torch.device("cpu"))
    m = evaluate(rec.obj, test, Path("test.cxi"))
    r = r_factor(test.counts, predicted_counts(rec.obj, test.probe, test.positions_px),
                 valid_mask(test))
    out = {"run": name, "probe_error": probe_error(test.probe, test.true_probe),
           "amplitude_psnr_db": m["amplitude"]["psnr"], "phase_psnr_db": m["phase"]["psnr"],
           "phase_psnr_ramp_removed_db": m["with_phase_ramp_removed"]["phase"]["psnr"],
           "amplitude_ssim": m["amplitude"]["ssim"], "phase_ssim": m["phase"]["ssim"],
           "r_factor": r["r_factor"], "r_factor_poisson_expected": r["r_factor_poisson_expected"],
           "warmup_seconds": warmup_seconds, "train_seconds": seconds,
           "reconstruction_seconds": rec.total_seconds, "final_loss": history[-1]["loss"]}
    print(f"{name:10s} probe error {out['probe_error']:.3f}  amplitude / phase PSNR "
          f"{out['amplitude_psnr_db']:.2f} / {out['phase_psnr_db']:.2f} "
          f"({out['phase_psnr_ramp_removed_db']:.2f}) dB  R {out['r_factor']:.4f} "
          f"(noise {out['r_factor_poisson_expected']:.4f})  warm-up {warmup_seconds:.1f} s  "
          f"training {seconds:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=104, help="training object side, px")
    parser.add_argument("--test-size", type=int, default=96, help="test object side, px")
    parser.add_argument("--epochs", type=int, default=20, help="PINN training epochs")
    parser.add_argument("--warmup-epochs", type=int, default=30, help="warm-up LSQML epochs")
    parser.add_argument("--defocus-error-m", type=float, default=1.0e-3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = resolve_config(None, {"data.probe.given_defocus_m": args.defocus_error_m,
                                "data.object.train_size_px": args.train_size,
                                "data.object.test_size_px": args.test_size,
                                "training.epochs": args.epochs, "execution.threads": 2,
                                "model.probe_source": "iterative",
                                "model.probe_warmup_epochs": args.warmup_epochs})
    train = simulate_dataset(cfg.data, args.train_size, (cfg.seed, 0))
    test = simulate_dataset(cfg.data, args.test_size, (cfg.seed, 1))
    print(f"{len(train.counts)} training, {len(test.counts)} test patterns", flush=True)
    warmed = warm_up(train, cfg, gpu=False)
    rows = [run("given", cfg, train, test)]
    rows.append(run("iterative", cfg, apply_warmup(train, warmed, positions=True),
                    replace(test, probe=keep_photons(warmed.probe, test.probe)),
                    warmed.record["seconds"]))
    rows.append(run("true", cfg, replace(train, probe=train.true_probe),
                    replace(test, probe=test.true_probe)))
    print(json.dumps({"args": vars(args), "warmup": warmed.record,
                      "warmup_probe_error_train": probe_error(warmed.probe, train.true_probe),
                      "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
