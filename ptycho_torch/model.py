"""The PtychoPINN physics wrapper, its physics-informed loss and its checkpoint (writing, loading).

:class:`PtychoPINN` holds a generator (``model.generator``, :mod:`ptycho_torch.generators`:
the network that maps a group of ``C = gridsize^2`` normalised diffraction amplitudes
``[B, C, N, N]`` to complex object patches ``[B, C, N, N]``; no layer of it is defined
here) and the physics around it: the probe, the intensity scale, the overlap constraint
and the forward model. With ``object_big`` the C patches are merged on one canvas at their
offsets and re-extracted (the real-space overlap constraint), so neighbours must agree. The
loss never sees the object: the patches go through the same far-field forward
model as the simulator (:func:`ptycho_torch.physics.forward_intensity`) and the
predicted counts are compared with the measured counts, on the pixels that measure
them (:mod:`ptycho_torch.likelihood`: the likelihoods and the valid pixels, not masked by
the detector, not saturated; they know nothing of the network).

Scaling (three factors, kept apart; see :meth:`PtychoPINN.predicted_counts`):

* physics: the probe ``P`` carries the photon scale (``sum |P|^2`` = photons incident
  per exposure, as stored in the CXI file), so expected counts are
  ``lambda = s^2 |F(P * O)|^2`` with ``O`` the predicted patch (a transmission, ``|O|
  <= 1`` with the sigmoid head) and ``s`` the global intensity scale: 1, or learned
  with ``model.intensity_scale_trainable`` (``model.probe_trainable`` learns ``P``);
* statistics: the network sees ``sqrt(counts) / input_scale`` (values of order one,
  :func:`input_scale`); this factor never enters the forward model;
* display: none here (figures and metrics align amplitudes themselves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ptycho_torch import physics
from ptycho_torch.config import ExperimentConfig, ModelConfig
from ptycho_torch.config_factory import ConfigError, load_checkpoint
from ptycho_torch.generators import build_generator
from ptycho_torch.likelihood import LOSSES, ValidPixels


def merge_and_reextract(patches: torch.Tensor, offsets: torch.Tensor,
                        support: torch.Tensor | None = None) -> torch.Tensor:
    """Overlap constraint: average a group's patches on one canvas, extract them again.

    ``patches [B, C, N, N]`` complex, ``offsets [B, C, 2]`` (px, member minus group
    centroid), ``support [N, N]`` real weights of the predicted region (None: 1 on the
    whole patch). Each group gets its own canvas; the canvases are stacked vertically so
    one :func:`physics.place_patches` call serves the whole batch. Differentiable.
    """
    B, C, N, _ = patches.shape
    M = N + 2 * (int(math.ceil(float(offsets.abs().max()))) + 2)
    pos = offsets.to(torch.float64) + M / 2
    pos[..., 0] += M * torch.arange(B, device=pos.device)[:, None]
    pos = pos.reshape(B * C, 2)
    w = (torch.ones(N, N, device=patches.device) if support is None else support).to(
        patches.real.dtype)
    num = physics.place_patches((patches * w).reshape(B * C, N, N), pos, (B * M, M))
    den = physics.place_patches(w.expand(B * C, N, N), pos, (B * M, M))
    merged = num / den.clamp_min(1e-3)
    return physics.extract_patches(merged, pos, N).reshape(B, C, N, N)


class PtychoPINN(nn.Module):
    """Group amplitudes ``[B, C, N, N]`` (+ offsets ``[B, C, 2]``) -> patches ``[B, C, N, N]``.

    ``generator`` (its parameters' prefix: ``generator.``) predicts the patches: given, or
    else built from the registry for ``cfg.generator``; with ``cfg.object_big`` and C > 1
    they then pass the overlap constraint (:func:`merge_and_reextract`, weighted by the
    generator's ``support`` when it has one). With ``cfg.probe_trainable`` the probe is a
    parameter, initialised from ``probe`` (complex ``[N, N]``, or ``[K, N, N]`` incoherent
    modes, the training data's; None: zeros ``[N, N]``, for ``load_state_dict`` to fill):
    ``probe`` ``[N, N, 2]`` (``[K, N, N, 2]``; real, imaginary) in
    units of the buffer ``probe_unit``, the initial probe's RMS amplitude, so that optimiser
    steps are relative to the probe's size. With ``cfg.intensity_scale_trainable`` the
    parameter ``log_intensity_scale`` (scalar, 0 at the start) is ``log s``. Both are saved
    in the checkpoint (:meth:`predicted_counts` says how they enter).
    """

    def __init__(self, cfg: ModelConfig, N: int, probe: torch.Tensor | None = None,
                 generator: nn.Module | None = None):
        super().__init__()
        self.N, self.object_big = N, cfg.object_big and cfg.gridsize > 1
        # before the probe: the generator's initial weights are the first random numbers
        self.generator = build_generator(cfg, N) if generator is None else generator
        self.probe = None
        if cfg.probe_trainable:
            init = torch.zeros(N, N, dtype=torch.complex64) if probe is None else probe
            unit = init.abs().square().mean().sqrt().clamp_min(1e-30).float()
            self.register_buffer("probe_unit", unit)
            self.probe = nn.Parameter(torch.view_as_real((init / unit).to(torch.complex64))
                                      .clone())
        self.log_intensity_scale = (nn.Parameter(torch.zeros(()))
                                    if cfg.intensity_scale_trainable else None)

    def forward(self, amplitudes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        patch = self.generator(amplitudes)
        if self.object_big:
            patch = merge_and_reextract(patch, offsets, getattr(self.generator, "support", None))
        return patch

    def effective_probe(self, probe: torch.Tensor) -> torch.Tensor:
        """``s * P`` ``[N, N]`` (or modes ``[K, N, N]``) complex: ``P`` the trained probe
        (``probe_trainable``) or
        else ``probe`` (the data's, photon-scaled), ``s = exp(log_intensity_scale)`` (1
        unless ``intensity_scale_trainable``)."""
        if self.probe is not None:
            probe = torch.view_as_complex(self.probe) * self.probe_unit
        if self.log_intensity_scale is not None:
            probe = probe * torch.exp(self.log_intensity_scale)
        return probe

    @torch.no_grad()
    def probe_for_data(self, probe: np.ndarray) -> np.ndarray:
        """:meth:`effective_probe` for data whose probe is ``probe`` (complex ``[N, N]`` or
        ``[K, N, N]``), as
        complex64 numpy: what inference stitches, calibrates and saves with. ``probe``
        itself unless the probe or the intensity scale was trained."""
        if self.probe is None and self.log_intensity_scale is None:
            return probe
        return self.effective_probe(torch.from_numpy(probe)).cpu().numpy().astype(np.complex64)

    def predicted_counts(self, probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Expected counts ``lambda = s^2 |F(P * O)|^2`` ``[..., N, N]`` (photons) of the
        patches ``O`` ``[..., N, N]``: the one place where the intensity scale enters. A
        probe of modes ``P_k`` ``[K, N, N]`` gives ``s^2 sum_k |F(P_k * O)|^2``.

        ``F`` is the unitary (ortho) DC-centred far field; ``P`` carries the photon scale
        (``sum |P|^2`` photons per exposure) and ``s`` (:meth:`effective_probe`) corrects it
        globally when trained. The network's input normalisation (:func:`input_scale`)
        plays no part here.
        """
        return physics.forward_intensity(self.effective_probe(probe), patches)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the network's layers (``execution.precision``): autocast to
    bfloat16 or float16 on ``device``; ``float32`` runs as is. The generator's outputs, the
    forward model and the loss stay float32 (the CNN's decoders cast before activating)."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def input_scale(counts: torch.Tensor) -> float:
    """Global statistical normalisation: sqrt of the mean counts per pixel of a data set.

    The network sees ``sqrt(counts) / input_scale`` (values of order one); the
    physics (probe photon scale) is untouched by it.
    """
    return float(counts.mean().clamp_min(1e-12).sqrt())


def physics_loss(model: PtychoPINN, probe: torch.Tensor, counts: torch.Tensor,
                 offsets: torch.Tensor, scale: float, loss: str,
                 pixels: ValidPixels = ValidPixels()) -> torch.Tensor:
    """Loss on a batch of grouped counts ``[B, C, N, N]`` (offsets ``[B, C, 2]``, the data's
    probe ``[N, N]`` or modes ``[K, N, N]``) over the valid ``pixels`` (on the counts'
    device) of each pattern.
    ``model`` may be wrapped in DistributedDataParallel."""
    patches = model(counts.sqrt() / scale, offsets)
    network = getattr(model, "module", model)  # the PtychoPINN inside a DDP wrapper
    return LOSSES[loss](network.predicted_counts(probe, patches), counts, pixels(counts))


def save_checkpoint(path: Path, model: nn.Module, cfg: ExperimentConfig, meta: dict[str, Any]) -> None:
    """``model.pt``: state_dict, the resolved config and metadata; plain types only (read
    back by :func:`ptycho_torch.config_factory.load_checkpoint`, which the config of the
    inference payload comes from)."""
    from ptycho_torch.files import write_atomic
    import io
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(cfg),
                "meta": meta}, buf)
    write_atomic(path, buf.getvalue())


def load_model(path: str | Path, cfg: ExperimentConfig) -> PtychoPINN:
    """The network of checkpoint ``path``, built for ``cfg``: the generator it names (its
    config's ``model.generator``) and its architecture must match ``cfg``'s."""
    ckpt = load_checkpoint(path)
    trained = ckpt.get("config", {}).get("model", {}).get("generator", ModelConfig.generator)
    if trained != cfg.model.generator:
        raise ConfigError([f"model.generator: {path} holds a {trained!r} generator, but "
                           f"{cfg.model.generator!r} is configured (a checkpoint loads only "
                           "into the generator it was trained with)"])
    saved = ckpt["state_dict"].get("probe")  # [N, N, 2] or, with modes, [K, N, N, 2]
    shape = (cfg.data.N, cfg.data.N) if saved is None else tuple(saved.shape[:-1])
    model = PtychoPINN(cfg.model, cfg.data.N, torch.zeros(shape, dtype=torch.complex64))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ConfigError([f"model: {path} does not match the configured architecture "
                           f"(model.*, data.N): {str(exc).splitlines()[0]}"]) from None
    return model.eval()
