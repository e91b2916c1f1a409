"""Inference: predict patches, stitch the object, score it against ground truth.

``python -m ptycho_torch.infer --model model.pt --data test.cxi --out-dir
results/<exp>/infer --report-dir DIR`` writes ``reconstruction.h5`` (ptychodus
product layout), ``metrics.json`` (when the data carry a ground truth) and
``reconstruction.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ptycho_torch import cli, figures
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import create_inference_payload
from ptycho_torch.data import PtychoData, read_cxi, write_atomic_h5
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.model import PtychoPINN, input_scale, load_model
from ptycho_torch.reports import StepReport, write_atomic
from ptycho_torch.stitch import scanned_region, stitch
from ptycho_torch.train import setup_execution

LOG = logging.getLogger("ptycho_torch")


@torch.no_grad()
def predict_patches(model: PtychoPINN, data: PtychoData, cfg: ExperimentConfig,
                    device: torch.device) -> torch.Tensor:
    """Complex patch ``[n, N, N]`` at every scan position of ``data``.

    Each position anchors one group (as in training); its patch is the group's
    first channel, after the overlap constraint when the model has one.
    """
    groups = group_indices(data.positions_px, cfg.model.gridsize ** 2, cfg.model.n_neighbours,
                           cfg.seed)
    offsets = torch.from_numpy(relative_offsets(data.positions_px, groups))
    counts = torch.from_numpy(data.counts)
    scale, bs = input_scale(counts), cfg.execution.inference_batch_size
    model = model.to(device)
    out = [model(counts[groups[i:i + bs]].to(device).sqrt() / scale,
                 offsets[i:i + bs].to(device))[:, 0].cpu() for i in range(0, len(groups), bs)]
    return torch.cat(out)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model.pt from the train step")
    parser.add_argument("--data", type=Path, required=True, help="data to reconstruct (.cxi)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes reconstruction.h5, metrics.json, reconstruction.png here")
    parser.add_argument("--history", type=Path, help="history.csv of the training (optional)")
    cli.add_set_arg(parser)
    cli.add_execution_args(parser)
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in ("reconstruction.h5", "metrics.json", "reconstruction.png")]

    def load(a: argparse.Namespace) -> ExperimentConfig:
        return create_inference_payload(a.model, a.data, a.out_dir,
                                        cli.overrides_from_args(a)).config

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        from ptycho_torch.metrics import score
        device = setup_execution(cfg.execution)
        model = load_model(args.model, cfg)
        data = read_cxi(args.data)
        t0 = time.perf_counter()
        patches = predict_patches(model, data, cfg, device)
        t_net = time.perf_counter() - t0
        obj, stitching = stitch(patches, data.positions_px, data.object_shape, data.probe,
                                cfg.inference, data.counts)
        seconds = time.perf_counter() - t0
        history = figures.read_history(args.history) if args.history else []
        write_ptychodus(products[0], obj, data, history, cfg.experiment)
        region = scanned_region(data.positions_px)
        numbers = {"patterns": len(data.counts), "network_seconds": t_net,
                   "reconstruction_seconds": seconds,
                   "patterns_per_second": len(data.counts) / max(seconds, 1e-9)}
        if data.ground_truth is None:
            products.remove(products[1])
            rep.verdict = "reconstructed (no ground truth in the data: metrics skipped)"
            figures.reconstruction(products[-1], obj[region], None, None)
        else:
            metrics = score(obj[region], data.ground_truth[region])
            ramp_free = score(obj[region], data.ground_truth[region], remove_ramp=True)
            metrics.update({"with_phase_ramp_removed": {k: ramp_free[k] for k in
                                                        ("amplitude", "phase", "alignment")},"region": {"rows": [region[0].start, region[0].stop],
                                       "cols": [region[1].start, region[1].stop],
                                       "definition": "bounding box of the probe centres"},
                            "n_patterns": len(data.counts), "stitching": stitching})
            write_atomic(products[1], json.dumps(metrics, indent=2) + "\n")
            rep.write_json("metrics.json", metrics)
            figures.reconstruction(products[-1], obj[region], data.ground_truth[region], metrics)
            for part in ("amplitude", "phase"):
                for key in ("ssim", "psnr", "mae"):
                    numbers[f"{part}_{key}"] = metrics[part][key]
            rep.verdict = (f"amplitude SSIM {metrics['amplitude']['ssim']:.3f}, "
                           f"phase SSIM {metrics['phase']['ssim']:.3f}")
        figures.copy_into(products[-1], rep.directory)
        rep.write_json("stitching.json", stitching)
        rep.record(numbers)

    return cli.run_step("infer", args, products, body, load_config=load,
                        inputs=[args.model, args.data] + ([args.history] if args.history else []))


if __name__ == "__main__":
    raise SystemExit(main())
