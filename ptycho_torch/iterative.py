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
  (:func:`checkpoint_epochs`), against the solver's cumulative seconds (task set-up plus
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
  mode, ``K`` incoherent modes; :func:`solver_probe`): the data's modes, or with
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
import contextlib
import importlib.metadata
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ptycho_torch import cli, figures, physics, quality as no_truth, torchvision_compat
from ptycho_torch.comparison import PARTS, time_to_reach
from ptycho_torch.config import ExperimentConfig, IterativeConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.data import read_data
from ptycho_torch.dataset import PtychoData, true_positions
from ptycho_torch.evidence import StepReport, sha256_file
from ptycho_torch.files import write_atomic
from ptycho_torch.ledger import producer

LOG = logging.getLogger("ptycho_torch")
PTYCHI_REQUIREMENT = "ptychi==2.2.0"
PTYCHI_MISSING = ("pty-chi not installed: run `make iterative` (pip install -e '.[iterative]' "
                  f"then pip install --no-deps {PTYCHI_REQUIREMENT}; see README, 'Iterative "
                  "reference')")
ALWAYS = ("metrics.json", "reconstruction.png")  # written even without pty-chi
WITH_PTYCHI = ("reconstruction.h5", "reconstruction.npz", "frc.png", "scan_positions.png",
               "quality.png")
QUALITY = ("psnr", "ssim", "frc50")


class IterativeUnavailable(RuntimeError):
    """pty-chi cannot be imported; the message says how to install it."""


def ptychi_version() -> str | None:
    """The installed pty-chi version, or None (reads package metadata; imports nothing)."""
    try:
        return importlib.metadata.version("ptychi")
    except importlib.metadata.PackageNotFoundError:
        return None


def import_ptychi() -> tuple[Any, type]:
    """``(ptychi.api, PtychographyTask)``; registers the torchvision stand-in first
    (:mod:`ptycho_torch.torchvision_compat`). Raises :class:`IterativeUnavailable`."""
    torchvision_compat.register()
    try:
        import ptychi.api as api
        from ptychi.api.task import PtychographyTask
    except ImportError as exc:
        raise IterativeUnavailable(f"{PTYCHI_MISSING} (import error: {exc})") from None
    return api, PtychographyTask


# pty-chi's gradient position correction (SGD, updates of at most 5 px per epoch), tuned on
# the default experiment with 1 px position errors per axis, 100 LSQML epochs (RMS error
# 1.38 px given; amplitude / phase PSNR 46.6 / 38.9 dB with exact positions): pty-chi's own
# test settings (step 1, finite-difference object gradient, from the first epoch) end at
# 0.52 px and 40.1 / 36.9 dB; a Fourier-shift object gradient at 0.33 px; also waiting for
# the first tenth of the epochs (an object to register against) and step 2: 0.24 px and
# 42.5 / 36.3 dB (step 3: 0.42 px; 200 epochs: 0.17 px, 44.1 / 44.1 dB).
POSITION_STEP = 2.0
POSITION_START_SHARE = 0.1
POSITION_UPDATE_LIMIT_PX = 5.0


def checkpoint_epochs(epochs: int) -> list[int]:
    """Epochs ``1..epochs`` at which the reconstruction is scored: ``round(10^(k/10))``,
    about ten per decade (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, ...), and the last."""
    marks = {int(round(10 ** (k / 10))) for k in range(int(10 * np.log10(epochs)) + 1)}
    return sorted({e for e in marks if e <= epochs} | {epochs})


