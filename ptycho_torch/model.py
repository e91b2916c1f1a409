"""The PtychoPINN network, its physics-informed loss and its checkpoint (writing, loading).

The CNN maps a group of ``C = gridsize^2`` normalised diffraction amplitudes
``[B, C, N, N]`` to complex object patches ``[B, C, N, N]``: one encoder, two
decoders (amplitude with a bounded activation, phase ``pi * tanh``). With
``object_big`` the C patches are merged on one canvas at their offsets and
re-extracted (the real-space overlap constraint), so neighbours must agree. The
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
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ptycho_torch import physics
from ptycho_torch.config import ExperimentConfig, ModelConfig
from ptycho_torch.config_factory import ConfigError, load_checkpoint
from ptycho_torch.likelihood import LOSSES, ValidPixels


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


def _phase_activation(x: torch.Tensor) -> torch.Tensor:
    return math.pi * torch.tanh(x)


class Decoder(nn.Module):
    """Bottleneck ``[B, 4w, N/8, N/8]`` -> one real map ``[B, C, N, N]`` through ``activation``.

    Without ``pad`` the map is predicted at full size. With ``pad`` (``pad_object``) only
    the central N/2 x N/2 is predicted and the border is 0, unless ``ring`` (``probe_big``:
    the ``[N, N]`` 0/1 mask of the border) is given: then a second path, one more
    upsampling block from the N/2 features, fills the border. The activation runs in
    float32 (also under mixed-precision autocast).
    """

    def __init__(self, w: int, c_out: int, activation: Callable[[torch.Tensor], torch.Tensor],
                 pad: bool, ring: torch.Tensor | None = None):
        super().__init__()
        widths = [4 * w, 2 * w, w] + ([] if pad else [w])
        layers: list[nn.Module] = []
        for c_in, c in zip(widths[:-1], widths[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _block(c_in, c)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], c_out, 1)
        self.activation, self.pad = activation, pad
        self.outer = None
        if ring is not None:
            self.outer = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                       _block(w, w), nn.Conv2d(w, c_out, 1))
            self.register_buffer("ring", ring, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        features = self.body(z)
        out = self.activation(self.head(features).float())
        if not self.pad:
            return out
        q = out.shape[-1] // 2  # the centre is N/2 wide: N/4 of zeros on each side
        out = nn.functional.pad(out, (q, q, q, q))
        if self.outer is None:
            return out
        return out + self.ring * self.activation(self.outer(features).float())


def merge_and_reextract(patches: torch.Tensor, offsets: torch.Tensor,
                        support: torch.Tensor) -> torch.Tensor:
    """Overlap constraint: average a group's patches on one canvas, extract them again.

    ``patches [B, C, N, N]`` complex, ``offsets [B, C, 2]`` (px, member minus group
    centroid), ``support [N, N]`` real weights of the predicted region. Each group
    gets its own canvas; the canvases are stacked vertically so one
    :func:`physics.place_patches` call serves the whole batch. Differentiable.
    """
    B, C, N, _ = patches.shape
    M = N + 2 * (int(math.ceil(float(offsets.abs().max()))) + 2)
    pos = offsets.to(torch.float64) + M / 2
    pos[..., 0] += M * torch.arange(B, device=pos.device)[:, None]
    pos = pos.reshape(B * C, 2)
    w = support.to(patches.real.dtype)
    num = physics.place_patches((patches * w).reshape(B * C, N, N), pos, (B * M, M))
    den = physics.place_patches(w.expand(B * C, N, N), pos, (B * M, M))
    merged = num / den.clamp_min(1e-3)
    return physics.extract_patches(merged, pos, N).reshape(B, C, N, N)


def first_width(cfg: ModelConfig) -> int:
    """Channels of the encoder's first block (16 x ``n_filters_scale``; then 2x and 4x that)."""
    return 16 * cfg.n_filters_scale


