"""The probe warm-up: a short pty-chi run with probe refinement whose probe the PINN uses.

With ``model.probe_source: iterative`` the PINN does not train with the data file's probe
(a guess, e.g. the optics model's) but with the probe of ``model.probe_warmup_epochs``
epochs of the iterative method (:func:`ptycho_torch.ptychi_solver.reconstruct`, the same
task and settings as the iterative step: ``iterative.engine``, ``batch_size``) on the
training scan, with ``iterative.probe_refinement`` forced on and
``iterative.position_correction`` as configured. The beam is the same for the test scan, so
inference uses the warmed-up probe too (it travels in ``model.pt``'s metadata). Positions
are a property of one scan: the corrected ones travel too, with the digest of the scan they
were corrected on (:func:`scan_digest`), and inference uses them only on that very scan
(``data.test_fraction: 0``, the recipe for a measured scan: :func:`scan_positions`).

The warm-up file (``probe.npz``, :func:`write_warmup`): ``probe`` (complex64 ``[N, N]``, or
``[K, N, N]`` modes with ``iterative.probe_modes``; our unitary-FFT convention and photon
scale: see :func:`keep_photons`),
``positions_px`` ``[n, 2]`` (row, col px of the training scan: corrected, or the given
ones), ``given_probe`` (the data file's) and ``record`` (JSON text, :class:`WarmedUp`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.config import ExperimentConfig
from ptycho_torch.dataset import PtychoData
from ptycho_torch.files import write_atomic
from ptycho_torch.metrics import probe_error, probe_photon_ratio
from ptycho_torch.physics import far_field_centroid, inside_positions, shift_far_field
from ptycho_torch.ptychi_solver import ptychi_version, reconstruct

GIVEN, ITERATIVE = "given", "iterative"  # the values of model.probe_source


@dataclass(frozen=True)
class WarmedUp:
    """What the warm-up ends with."""
    probe: np.ndarray  # complex64 [N, N] or [K, N, N] (iterative.probe_modes), photons per exposure
    positions_px: np.ndarray  # float64 [n, 2] (row, col) px: corrected, or the data's
    given_probe: np.ndarray  # complex64, the probe the data file holds
    record: dict[str, Any]  # JSON-able: settings, seconds, what changed (see warm_up)

    @property
    def positions_corrected(self) -> bool:
        return bool(self.record["position_correction"])


def warmup_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``iterative`` set for the warm-up: ``model.probe_warmup_epochs`` epochs,
    probe refinement on; engine, batch size and position correction as configured."""
    return replace(cfg, iterative=replace(cfg.iterative, epochs=cfg.model.probe_warmup_epochs,
                                          probe_refinement=True))


def keep_photons(probe: np.ndarray, given: np.ndarray) -> np.ndarray:
    """``probe`` scaled to the photons ``sum |P|^2`` of the ``given`` probe (any equal
    shapes, complex): refinement leaves the object/probe scale free, the given probe's
    photons were fitted to the counts (``data.probe_rescale``) and the PINN's object is a
    transmission (``|O| <= 1``) that cannot make up for a dimmer probe."""
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    target = float(np.sum(np.abs(given.astype(np.complex128)) ** 2))
    return (probe * np.sqrt(target / max(power, 1e-300))).astype(np.complex64)


def scan_digest(data: PtychoData) -> str:
    """SHA-256 (hex) of a scan's counts and recorded positions: which scan a warm-up's
    corrected positions belong to."""
    digest = hashlib.sha256(np.ascontiguousarray(data.counts).tobytes())
    digest.update(np.ascontiguousarray(data.positions_px, np.float64).tobytes())
    return digest.hexdigest()


def warm_up(data: PtychoData, cfg: ExperimentConfig, gpu: bool) -> WarmedUp:
    """Refine ``data``'s probe (and positions, with ``iterative.position_correction``) by
    :func:`warmup_config`'s pty-chi run on ``data``; the probe's far field is centred where
    the given probe's is (a linear phase ramp the counts cannot see,
    :func:`ptycho_torch.physics.shift_far_field`) and it keeps the given one's photons
    (:func:`keep_photons`). Raises ``ptychi_solver.IterativeUnavailable`` without
    pty-chi."""
    wcfg = warmup_config(cfg)
    solved = reconstruct(data, wcfg, gpu, lambda *_: None)
    # the counts leave a linear phase ramp between probe and object free: fix it by the
    # given probe's far field (its centroid), so the object carries none of it
    ramp = far_field_centroid(data.probe) - far_field_centroid(solved.probe)
    probe = keep_photons(shift_far_field(solved.probe, ramp), data.probe)
    corrected = wcfg.iterative.position_correction
    positions = data.positions_px
    if corrected:  # a correction that would move a patch off the object stops at its edge
        positions = inside_positions(solved.positions, data.N, data.object_shape)
    record = {"probe_source": ITERATIVE, "library": "pty-chi", "version": ptychi_version(),
              "engine": wcfg.iterative.engine, "epochs": wcfg.iterative.epochs,
              "batch_size": wcfg.iterative.batch_size, "position_correction": corrected,
              "patterns": int(len(data.counts)), "scan_sha256": scan_digest(data),
              "seconds": solved.seconds,
              "final_loss": solved.history[-1]["loss"] if solved.history else None,
              "photon_ratio_before_rescaling": probe_photon_ratio(solved.probe, data.probe),
              "far_field_shift_bins": ramp.tolist(),
              "probe_change": probe_error(data.probe, probe),
              "position_change_rms_px": float(np.sqrt(np.mean(np.sum(
                  np.square(positions - data.positions_px), axis=1)))),
              "positions_stopped_at_the_edge": int(np.sum(np.any(
                  positions != solved.positions, axis=1))) if corrected else 0}
    return WarmedUp(probe, positions.astype(np.float64), data.probe.astype(np.complex64),
                    record)


