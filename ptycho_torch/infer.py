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
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycho_torch import cli, figures, physics, quality
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import create_inference_payload
from ptycho_torch.cxi import OURS, write_atomic_h5
from ptycho_torch.data import read_data
from ptycho_torch.dataset import PtychoData, true_positions
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.metrics import position_rms_error, probe_error, probe_photon_ratio, score
from ptycho_torch.likelihood import ValidPixels
from ptycho_torch.model import PtychoPINN, autocast, first_width, input_scale, load_model
from ptycho_torch.physics import probe_diameter_px
from ptycho_torch.evidence import StepReport
from ptycho_torch.files import write_atomic
from ptycho_torch.stitch import illumination, scanned_region, stitch
from ptycho_torch.train import setup_execution

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


ACTIVATION_BUDGET = 16 << 20  # bytes of first-layer activations per CPU inference batch


def inference_batch(cfg: ExperimentConfig, device: torch.device) -> int:
    """Groups per forward pass: ``execution.inference_batch_size``, or for 0 (auto) 256 on
    CUDA and on the CPU as many as keep the first convolution's output ``[b, 16 x
    n_filters_scale, N, N]`` float32 within :data:`ACTIVATION_BUDGET` (64 at N = 64, 256 at
    N = 32). Larger CPU batches fall out of the cache: N = 64 on 2 cores took 1.5 s with 64
    groups and 3.1 s with 256, with the same numbers."""
    if cfg.execution.inference_batch_size:
        return cfg.execution.inference_batch_size
    if device.type == "cuda":
        return 256
    per_group = first_width(cfg.model) * cfg.data.N ** 2 * 4  # float32 bytes
    return max(1, ACTIVATION_BUDGET // per_group)


@torch.inference_mode()
def predict_patches(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig,
                    device: torch.device) -> torch.Tensor:
    """Complex patch ``[n, N, N]`` at every scan position of ``data``.

    Each position anchors one group (as in training); its patch is the group's
    first channel, after the overlap constraint when the model has one. The convolutions
    run in the channels-last memory layout (oneDNN's native one: 1.6x faster on 2 CPU
    cores, the same numbers to float32 rounding); ``model`` is moved to it. With
    ``execution.precision`` bfloat16 or float16 the layers run under autocast, as in
    training (bfloat16 on a CPU with AVX-512 BF16, N = 64, 64 groups a pass: 1.5x faster
    than float32, patches within -55 dB of float32's).
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


class Clock:
    """Seconds between successive :meth:`lap` calls (the first from construction)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def positions_record(data: PtychoData, corrected: np.ndarray | None) -> dict[str, Any]:
    """Whether the positions a reconstruction ends with are refined (``corrected [n, 2]``
    px, else the data's), and, when the data know the true ones, the RMS error (px,
    :func:`ptycho_torch.metrics.position_rms_error`) of the given and the final ones."""
    record: dict[str, Any] = {"refined": corrected is not None}
    true = true_positions(data)
    if true is not None:
        final = data.positions_px if corrected is None else corrected
        record["given_rms_error_px"] = position_rms_error(data.positions_px, true)
        record["rms_error_px"] = position_rms_error(final, true)
    return record


def probe_record(data: PtychoData, given: np.ndarray | None) -> dict[str, Any]:
    """Whether the probe a reconstruction ended with (``data.probe``) is refined from the
    ``given`` one (None: not refined), and, when the data know the true probe, the relative
    error of the given and the final one's shape (:func:`ptycho_torch.metrics.probe_error`)
    and their photons against the true probe's."""
    record: dict[str, Any] = {"refined": given is not None}
    if data.true_probe is not None:
        start = data.probe if given is None else given
        record.update({"given_error": probe_error(start, data.true_probe),
                       "error": probe_error(data.probe, data.true_probe),
                       "given_photon_ratio": probe_photon_ratio(start, data.true_probe),
                       "photon_ratio": probe_photon_ratio(data.probe, data.true_probe)})
    return record


def evaluate(obj: np.ndarray, data: PtychoData, source: Path,
             corrected: np.ndarray | None = None, given_probe: np.ndarray | None = None) -> dict:
    """Content of ``metrics.json`` for the object ``[H, W]`` reconstructed from ``source``
    with the probe ``data.probe``.

    Always: ``ground_truth`` (bool), ``n_patterns``, the scanned ``region``, the
    ``positions`` record (:func:`positions_record`; ``corrected``: the refined positions
    ``[n, 2]`` px, if any) and the ``probe`` record (:func:`probe_record`; ``given_probe``:
    the probe it was given, when it refined it). With a ground truth,
    :func:`ptycho_torch.metrics.score` of the region (amplitude, phase, alignment, FRC
    curves) and the same with the phase ramp removed; without one, ``metrics_skipped``: why
    nothing was scored.
    """
    region = scanned_region(data.positions_px)
    out = {"ground_truth": data.ground_truth is not None, "n_patterns": len(data.counts),
           "region": {"rows": [region[0].start, region[0].stop],
                      "cols": [region[1].start, region[1].stop],
                      "definition": "bounding box of the probe centres"},
           "positions": positions_record(data, corrected),
           "probe": probe_record(data, given_probe)}
    if data.ground_truth is None:
        out["metrics_skipped"] = (f"{source} holds no ground-truth object (CXI: "
                                  f"{OURS}/ground_truth_object, NPZ: objectGuess), so there is "
                                  "nothing to score the reconstruction against")
        return out
    truth = data.ground_truth[region]
    ramp_free = score(obj[region], truth, remove_ramp=True)
    return {**out, **score(obj[region], truth),
            "with_phase_ramp_removed": {k: ramp_free[k] for k in
                                        ("amplitude", "phase", "alignment")}}


def write_ptychodus(path: Path, obj: np.ndarray, data: PtychoData,
                    history: list[dict[str, float]], name: str) -> None:
    """Reconstruction as a ptychodus product HDF5 (v1.7 layout, see DESIGN.md)."""
    px = data.object_pixel_size_m

    def fill(f) -> None:
        f.attrs["name"] = name
        f.attrs["comments"] = "ptycho_torch PINN reconstruction"
        f.attrs["detector_object_distance_m"] = data.detector_distance_m
        f.attrs["probe_energy_eV"] = data.energy_eV
        f.attrs["probe_photon_count"] = float(np.abs(data.probe).__pow__(2).sum())
        f.attrs["exposure_time_s"] = 0.0
        f["probe_position_indexes"] = np.arange(len(data.positions_px))
        centre = (np.asarray(obj.shape) - 1) / 2
        f["probe_position_x_m"] = (data.positions_px[:, 1] - centre[1]) * px
        f["probe_position_y_m"] = (data.positions_px[:, 0] - centre[0]) * px
        probe = f.create_dataset("probe", data=data.probe[None, None].astype(np.complex64))
        probe.attrs["pixel_width_m"] = px
        probe.attrs["pixel_height_m"] = px
        o = f.create_dataset("object", data=obj[None].astype(np.complex64))
        o.attrs.update({"center_x_m": 0.0, "center_y_m": 0.0,
                        "pixel_width_m": px, "pixel_height_m": px})
        f["object_layer_spacing_m"] = np.zeros(0)
        f["loss_epochs"] = np.array([h["epoch"] for h in history], dtype=np.int64)
        f["loss_values"] = np.array([h["loss"] for h in history], dtype=np.float64)
    write_atomic_h5(path, fill)


def write_reconstruction_npz(path: Path, obj: np.ndarray, data: PtychoData) -> None:
    """``reconstruction.npz`` (uncompressed, written atomically): ``object`` complex64
    ``[H, W]``, ``amplitude`` and ``phase`` (rad) float32 ``[H, W]``, ``pixel_size_m``
    float64 scalar (object pixel), ``probe_position_px`` float64 ``[n, 2]`` (probe centre
    (row, col) in object pixels), ``scanned_region_px`` int64 ``[2, 2]`` ((row start,
    stop), (col start, stop): the region metrics are computed on), ``probe`` complex64
    ``[N, N]``."""
    region = scanned_region(data.positions_px)
    buf = io.BytesIO()
    np.savez(buf, object=obj.astype(np.complex64), amplitude=np.abs(obj).astype(np.float32),
             phase=np.angle(obj).astype(np.float32),
             pixel_size_m=np.float64(data.object_pixel_size_m),
             probe_position_px=data.positions_px.astype(np.float64),
             scanned_region_px=np.array([[s.start, s.stop] for s in region], dtype=np.int64),
             probe=data.probe.astype(np.complex64))
    write_atomic(path, buf.getvalue())


def ctf_zero_markers(data: PtychoData) -> dict[str, float]:
    """``{label: cycles/px}`` of the first amplitude and phase contrast zeros of the in-line
    hologram that a simulated defocused focused-disk probe records
    (:func:`physics.hologram_ctf_zeros`), for the FRC figure; empty for other data, whose
    defocus is not known."""
    probe = data.attrs.get("generator", {}).get("probe", {})
    if probe.get("kind") != "focused_disk" or not probe.get("defocus_m"):
        return {}
    dz = float(probe["defocus_m"])
    zeros = physics.hologram_ctf_zeros(dz, physics.wavelength_m(data.energy_eV),
                                       data.object_pixel_size_m)
    return {f"{part} contrast zero of the {dz * 1e3:g} mm defocus ({f:.3f} cycles/px)": f
            for part, f in zip(("amplitude", "phase"), zeros)}


def write_figures(out_dir: Path, obj: np.ndarray, data: PtychoData, metrics: dict) -> None:
    """``reconstruction.png``, ``frc.png`` and ``scan_positions.png`` into ``out_dir``."""
    region = scanned_region(data.positions_px)
    truth = None if data.ground_truth is None else data.ground_truth[region]
    figures.reconstruction(out_dir / "reconstruction.png", obj[region], truth,
                           metrics if truth is not None else None)
    if truth is None:
        figures.message(out_dir / "frc.png", "FRC against the ground truth: not computed",
                        f"{metrics['metrics_skipped']}.\nquality.png holds the half-data FRC, "
                        "which needs no ground truth.")
    else:
        curves = metrics["frc_curves"]
        figures.frc_curves(out_dir / "frc.png", np.asarray(curves["freq_cycles_per_px"]),
                           {p: np.asarray(curves[p]) for p in ("amplitude", "phase")},
                           {p: (metrics[p]["frc50"], metrics[p]["frc_1_7"])
                            for p in ("amplitude", "phase")}, data.object_pixel_size_m,
                           "FRC of the reconstruction against the ground truth\n"
                           "(scanned region, after alignment)", ctf_zero_markers(data))
    figures.scan_positions(out_dir / "scan_positions.png", np.abs(obj), data.positions_px,
                           illumination(data.probe, data.positions_px, data.object_shape),
                           probe_diameter_px(torch.from_numpy(data.probe)),
                           data.object_pixel_size_m, region)


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
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        data = replace(given, probe=model.probe_for_data(given.probe))  # trained probe / scale
        refined = given.probe if model.probe is not None else None
        rec = reconstruct(model, data, cfg, device)
        rep.record({"inference_batch": inference_batch(cfg, device)})
        after, clock = {}, Clock()
        history = figures.read_history(args.history) if args.history else []
        write_ptychodus(args.out_dir / "reconstruction.h5", rec.obj, data, history,
                        cfg.experiment)
        write_reconstruction_npz(args.out_dir / "reconstruction.npz", rec.obj, data)
        after["writing"] = clock.lap()
        metrics = {**evaluate(rec.obj, data, args.data, given_probe=refined),
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
