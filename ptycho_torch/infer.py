"""Inference: predict patches, stitch the object, score it against ground truth when there is one.

``python -m ptycho_torch.infer --model model.pt --data DATA --out-dir DIR --report-dir
reports/<run_id>/<experiment>/infer`` reconstructs the scan in ``DATA`` (CXI, or a
PtychoPINN ``.npz``) with the trained model and writes into ``DIR``:

* ``reconstruction.h5``: object and probe in the ptychodus product layout;
* ``reconstruction.npz``: the object as numpy arrays (:func:`write_reconstruction_npz`);
* ``metrics.json``: ``"ground_truth": true`` and amplitude/phase MAE, PSNR, SSIM, FRC50
  after alignment, or ``"ground_truth": false`` and why nothing was scored;
* ``reconstruction.png`` (ground truth, reconstruction, error), ``frc.png`` (FRC curves
  against the ground truth; for a simulated focused-disk probe also the first contrast
  zeros of its defocus, :func:`ctf_zero_markers`) and ``scan_positions.png`` (scan and
  probe footprint).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ptycho_torch import cli, figures, quality
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError, create_inference_payload, load_checkpoint
from ptycho_torch.data import read_data
from ptycho_torch.dataset import PtychoData
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.likelihood import ValidPixels
from ptycho_torch.generators import generator_class
from ptycho_torch.model import PtychoPINN, autocast, input_scale, load_model
from ptycho_torch.evidence import StepReport
from ptycho_torch.products import (evaluate, write_figures, write_ptychodus,
                                   write_reconstruction_npz)
from ptycho_torch.files import write_atomic
from ptycho_torch.stitch import stitch
from ptycho_torch.execution import setup_execution
from ptycho_torch.warmup import checkpoint_probe, keep_photons, scan_positions, source_record

LOG = logging.getLogger("ptycho_torch")
# what the step does after the reconstruction, timed in its summary as <part>_seconds
AFTER_PARTS = ("writing", "scoring", "quality", "figures")
PRODUCTS = ("reconstruction.h5", "reconstruction.npz", "metrics.json", "reconstruction.png",
            "frc.png", "scan_positions.png", "quality.png")


RECONSTRUCTION_PARTS = ("network", "phase_sync", "calibration", "stitching")


@dataclass(frozen=True)
class Reconstruction:
    """A stitched object and how it was made."""
    obj: np.ndarray  # complex64 [H, W]
    stitching: dict  # JSON-able record of stitch()
    seconds: dict[str, float]  # each of RECONSTRUCTION_PARTS: network = batched forward passes

    @property
    def total_seconds(self) -> float:
        """From counts to the stitched object: the network and everything after it."""
        return sum(self.seconds[p] for p in RECONSTRUCTION_PARTS)


ACTIVATION_BUDGET = 16 << 20  # bytes of the generator's largest activation per CPU batch


def inference_batch(cfg: ExperimentConfig, device: torch.device) -> int:
    """Groups per forward pass: ``execution.inference_batch_size``, or for 0 (auto) 256 on
    CUDA and on the CPU as many as keep the generator's largest activation (its
    ``activation_bytes``: for the CNN the first convolution's output ``[b, 16 x
    n_filters_scale, N, N]`` float32) within :data:`ACTIVATION_BUDGET` (64 at N = 64, 256 at
    N = 32). Larger CPU batches fall out of the cache: slower, with the same numbers."""
    if cfg.execution.inference_batch_size:
        return cfg.execution.inference_batch_size
    if device.type == "cuda":
        return 256
    per_group = generator_class(cfg.model.generator).activation_bytes(cfg.model, cfg.data.N)
    return max(1, ACTIVATION_BUDGET // per_group)


@torch.inference_mode()
def predict_patches(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig,
                    device: torch.device) -> torch.Tensor:
    """Complex patch ``[n, N, N]`` at every scan position of ``data``.

    Each position anchors one group (as in training); its patch is the group's
    first channel, after the overlap constraint when the model has one. The convolutions
    run in the channels-last memory layout (oneDNN's native one; the same numbers to
    float32 rounding); ``model`` is moved to it. With ``execution.precision`` bfloat16 or
    float16 the layers run under autocast, as in training (docs/findings.md: speed and
    accuracy of each).
    """
    groups = group_indices(data.positions_px, cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                           cfg.seed)
    offsets = torch.from_numpy(relative_offsets(data.positions_px, groups))
    counts = torch.from_numpy(data.counts)
    scale, bs = input_scale(counts), inference_batch(cfg, device)
    model = model.to(device, memory_format=torch.channels_last)

    def batch(i: int) -> torch.Tensor:
        amplitudes = counts[groups[i:i + bs]].to(device).sqrt() / scale
        return amplitudes.contiguous(memory_format=torch.channels_last)

    with autocast(device, cfg.execution.precision):
        out = [model(batch(i), offsets[i:i + bs].to(device))[:, 0].cpu()
               for i in range(0, len(groups), bs)]
    return torch.cat(out)


def reconstruct(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig,
                device: torch.device) -> Reconstruction:
    """Predict every patch, then stitch them (with ``cfg.inference``'s phase sync and
    calibration on the counts' valid pixels) into the object ``[H, W]``."""
    t0 = time.perf_counter()
    patches = predict_patches(model, data, cfg, device)
    network = time.perf_counter() - t0
    obj, record = stitch(patches, data.positions_px, data.object_shape, data.probe,
                         cfg.inference, data.counts, ValidPixels.of(data))
    seconds = record.pop("seconds")  # timings go to the step summary, not metrics.json
    return Reconstruction(obj, record, {"network": network, **seconds})


def warmed_up_beam(model_path: Path, cfg: ExperimentConfig,
                   given: PtychoData) -> tuple[np.ndarray, np.ndarray | None]:
    """The probe inference starts from and the positions it uses (None: the data's).

    The probe: the warmed-up one the checkpoint holds (``model.probe_source: iterative``,
    :func:`ptycho_torch.warmup.checkpoint_probe`) with the photons of the data's ``given``
    probe (each file's probe carries its own counts' photon scale,
    :func:`ptycho_torch.warmup.keep_photons`), else ``given.probe`` itself. The positions:
    the warm-up's corrected ones when ``given`` is the scan it corrected
    (:func:`ptycho_torch.warmup.scan_positions`). Raises ConfigError when they do not fit."""
    meta = load_checkpoint(model_path).get("meta", {})
    try:
        probe = checkpoint_probe(meta, cfg)
    except ValueError as exc:
        raise ConfigError([f"--model: {model_path}: {exc}"]) from None
    if probe is None:
        return given.probe, None
    if probe.shape[-2:] != given.probe.shape[-2:]:
        raise ConfigError([f"--model: {model_path}'s warmed-up probe is {probe.shape}, the "
                           f"data's {given.probe.shape}"])
    return keep_photons(probe, given.probe), scan_positions(meta, given)


class Clock:
    """Seconds between successive :meth:`lap` calls (the first from construction)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def summarise(rep: StepReport, rec: Reconstruction, metrics: dict, n: int,
              after: dict[str, float]) -> None:
    """Key numbers and the one-line verdict of the step; ``after``: the seconds of the parts
    that follow the reconstruction (:data:`AFTER_PARTS`)."""
    seconds = rec.total_seconds
    rep.record({"patterns": n, **{f"{k}_seconds": v for k, v in rec.seconds.items()},
                "reconstruction_seconds": seconds,
                "patterns_per_second": n / max(seconds, 1e-9),
                **{f"{k}_seconds": v for k, v in after.items()},
                "ground_truth": metrics["ground_truth"]})
    if not metrics["ground_truth"]:
        rep.verdict = (f"reconstructed {n} patterns; metrics against ground truth skipped: "
                       f"{metrics['metrics_skipped']}")
        return
    rep.record({f"{part}_{key}": metrics[part][key] for part in ("amplitude", "phase")
                for key in ("ssim", "psnr", "mae", "frc50")})
    rep.verdict = (f"amplitude SSIM {metrics['amplitude']['ssim']:.3f}, "
                   f"phase SSIM {metrics['phase']['ssim']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("infer", __doc__)
    parser.add_argument("--model", type=Path, required=True, help="model.pt from the train step")
    parser.add_argument("--data", type=Path, required=True,
                        help="data to reconstruct (.cxi, or a PtychoPINN .npz)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help=f"writes {', '.join(PRODUCTS)} here")
    parser.add_argument("--history", type=Path, help="history.csv of the training (optional)")
    parser.add_argument("--step", choices=("infer", "infer_file"), default="infer",
                        help="step name in the evidence: the --report-dir's last part")
    cli.add_set_arg(parser)
    cli.add_execution_args(parser)
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in PRODUCTS]

    def load(a: argparse.Namespace) -> ExperimentConfig:
        return create_inference_payload(a.model, a.data, a.out_dir,
                                        cli.overrides_from_args(a)).config

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        device = setup_execution(cfg.execution)
        model = load_model(args.model, cfg)
        given = read_data(args.data, cfg.data)
        beam, corrected = warmed_up_beam(args.model, cfg, given)  # the warm-up's or given
        data = replace(given, probe=model.probe_for_data(beam),  # trained probe / scale
                       positions_px=given.positions_px if corrected is None else corrected)
        refined = given.probe if model.probe is not None or beam is not given.probe else None
        rep.record({**source_record(cfg), "positions_from_warmup": corrected is not None})
        rec = reconstruct(model, data, cfg, device)
        rep.record({"inference_batch": inference_batch(cfg, device)})
        after, clock = {}, Clock()
        history = figures.read_history(args.history) if args.history else []
        write_ptychodus(args.out_dir / "reconstruction.h5", rec.obj, data, history,
                        cfg.experiment)
        write_reconstruction_npz(args.out_dir / "reconstruction.npz", rec.obj, data)
        after["writing"] = clock.lap()
        metrics = {**evaluate(rec.obj, replace(data, positions_px=given.positions_px),
                              args.data, corrected=corrected, given_probe=refined),
                   "stitching": rec.stitching}
        after["scoring"] = clock.lap()
        metrics["quality"] = quality.assess(  # no ground truth needed: R-factor, half-data FRC
            rec.obj, data, lambda d: predict_patches(model, d, cfg, device), cfg.inference,
            args.out_dir / "quality.png")
        after["quality"] = clock.lap()
        rep.record(quality.key_numbers(metrics["quality"]))
        rep.record({f"{part}_{k}": v for part in ("probe", "positions")
                    for k, v in metrics[part].items()})
        write_atomic(args.out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        rep.write_json("metrics.json", metrics)
        write_figures(args.out_dir, rec.obj, data, metrics)
        for name in PRODUCTS[3:]:
            figures.copy_into(args.out_dir / name, rep.directory)
        if refined is not None or data.true_probe is not None:
            figures.probes(rep.directory / "probe.png", given.probe, data.probe,
                           data.true_probe)
        rep.write_json("stitching.json", rec.stitching)
        after["figures"] = clock.lap()
        summarise(rep, rec, metrics, len(data.counts), after)

    return cli.run_step(args.step, args, products, body, load_config=load,
                        inputs=[args.model, args.data] + ([args.history] if args.history else []))


if __name__ == "__main__":
    raise SystemExit(main())