def task_options(api: Any, cfg: IterativeConfig, seed: int, gpu: bool,
                 deterministic: bool, modes: int = 1, refine_probe: bool = False) -> Any:
    """pty-chi options for our data conventions (see the module docstring), for a probe of
    ``modes`` incoherent modes, refined when ``cfg.probe_refinement`` or ``refine_probe``."""
    options = api.LSQMLOptions() if cfg.engine == "lsqml" else api.EPIEOptions()
    options.data_options.fft_shift = True
    options.object_options.optimizable = True
    options.object_options.pixel_size_m = 1.0  # positions are given in object pixels
    options.object_options.remove_object_probe_ambiguity.enabled = False
    options.object_options.determine_position_origin_coords_by = (
        api.ObjectPosOriginCoordsMethods.SPECIFIED)
    options.object_options.position_origin_coords = np.array([-0.5, -0.5])
    options.probe_options.optimizable = cfg.probe_refinement or refine_probe
    if modes > 1:  # keep refined modes orthogonal, the strongest first
        orthogonal = options.probe_options.orthogonalize_incoherent_modes
        orthogonal.enabled = options.probe_options.optimizable
        orthogonal.method = api.OrthogonalizationMethods.SVD
        orthogonal.sort_by_occupancy = True
    positions = options.probe_position_options  # used with position_correction only
    positions.optimizable = cfg.position_correction
    positions.constrain_position_mean = False  # it would centre them on 0, not keep their mean
    positions.optimizer = api.Optimizers.SGD
    positions.step_size = POSITION_STEP
    positions.correction_options.correction_type = api.PositionCorrectionTypes.GRADIENT
    positions.correction_options.update_magnitude_limit = POSITION_UPDATE_LIMIT_PX
    positions.correction_options.differentiation_method = (
        api.ImageGradientMethods.FOURIER_SHIFT)
    positions.optimization_plan.start = int(POSITION_START_SHARE * cfg.epochs)
    rec = options.reconstructor_options
    rec.num_epochs = cfg.epochs
    rec.batch_size = cfg.batch_size
    rec.default_device = api.Devices.GPU if gpu else api.Devices.CPU
    rec.random_seed = seed
    rec.allow_nondeterministic_algorithms = not deterministic
    if cfg.engine == "lsqml":
        rec.rescale_probe_intensity_in_first_epoch = False
    return options


def solver_probe(probe: np.ndarray, modes: int) -> tuple[np.ndarray, bool]:
    """The probe modes ``[K, N, N]`` complex64 pty-chi starts from (our FFT convention), and
    whether modes were added. ``probe`` is ``[N, N]`` or ``[C, N, N]``; ``modes`` 0 keeps
    its ``C`` modes; ``K < C`` keeps the ``K`` strongest, ``K > C`` starts from the strongest
    and adds ``K - 1`` by pty-chi's Hermite initialisation (each further mode 2 % of the
    power); either way the total power ``sum_k sum |P_k|^2`` is kept."""
    given = physics.probe_modes(probe).astype(np.complex128)
    power = np.square(np.abs(given)).sum(axis=(1, 2))
    K, order = modes or len(given), np.argsort(-power, kind="stable")
    if K == len(given):
        return given.astype(np.complex64), False
    kept = given[order[:min(K, len(given))]] * np.sqrt(power.sum() / power[order[:K]].sum())
    if K < len(given):
        return kept.astype(np.complex64), False
    import torch
    from ptychi.utils import orthogonalize_initial_probe
    start = torch.zeros((1, K) + given.shape[1:], dtype=torch.complex128)
    start[0, 0] = torch.from_numpy(given[order[0]] * np.sqrt(power.sum() / power[order[0]]))
    return orthogonalize_initial_probe(start)[0].numpy().astype(np.complex64), True


def build_task(api: Any, task_class: type, data: PtychoData, options: Any,
               start: np.ndarray, probe: np.ndarray | None = None) -> Any:
    """A pty-chi task on ``data``: counts ``[n, N, N]``, probe ``[1, K, N, N]`` / N (modes
    ``probe [K, N, N]``, default the data's), positions ``[n, 2]`` (row, col) px, object
    ``[1, H, W]`` started at ``start [H, W]``."""
    mask = None if data.mask is None else data.valid_pixels()
    probe = physics.probe_modes(data.probe if probe is None else probe)
    return task_class(
        options, diffraction_data=data.counts.astype(np.float32),
        object_data=start[None].astype(np.complex64),
        probe_data=(probe / data.N)[None].astype(np.complex64),
        probe_position_x_px=data.positions_px[:, 1].astype(np.float64),
        probe_position_y_px=data.positions_px[:, 0].astype(np.float64),
        valid_pixel_mask=mask)


