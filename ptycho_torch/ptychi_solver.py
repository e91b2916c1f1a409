"""pty-chi (APS's iterative ptychography library) on our data: the task built in our
conventions, run for ``cfg.iterative`` epochs, scored at checkpoints.

Shared by the iterative step (:mod:`ptycho_torch.iterative`: the reference reconstruction
and the hybrid; its docstring states the conventions, ours -> pty-chi) and the probe
warm-up (:mod:`ptycho_torch.warmup`: a short run with probe refinement whose probe the
PINN then uses). pty-chi is imported only when a task is built (:func:`import_ptychi`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ptycho_torch import physics, torchvision_compat
from ptycho_torch.config import ExperimentConfig, IterativeConfig
from ptycho_torch.dataset import PtychoData


PTYCHI_REQUIREMENT = "ptychi==2.2.0"



PTYCHI_MISSING = ("pty-chi not installed: run `make iterative` (pip install -e '.[iterative]' "
                  f"then pip install --no-deps {PTYCHI_REQUIREMENT}; see README, 'Iterative "
                  "reference')")



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
