"""The PtychoPINN network, its physics-informed loss and its checkpoint format.

The CNN maps a group of ``C = gridsize^2`` normalised diffraction amplitudes
``[B, C, N, N]`` to complex object patches ``[B, C, N, N]``: one encoder, two
decoders (amplitude with a bounded activation, phase ``pi * tanh``). With
``object_big`` the C patches are merged on one canvas at their offsets and
re-extracted (the real-space overlap constraint), so neighbours must agree. The
loss never sees the object: the patches go through the same far-field forward
model as the simulator (:func:`ptycho_torch.physics.forward_intensity`) and the
predicted counts are compared with the measured counts.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptycho_torch import physics
from ptycho_torch.config import ExperimentConfig, ModelConfig
from ptycho_torch.config_factory import ConfigError, resolve_config


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class Decoder(nn.Module):
    """Bottleneck ``[B, 4w, N/8, N/8]`` -> one real map ``[B, C, M, M]`` (M = N or N/2)."""

    def __init__(self, w: int, c_out: int, full_size: bool):
        super().__init__()
        widths = [4 * w, 2 * w, w] + ([w] if full_size else [])
        layers: list[nn.Module] = []
        for c_in, c in zip(widths[:-1], widths[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _block(c_in, c)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], c_out, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


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


class PtychoPINN(nn.Module):
    """Group amplitudes ``[B, C, N, N]`` (+ offsets ``[B, C, 2]``) -> patches ``[B, C, N, N]``."""

    def __init__(self, cfg: ModelConfig, N: int):
        super().__init__()
        w, channels = 16 * cfg.n_filters_scale, cfg.gridsize ** 2
        self.N, self.pad, self.object_big = N, cfg.pad_object, cfg.object_big and channels > 1
        support = torch.zeros(N, N)
        q = N // 4 if cfg.pad_object else 0
        support[q:N - q, q:N - q] = 1
        self.register_buffer("support", support, persistent=False)
        self.encoder = nn.Sequential(_block(channels, w), nn.MaxPool2d(2),
                                     _block(w, 2 * w), nn.MaxPool2d(2),
                                     _block(2 * w, 4 * w), nn.MaxPool2d(2))
        self.amplitude = Decoder(w, channels, full_size=not cfg.pad_object)
        self.phase = Decoder(w, channels, full_size=not cfg.pad_object)
        self.amp_activation = {"sigmoid": torch.sigmoid, "softplus": nn.functional.softplus,
                               "silu": nn.functional.silu}[cfg.amp_activation]

    def forward(self, amplitudes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        z = self.encoder(amplitudes)
        amp = self.amp_activation(self.amplitude(z))
        phase = math.pi * torch.tanh(self.phase(z))
        patch = torch.polar(amp, phase)
        if self.pad:  # the predicted centre N/2 x N/2, zero outside (oversampling)
            q = self.N // 4
            patch = nn.functional.pad(patch, (q, q, q, q))
        if self.object_big:
            patch = merge_and_reextract(patch, offsets, self.support)
        return patch


def poisson_loss(predicted: torch.Tensor, counts: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean Poisson negative log-likelihood per pixel, minus its value at a perfect fit.

    ``predicted`` and ``counts`` are expected and measured counts ``[..., N, N]``.
    The subtracted saturated term does not depend on the model, so gradients are
    those of the NLL; the value is half the Poisson deviance (about 0.5 per
    pixel when the fit is at the noise level).
    """
    nll = predicted - counts * torch.log(predicted + eps)
    saturated = counts - counts * torch.log(counts + eps)
    return (nll - saturated).mean()


def amplitude_mae_loss(predicted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between predicted and measured amplitudes sqrt(counts)."""
    return (predicted.clamp_min(0).sqrt() - counts.sqrt()).abs().mean()


LOSSES = {"poisson": poisson_loss, "mae": amplitude_mae_loss}


def input_scale(counts: torch.Tensor) -> float:
    """Global statistical normalisation: sqrt of the mean counts per pixel of a data set.

    The network sees ``sqrt(counts) / input_scale`` (values of order one); the
    physics (probe photon scale) is untouched by it.
    """
    return float(counts.mean().clamp_min(1e-12).sqrt())


def physics_loss(model: PtychoPINN, probe: torch.Tensor, counts: torch.Tensor,
                 offsets: torch.Tensor, scale: float, loss: str) -> torch.Tensor:
    """Loss on a batch of grouped counts ``[B, C, N, N]`` (offsets ``[B, C, 2]``, probe ``[N, N]``)."""
    patches = model(counts.sqrt() / scale, offsets)
    return LOSSES[loss](physics.forward_intensity(probe, patches), counts)


def save_checkpoint(path: Path, model: nn.Module, cfg: ExperimentConfig, meta: dict[str, Any]) -> None:
    """``model.pt``: state_dict, the resolved config and metadata; plain types only."""
    from ptycho_torch.reports import write_atomic
    import io
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(cfg),
                "meta": meta}, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load ``model.pt`` safely (``weights_only=True``: no arbitrary unpickling)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError([f"model: checkpoint {path} not found"]) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise ConfigError([f"model: {path} is not a readable ptycho_torch checkpoint ({exc})"]) from None


def load_checkpoint_config(path: str | Path) -> ExperimentConfig:
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError([f"model: {path} lacks 'config' or 'state_dict'"])
    return resolve_config(ckpt["config"])


def load_model(path: str | Path, cfg: ExperimentConfig) -> PtychoPINN:
    """The network of checkpoint ``path``, built for ``cfg`` (architecture must match)."""
    model = PtychoPINN(cfg.model, cfg.data.N)
    try:
        model.load_state_dict(load_checkpoint(path)["state_dict"])
    except RuntimeError as exc:
        raise ConfigError([f"model: {path} does not match the configured architecture "
                           f"(model.*, data.N): {str(exc).splitlines()[0]}"]) from None
    return model.eval()
