"""Iterative reference reconstruction with pty-chi (LSQML or ePIE) of the PINN's test data.

``python -m ptycho_torch.iterative --config-json JSON --data results/EXP/simulate/test.cxi
--out-dir results/EXP/iterative --report-dir reports/<run_id>/EXP/iterative`` reconstructs
the scan in ``DATA`` with pty-chi (``ptychi``, APS), using the data's own probe and
positions (``iterative.probe_refinement`` lets it refine the probe), and writes the
products of the infer step with the same writers and scorer
(:mod:`ptycho_torch.products`: :func:`~ptycho_torch.products.evaluate`, ``write_figures``,
``write_ptychodus``): so the methods are scored identically. ``metrics.json`` also holds

* ``method``: engine, epochs, batch size, probe refinement, pty-chi version;
* ``convergence``: the quality (amplitude/phase PSNR, SSIM, FRC50; the same
  :func:`ptycho_torch.metrics.score`) at checkpoints, about ten per decade of epochs
  (:func:`ptycho_torch.ptychi_solver.checkpoint_epochs`), against the solver's cumulative seconds (task set-up plus
  epochs; the scoring itself is not timed);
* ``time_to_target``: the first checkpoint where amplitude and phase PSNR both reach
  ``iterative.target_psnr_db``;
* ``quality``: the same checks without ground truth as the infer step's (``quality.png``,
  :func:`assess_without_truth`): the R-factor against the counts with the probe and
  positions the solver ended with, and with ``iterative.half_data_frc`` the half-data FRC
  of two more solver runs, one per interleaved half of the scan (about one more
  reconstruction: off by default; never for the hybrid).

**The hybrid** (``--init-object results/EXP/infer/reconstruction.npz --step hybrid``, the
method ``pinn_iterative``): the same solver and settings, started from the PINN's stitched
object instead of 1 (pixels the PINN does not cover start at 1). Its times count the PINN's
reconstruction (network, phase synchronisation, calibration, stitching: the
``reconstruction_seconds`` of the infer step that wrote the file, from its manifest) before
the solver's: ``reconstruction_seconds`` and every ``convergence`` point include them
(``solver_seconds``: the solver's alone). ``initial_object`` records the file, its sha256,
those seconds, and the largest difference between the task's object before its first epoch
and the start (0: it starts from exactly the PINN's object).

Conventions, ours -> pty-chi (checked by the tests: the reconstruction of a known object
registers to it within a small fraction of a pixel):

* counts: DC-centred intensities, passed as they are with ``data_options.fft_shift=True``;
* FFT: ours is unitary (``norm="ortho"``), pty-chi's far field is the unnormalised
  ``fft2``, so the probe is handed over divided by ``N`` (``|fft2(P/N * O)|^2 =
  |F_ortho(P * O)|^2``, the expected counts) and the reconstructed object needs no
  rescaling;
* positions: our probe centre ``p = (row, col)`` puts patch pixel ``(N/2, N/2)`` at object
  pixel ``p`` (top-left corner ``p - N/2``); pty-chi's patch corner is ``p' + origin -
  (N-1)/2``, so ``p' = p`` (x = col, y = row) with the origin fixed at ``(-0.5, -0.5)``
  (``determine_position_origin_coords_by=SPECIFIED``); the object buffer is our object
  frame ``[H, W]``, started at 1 + 0j;
* probe modes (partial coherence): the probe goes to pty-chi as ``[1, K, N, N]`` (one OPR
  mode, ``K`` incoherent modes; :func:`ptycho_torch.ptychi_solver.solver_probe`): the data's modes, or with
  ``iterative.probe_modes`` fewer (the strongest) or more (pty-chi's Hermite initialisation,
  ``ptychi.utils.orthogonalize_initial_probe``, from the strongest mode); added modes are
  always refined, and refined modes are kept orthogonal (SVD, sorted by power) after each
  epoch;
* the probe stays the known one (no object/probe ambiguity removal, no first-epoch probe
  rescaling: the data's probe carries the photon scale), unless ``probe_refinement``
  (``metrics.json`` ``probe``: whether it was refined and, for data simulated with a wrong
  given probe, the given and the final probe's error against the true one; ``probe.png``
  in the evidence);
* the positions stay the recorded ones unless ``position_correction`` (pty-chi's gradient
  correction, SGD, from the first tenth of the epochs on: see ``POSITION_STEP``); ``metrics.json`` ``positions`` says whether they
  were refined and, for data simulated with position errors, the RMS error of the given and
  the final positions against the true ones (``position_errors.png`` in the evidence); the
  products (``reconstruction.h5``, ``.npz``) hold the probe and positions it ended with.

When pty-chi is not installed the step still succeeds: ``metrics.json`` says
``"unavailable": "pty-chi not installed: ..."``, ``reconstruction.png`` shows the message
and the comparison lists the method as not available.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch import cli, figures, quality as no_truth
from ptycho_torch.comparison import PARTS, time_to_reach
from ptycho_torch.config import ExperimentConfig, IterativeConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.data import read_data
from ptycho_torch.dataset import PtychoData, true_positions
from ptycho_torch.evidence import StepReport, sha256_file
from ptycho_torch.files import write_atomic
from ptycho_torch.ledger import producer
from ptycho_torch.ptychi_solver import IterativeUnavailable, Solved, ptychi_version, reconstruct

LOG = logging.getLogger("ptycho_torch")
ALWAYS = ("metrics.json", "reconstruction.png")  # written even without pty-chi
WITH_PTYCHI = ("reconstruction.h5", "reconstruction.npz", "frc.png", "scan_positions.png",
               "quality.png")
QUALITY = ("psnr", "ssim", "frc50")


def quality(obj: np.ndarray, data: PtychoData) -> dict[str, dict[str, float]]:
    """Amplitude and phase PSNR, SSIM, FRC50 of ``obj [H, W]`` (the infer step's scorer)."""
    from ptycho_torch.metrics import score
    from ptycho_torch.stitch import scanned_region
    region = scanned_region(data.positions_px)
    m = score(obj[region], data.ground_truth[region])
    return {part: {k: m[part][k] for k in QUALITY} for part in PARTS}


def method_record(cfg: IterativeConfig) -> dict[str, Any]:
    """``metrics.json`` ``method``: the solver and its settings."""
    return {"library": "pty-chi", "version": ptychi_version(), "engine": cfg.engine,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "probe_refinement": cfg.probe_refinement, "probe_modes": cfg.probe_modes,
            "position_correction": cfg.position_correction,
            "half_data_frc": cfg.half_data_frc}


def write_unavailable(out_dir: Path, rep: StepReport, reason: str, data_file: Path) -> None:
    """The products without pty-chi: metrics.json with the reason, a figure saying it."""
    record = {"unavailable": reason, "method": {"library": "pty-chi", "version": None},
              "data": str(data_file)}
    write_atomic(out_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    figures.message(out_dir / "reconstruction.png", "iterative reference: not run", reason)
    rep.write_json("metrics.json", record)
    figures.copy_into(out_dir / "reconstruction.png", rep.directory)
    rep.record({"available": False})
    rep.verdict = f"SKIPPED: {reason}"
    LOG.warning("iterative: %s", reason)


def run(args: argparse.Namespace, cfg: ExperimentConfig, rep: StepReport,
        products: list[Path]) -> None:
    """The step body: reconstruct, score, write the infer step's products."""
    from ptycho_torch.products import (evaluate, write_figures, write_ptychodus,
                                       write_reconstruction_npz)
    from ptycho_torch.execution import setup_execution
    gpu = setup_execution(cfg.execution).type == "cuda"
    data = read_data(args.data, cfg.data)
    start, initial = (None, None) if args.init_object is None else starting_object(
        args.init_object, data, args.report_dir.parent.parent.parent)
    offset = initial["seconds"] if initial else 0.0  # a hybrid's time includes its start's
    if initial:
        rep.inputs.append(Path(initial["evidence"]))
    curve: list[dict[str, Any]] = []

    def checkpoint(epoch: int, seconds: float, obj: np.ndarray) -> None:
        if data.ground_truth is not None:
            curve.append({"epoch": epoch, "seconds": offset + seconds, **quality(obj, data)})
            LOG.info("epoch %d, %.2f s: amplitude PSNR %.2f dB, phase PSNR %.2f dB", epoch,
                     offset + seconds, curve[-1]["amplitude"]["psnr"],
                     curve[-1]["phase"]["psnr"])

    try:
        solved = reconstruct(data, cfg, gpu, checkpoint, start)
    except IterativeUnavailable as exc:
        del products[len(ALWAYS):]  # what it writes without pty-chi
        write_unavailable(args.out_dir, rep, str(exc), args.data)
        return
    target = cfg.iterative.target_psnr_db
    corrected = solved.positions if cfg.iterative.position_correction else None
    given = data.probe if solved.probe_refined else None
    metrics = {**evaluate(solved.obj, replace(data, probe=solved.probe), args.data, corrected,
                          given),
               "method": method_record(cfg.iterative),
               "reconstruction_seconds": offset + solved.seconds,
               "solver_seconds": solved.seconds, "convergence": curve,
               "time_to_target": {"psnr_db": target,
                                  **time_to_reach(curve, {p: target for p in PARTS})}}
    if initial:
        metrics["initial_object"] = {**initial,
                                     "max_difference_before_first_epoch": solved.start_difference}
    t0 = time.perf_counter()
    metrics["quality"] = assess_without_truth(solved, data, cfg, gpu, initial is not None,
                                              args.out_dir / "quality.png")
    rep.record({"quality_seconds": time.perf_counter() - t0,
                **no_truth.key_numbers(metrics["quality"])})
    # the probe and positions it ended with: refined, or the data's own
    done = replace(data, probe=solved.probe, positions_px=solved.positions)
    write_ptychodus(args.out_dir / "reconstruction.h5", solved.obj, done, solved.history,
                    cfg.experiment)
    write_reconstruction_npz(args.out_dir / "reconstruction.npz", solved.obj, done)
    write_atomic(args.out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    rep.write_json("metrics.json", metrics)
    write_figures(args.out_dir, solved.obj, data, metrics)
    for name in ("reconstruction.png", "frc.png", "scan_positions.png", "quality.png"):
        figures.copy_into(args.out_dir / name, rep.directory)
    if solved.probe_refined or data.true_probe is not None:
        figures.probes(rep.directory / "probe.png", data.probe, solved.probe, data.true_probe)
    if true_positions(data) is not None:
        figures.position_errors(rep.directory / "position_errors.png", true_positions(data),
                                data.positions_px, corrected)
    summarise(rep, metrics, len(data.counts), cfg.iterative)


def assess_without_truth(solved: Solved, data: PtychoData, cfg: ExperimentConfig, gpu: bool,
                         hybrid: bool, figure: Path) -> dict[str, Any]:
    """Quality without ground truth (:func:`ptycho_torch.quality.assess_reconstruction`):
    the R-factor of ``solved`` with the probe and positions it ended with, and, with
    ``iterative.half_data_frc``, the half-data FRC of two more runs of the same solver and
    settings, one on each interleaved half of ``data`` (from 1, the data's probe and
    positions). Not for the hybrid: its start saw both halves, so its halves would not be
    independent."""
    why_not = ("half-data FRC not computed: the hybrid starts from the PINN's object of the "
               "whole scan, so its halves would not be independent" if hybrid else
               "half-data FRC not computed: iterative.half_data_frc is false")

    def one_half(half: PtychoData) -> np.ndarray:
        return reconstruct(half, cfg, gpu, lambda *_: None).obj
    return no_truth.assess_reconstruction(
        solved.obj, data, figure, one_half if cfg.iterative.half_data_frc and not hybrid
        else None, why_not, f"each half reconstructed alone by {cfg.iterative.engine}, "
        f"{cfg.iterative.epochs} epochs, from 1", solved.probe, solved.positions)


def starting_object(path: Path, data: PtychoData, reports_root: Path
                    ) -> tuple[np.ndarray, dict[str, Any]]:
    """The object ``[H, W]`` of another method's ``reconstruction.npz`` as the solver's start
    (pixels it does not cover, 0 there, start at 1 as pty-chi's default start does), and
    its record: the file, its sha256, and the seconds of the reconstruction that made it,
    from the manifest of the step that wrote the file (the newest verified one under
    ``reports_root``, :func:`ptycho_torch.ledger.producer`), so that a hybrid's time counts
    its start's. Raises :class:`ConfigError` for a file that does not fit ``data`` or that
    no step records making."""
    try:
        with np.load(path, allow_pickle=False) as f:
            obj = f["object"]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError([f"--init-object: {path} is not a reconstruction.npz with an "
                           f"'object' array ({exc})"]) from None
    if obj.shape != data.object_shape:
        raise ConfigError([f"--init-object: {path} holds a {obj.shape} object, the data's "
                           f"frame is {data.object_shape}"])
    made = producer(path, reports_root)
    seconds = (made[1].get("numbers") or {}).get("reconstruction_seconds") if made else None
    if not isinstance(seconds, (int, float)):
        raise ConfigError([f"--init-object: no step manifest under {reports_root} records "
                           f"making {path} with its reconstruction_seconds, so the hybrid's "
                           "time could not include its start's"])
    start = np.where(np.abs(obj) > 0, obj, 1).astype(np.complex64)
    return start, {"file": str(path), "sha256": sha256_file(path), "seconds": float(seconds),
                   "evidence": str(made[0]), "method": made[1].get("step")}


def summarise(rep: StepReport, metrics: dict[str, Any], n: int, cfg: IterativeConfig) -> None:
    """Key numbers and the one-line verdict."""
    seconds, solver = metrics["reconstruction_seconds"], metrics["solver_seconds"]
    rep.record({"available": True, "engine": cfg.engine, "epochs": cfg.epochs, "patterns": n,
                "reconstruction_seconds": seconds, "solver_seconds": solver,
                "seconds_per_epoch": solver / cfg.epochs,
                "patterns_per_second": n * cfg.epochs / max(solver, 1e-9),
                "probe_refined": cfg.probe_refinement,
                "positions_refined": cfg.position_correction,
                **{f"position_{k}": v for k, v in metrics["positions"].items()
                   if k.endswith("error_px")},
                **{f"probe_{k}": v for k, v in metrics["probe"].items() if k.endswith("error")}})
    if "initial_object" in metrics:
        start = metrics["initial_object"]
        rep.record({"initial_object": start["file"], "initial_seconds": start["seconds"],
                    "initial_max_difference": start["max_difference_before_first_epoch"]})
    if not metrics["ground_truth"]:
        rep.verdict = f"{cfg.engine} {cfg.epochs} epochs in {seconds:.1f} s (no ground truth)"
        return
    rep.record({f"{p}_{k}": metrics[p][k] for p in PARTS for k in QUALITY})
    reach = metrics["time_to_target"]
    rep.verdict = (f"{cfg.engine}, {cfg.epochs} epochs in {seconds:.1f} s: amplitude PSNR "
                   f"{metrics['amplitude']['psnr']:.1f} dB, phase PSNR "
                   f"{metrics['phase']['psnr']:.1f} dB; {reach['psnr_db']:g} dB "
                   + (f"reached after {reach['epoch']} epochs, {reach['seconds']:.1f} s"
                      if reach["reached"] else "not reached"))


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("iterative", __doc__)
    cli.add_config_args(parser)
    parser.add_argument("--data", type=Path, required=True,
                        help="data to reconstruct (.cxi, or a PtychoPINN .npz)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help=f"writes {', '.join(ALWAYS + WITH_PTYCHI)} here")
    parser.add_argument("--init-object", type=Path,
                        help="start from the object of this reconstruction.npz (the hybrid: "
                             "the PINN's), its reconstruction seconds counted in this step's")
    parser.add_argument("--step", choices=("iterative", "hybrid"), default="iterative",
                        help="step name in the evidence: the --report-dir's last part")
    cli.add_execution_args(parser)
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in ALWAYS + WITH_PTYCHI]

    def load(a: argparse.Namespace) -> ExperimentConfig:
        cfg = cli.config_from_args(a)
        missing = [f"{flag}: {f} not found" for flag, f in (("--data", a.data),
                                                             ("--init-object", a.init_object))
                   if f is not None and not f.is_file()]
        if missing:
            raise ConfigError(missing)
        return cfg

    return cli.run_step(args.step, args, products,
                        lambda cfg, rep: run(args, cfg, rep, products), load_config=load,
                        inputs=[args.data] + ([args.init_object] if args.init_object else []))


if __name__ == "__main__":
    raise SystemExit(main())