class PtychoPINN(nn.Module):
    """Group amplitudes ``[B, C, N, N]`` (+ offsets ``[B, C, 2]``) -> patches ``[B, C, N, N]``.

    With ``cfg.probe_trainable`` the probe is a parameter, initialised from ``probe``
    (complex ``[N, N]``, the training data's; None: zeros, for ``load_state_dict`` to
    fill): ``probe`` ``[N, N, 2]`` (real, imaginary) in units of the buffer
    ``probe_unit``, the initial probe's RMS amplitude, so that optimiser steps are
    relative to the probe's size. With ``cfg.intensity_scale_trainable`` the parameter
    ``log_intensity_scale`` (scalar, 0 at the start) is ``log s``. Both are saved in the
    checkpoint (:meth:`predicted_counts` says how they enter).
    """

    def __init__(self, cfg: ModelConfig, N: int, probe: torch.Tensor | None = None):
        super().__init__()
        w, channels = first_width(cfg), cfg.gridsize ** 2
        self.N, self.object_big = N, cfg.object_big and channels > 1
        centre = torch.zeros(N, N)
        q = N // 4 if cfg.pad_object else 0
        centre[q:N - q, q:N - q] = 1
        ring = 1 - centre if cfg.pad_object and cfg.probe_big else None
        # the predicted region, weighting the overlap constraint's average
        self.register_buffer("support", centre if ring is None else torch.ones(N, N),
                             persistent=False)
        self.encoder = nn.Sequential(_block(channels, w), nn.MaxPool2d(2),
                                     _block(w, 2 * w), nn.MaxPool2d(2),
                                     _block(2 * w, 4 * w), nn.MaxPool2d(2))
        amp_activation = {"sigmoid": torch.sigmoid, "softplus": nn.functional.softplus,
                          "silu": nn.functional.silu}[cfg.amp_activation]
        self.amplitude = Decoder(w, channels, amp_activation, cfg.pad_object, ring)
        self.phase = Decoder(w, channels, _phase_activation, cfg.pad_object, ring)
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
        z = self.encoder(amplitudes)
        patch = torch.polar(self.amplitude(z), self.phase(z))
        if self.object_big:
            patch = merge_and_reextract(patch, offsets, self.support)
        return patch

    def effective_probe(self, probe: torch.Tensor) -> torch.Tensor:
        """``s * P`` ``[N, N]`` complex: ``P`` the trained probe (``probe_trainable``) or
        else ``probe`` (the data's, photon-scaled), ``s = exp(log_intensity_scale)`` (1
        unless ``intensity_scale_trainable``)."""
        if self.probe is not None:
            probe = torch.view_as_complex(self.probe) * self.probe_unit
        if self.log_intensity_scale is not None:
            probe = probe * torch.exp(self.log_intensity_scale)
        return probe

    @torch.no_grad()
    def probe_for_data(self, probe: np.ndarray) -> np.ndarray:
        """:meth:`effective_probe` for data whose probe is ``probe`` (complex ``[N, N]``), as
        complex64 numpy: what inference stitches, calibrates and saves with. ``probe``
        itself unless the probe or the intensity scale was trained."""
        if self.probe is None and self.log_intensity_scale is None:
            return probe
        return self.effective_probe(torch.from_numpy(probe)).cpu().numpy().astype(np.complex64)

    def predicted_counts(self, probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Expected counts ``lambda = s^2 |F(P * O)|^2`` ``[..., N, N]`` (photons) of the
        patches ``O`` ``[..., N, N]``: the one place where the intensity scale enters.

        ``F`` is the unitary (ortho) DC-centred far field; ``P`` carries the photon scale
        (``sum |P|^2`` photons per exposure) and ``s`` (:meth:`effective_probe`) corrects it
        globally when trained. The network's input normalisation (:func:`input_scale`)
        plays no part here.
        """
        return physics.forward_intensity(self.effective_probe(probe), patches)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the network's layers (``execution.precision``): autocast to
    bfloat16 or float16 on ``device``; ``float32`` runs as is. The decoders' outputs, the
    forward model and the loss stay float32 (:class:`Decoder` casts before activating)."""
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
    probe ``[N, N]``) over the valid ``pixels`` (on the counts' device) of each pattern.
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
    """The network of checkpoint ``path``, built for ``cfg`` (architecture must match)."""
    model = PtychoPINN(cfg.model, cfg.data.N)
    try:
        model.load_state_dict(load_checkpoint(path)["state_dict"])
    except RuntimeError as exc:
        raise ConfigError([f"model: {path} does not match the configured architecture "
                           f"(model.*, data.N): {str(exc).splitlines()[0]}"]) from None
    return model.eval()