def quality(obj: np.ndarray, data: PtychoData) -> dict[str, dict[str, float]]:
    """Amplitude and phase PSNR, SSIM, FRC50 of ``obj [H, W]`` (the infer step's scorer)."""
    from ptycho_torch.metrics import score
    from ptycho_torch.stitch import scanned_region
    region = scanned_region(data.positions_px)
    m = score(obj[region], data.ground_truth[region])
    return {part: {k: m[part][k] for k in QUALITY} for part in PARTS}


@contextlib.contextmanager
def torch_defaults_kept() -> Iterator[None]:
    """Restore torch's process-wide default device and dtype on exit: a pty-chi task sets
    both (``torch.set_default_device("cuda")`` on a GPU), which would move every tensor the
    rest of the step creates."""
    import torch
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_device(device)
        torch.set_default_dtype(dtype)


@dataclass(frozen=True)
class Solved:
    """What :func:`reconstruct` returns."""
    obj: np.ndarray  # complex64 [H, W]
    probe: np.ndarray  # complex64 [N, N] (or modes [K, N, N]), our FFT convention
    probe_refined: bool  # probe_refinement, or modes added
    positions: np.ndarray  # float64 [n, 2] (row, col px): corrected, or the data's
    history: list[dict[str, float]]  # loss per epoch
    seconds: float  # the solver's: task set-up and epochs
    start_difference: float  # max |task's object before its first epoch - start|


def reconstruct(data: PtychoData, cfg: ExperimentConfig, gpu: bool,
                on_checkpoint: Callable[[int, float, np.ndarray], None],
                start: np.ndarray | None = None) -> Solved:
    """Run ``cfg.iterative`` on ``data`` from the object ``start [H, W]`` (None: 1
    everywhere); ``on_checkpoint(epoch, seconds, object)`` at each of
    :func:`checkpoint_epochs` (not timed)."""
    api, task_class = import_ptychi()
    start = np.ones(data.object_shape, np.complex64) if start is None else start
    with torch_defaults_kept():
        t0 = time.perf_counter()
        probe, added = solver_probe(data.probe, cfg.iterative.probe_modes)
        task = build_task(api, task_class, data, task_options(
            api, cfg.iterative, cfg.seed, gpu, cfg.execution.deterministic, len(probe),
            added), start, probe)
        seconds, done = time.perf_counter() - t0, 0
        initial = task.get_data_to_cpu("object", as_numpy=True)[0]  # not timed
        difference = float(np.abs(initial - start).max())
        for epoch in checkpoint_epochs(cfg.iterative.epochs):
            t0 = time.perf_counter()
            task.run(epoch - done)
            seconds, done = seconds + time.perf_counter() - t0, epoch
            on_checkpoint(epoch, seconds, task.get_data_to_cpu("object", as_numpy=True)[0])
        table = task.reconstructor.loss_tracker.table
        probe = physics.single_mode(task.get_data_to_cpu("probe", as_numpy=True)[0]) * data.N
        obj = task.get_data_to_cpu("object", as_numpy=True)[0]
        positions = task.get_data_to_cpu("probe_positions", as_numpy=True).astype(np.float64)
    history = [{"epoch": int(e) + 1, "loss": float(v)} for e, v in zip(table["epoch"],
                                                                      table["loss"])]
    return Solved(obj.astype(np.complex64), probe.astype(np.complex64),
                  cfg.iterative.probe_refinement or added, positions, history, seconds,
                  difference)


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
