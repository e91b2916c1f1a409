"""Per-scan refinement: a few more PINN epochs on the scan being reconstructed.

    python benchmarks/per_scan_refinement.py [--epochs 45] [--refine 5,10,20] [--tiny]

The PINN needs no labels, so after training on one scan it can keep training on the scan
it is about to reconstruct (``training.init_model``: the trained weights, the PINN loss on
the new scan's counts). This measures what that is worth on ``benchmarks/large_scan.py``'s
scan (~1,000 patterns of 64 x 64, an aberrated probe 3 mm out of focus, the same
simulation), in one process, 2 threads:

* the PINN (default recipe, ``--epochs``) trained on the training scan, reconstructing the
  test scan (:func:`ptycho_torch.infer.reconstruct`);
* the same model refined for each ``--refine`` count of epochs on the test scan (each count
  from the trained model), then reconstructing it; its time = refinement + reconstruction;
* pty-chi (LSQML, ``iterative.epochs`` = 100) on the test scan, scored at its checkpoints:
  the seconds it needs to reach each PINN's amplitude and phase PSNR.

Prints per run: amplitude / phase PSNR, seconds, pty-chi's seconds to that PSNR and the
ratio (the speed-up at equal quality, > 1: the PINN is faster); then one JSON line.
``--tiny`` (the tiny test config, 2 epochs, refine 1) checks that it runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from large_scan import overlay, probe_file

from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.dataset import PtychoData
from ptycho_torch.infer import reconstruct
from ptycho_torch.model import PtychoPINN, save_checkpoint
from ptycho_torch.products import evaluate
from ptycho_torch.ptychi_solver import reconstruct as ptychi_reconstruct
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.train import train_model

PARTS = ("amplitude", "phase")


def scored(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig,
           device: torch.device) -> tuple[dict[str, float], float]:
    """(amplitude and phase PSNR dB, reconstruction seconds) of ``model`` on ``data``."""
    rec = reconstruct(model.eval(), data, cfg, device)
    m = evaluate(rec.obj, data, Path("test.cxi"))
    return {p: m[p]["psnr"] for p in PARTS}, rec.total_seconds


def ptychi_curve(data: PtychoData, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """pty-chi on ``data``: ``[{epoch, seconds, amplitude, phase}]`` at its checkpoints
    (solver seconds, scoring not timed)."""
    curve: list[dict[str, Any]] = []

    def checkpoint(epoch: int, seconds: float, obj: np.ndarray) -> None:
        m = evaluate(obj, data, Path("test.cxi"))
        curve.append({"epoch": epoch, "seconds": seconds, **{p: m[p]["psnr"] for p in PARTS}})

    ptychi_reconstruct(data, cfg, False, checkpoint)
    return curve


def seconds_to(curve: list[dict[str, Any]], psnr: dict[str, float]) -> float | None:
    """pty-chi's seconds to its first checkpoint at or above both PSNR (None: never)."""
    return next((c["seconds"] for c in curve if all(c[p] >= psnr[p] for p in PARTS)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the recipe's training.epochs)")
    parser.add_argument("--refine", default="5,10,20", help="refinement epochs, comma-separated")
    parser.add_argument("--tiny", action="store_true", help="the tiny config, a quick check")
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    refine = [int(k) for k in ("1" if args.tiny else args.refine).split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = overlay([], None)["data"]
        data["probe"]["file"] = str(Path(tmp) / "probe.npy")
        probe_file(Path(tmp) / "probe.npy")
        if args.tiny:
            data = {"N": 16, "object": {"train_size_px": 48, "test_size_px": 48}}
            args.epochs = 2
        cfg = resolve_config({"data": data}, {"execution.threads": 2} if args.epochs is None
                             else {"execution.threads": 2, "training.epochs": args.epochs})
        o = cfg.data.object
        train = simulate_dataset(cfg.data, o.train_size_px, (cfg.seed, 0))
        test = simulate_dataset(cfg.data, o.test_size_px, (cfg.seed, 1))
        print(f"{len(train.counts)} training, {len(test.counts)} test patterns of "
              f"{cfg.data.N} x {cfg.data.N}", flush=True)
        t0 = time.perf_counter()
        model, _, scale = train_model(cfg, train, device)
        train_s = time.perf_counter() - t0
        checkpoint = Path(tmp) / "model.pt"
        save_checkpoint(checkpoint, model, cfg, {"input_scale_train": scale})
        psnr, seconds = scored(model, test, cfg, device)
        runs = [{"refine_epochs": 0, "psnr_db": psnr, "refine_s": 0.0, "reconstruction_s": seconds}]
        for k in refine:
            rcfg = refine_config(cfg, k, checkpoint)
            t0 = time.perf_counter()
            refined, _, _ = train_model(rcfg, test, device)
            refine_s = time.perf_counter() - t0
            psnr, seconds = scored(refined, test, rcfg, device)
            runs.append({"refine_epochs": k, "psnr_db": psnr, "refine_s": refine_s,
                         "reconstruction_s": seconds})
        curve = ptychi_curve(test, cfg)
    final = curve[-1]
    print(f"trained {cfg.training.epochs} epochs in {train_s:.0f} s; pty-chi "
          f"{final['epoch']} epochs: {final['amplitude']:.2f} / {final['phase']:.2f} dB in "
          f"{final['seconds']:.1f} s")
    for r in runs:
        total = r["refine_s"] + r["reconstruction_s"]
        reach = seconds_to(curve, r["psnr_db"])
        r.update({"total_s": total, "ptychi_seconds_to_same_psnr": reach,
                  "speedup_at_equal_quality": None if reach is None else reach / total})
        print(f"refine {r['refine_epochs']:3d} epochs: {r['psnr_db']['amplitude']:6.2f} / "
              f"{r['psnr_db']['phase']:6.2f} dB in {total:6.1f} s (refine {r['refine_s']:.1f}"
              f" s); pty-chi to the same PSNR: "
              + ("never" if reach is None else f"{reach:.1f} s, speed-up "
                 f"{r['speedup_at_equal_quality']:.2f}"), flush=True)
    print(json.dumps({"train_seconds": train_s, "runs": runs, "ptychi_curve": curve}))


def refine_config(cfg: ExperimentConfig, epochs: int, checkpoint: Path) -> ExperimentConfig:
    """``cfg`` for ``epochs`` epochs of fine-tuning from ``checkpoint``."""
    return replace(cfg, training=replace(cfg.training, epochs=epochs,
                                         init_model=str(checkpoint)))


if __name__ == "__main__":
    main()