def write_warmup(path: Path, warmed: WarmedUp) -> None:
    """The warm-up file (module docstring), written atomically."""
    buf = io.BytesIO()
    np.savez(buf, probe=warmed.probe, positions_px=warmed.positions_px,
             given_probe=warmed.given_probe, record=np.array(json.dumps(warmed.record)))
    write_atomic(path, buf.getvalue())


def read_warmup(path: Path) -> WarmedUp:
    """A file of :func:`write_warmup`."""
    with np.load(path, allow_pickle=False) as f:
        return WarmedUp(f["probe"], f["positions_px"], f["given_probe"],
                        json.loads(str(f["record"])))


def apply_warmup(data: PtychoData, warmed: WarmedUp, *, positions: bool) -> PtychoData:
    """``data`` with the warmed-up probe (its modes: ``iterative.probe_modes`` may give a
    single-mode guess several) and, with ``positions`` (the warmed-up scan itself) and
    corrected positions, those positions. Raises ValueError when the probes' sides differ."""
    if warmed.probe.shape[-2:] != data.probe.shape[-2:]:
        raise ValueError(f"the warm-up's probe is {warmed.probe.shape}, the data's "
                         f"{data.probe.shape}")
    if positions and warmed.positions_corrected:
        if warmed.positions_px.shape != data.positions_px.shape:
            raise ValueError(f"the warm-up's positions are {warmed.positions_px.shape}, the "
                             f"data's {data.positions_px.shape}")
        return replace(data, probe=warmed.probe, positions_px=warmed.positions_px)
    return replace(data, probe=warmed.probe)


def source_record(cfg: ExperimentConfig, warmed: WarmedUp | None = None) -> dict[str, Any]:
    """Where the probe came from, for payloads, checkpoints and manifests: ``probe_source``
    and, for the warm-up, its epochs and (given the warm-up ``warmed``) its position
    correction, seconds and the probe's change
    (:func:`ptycho_torch.metrics.probe_error` of the given probe against the warmed-up)."""
    record: dict[str, Any] = {"probe_source": cfg.model.probe_source}
    if cfg.model.probe_source == ITERATIVE:
        record["probe_warmup_epochs"] = cfg.model.probe_warmup_epochs
    if warmed is not None:
        record.update({"probe_warmup_position_correction": warmed.positions_corrected,
                       "probe_warmup_seconds": warmed.record["seconds"],
                       "probe_warmup_change": warmed.record["probe_change"],
                       "probe_warmup_position_change_rms_px":
                           warmed.record["position_change_rms_px"]})
    return record


def scan_positions(meta: dict[str, Any], data: PtychoData) -> np.ndarray | None:
    """The warm-up's corrected positions ``[n, 2]`` px that a checkpoint's metadata ``meta``
    holds (``probe_warmup_positions``), when ``data`` is the scan they were corrected on
    (the same :func:`scan_digest`); None otherwise (another scan, no correction)."""
    positions = meta.get("probe_warmup_positions")
    record = meta.get("probe_warmup_record") or {}
    if positions is None or record.get("scan_sha256") != scan_digest(data):
        return None
    return _as_numpy(positions, np.float64)


def checkpoint_probe(meta: dict[str, Any], cfg: ExperimentConfig) -> np.ndarray | None:
    """The warmed-up probe a checkpoint's metadata ``meta`` holds (complex64 numpy ``[N, N]``
    or ``[K, N, N]``), or None for ``model.probe_source: given``. Raises ValueError when an
    iterative model's checkpoint lacks it."""
    if cfg.model.probe_source != ITERATIVE:
        return None
    probe = meta.get("probe_warmup")
    if probe is None:
        raise ValueError("model.probe_source is 'iterative' but the checkpoint holds no "
                         "warmed-up probe (meta 'probe_warmup'): retrain it")
    return _as_numpy(probe, np.complex64)


def _as_numpy(value: Any, dtype: type) -> np.ndarray:
    """A checkpoint's tensor (or array) as a numpy array of ``dtype``."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype)
