"""The CNN generator (``model.generator: cnn``): an encoder and two decoders.

It maps a group of ``C = gridsize^2`` normalised diffraction amplitudes ``[B, C, N, N]`` to
complex object patches ``[B, C, N, N]``: one encoder (three blocks of two 3 x 3
convolutions, 16, 32, 64 x ``n_filters_scale`` channels, each followed by 2 x 2 max
pooling) and two decoders, amplitude (``amp_activation``, a transmission) and phase
(``pi * tanh``, rad). ``pad_object`` and ``probe_big`` choose how much of the patch the
decoders predict (:class:`Decoder`); the predicted region is the buffer ``support``, which
weights the physics wrapper's overlap constraint.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ptycho_torch.config import ModelConfig


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


def phase_activation(x: torch.Tensor) -> torch.Tensor:
    """The phase head's activation: ``pi * tanh`` (rad, in (-pi, pi)); shape kept."""
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
        return assemble(self.activation, self.head(features), self.pad,
                        None if self.outer is None else (self.ring, lambda: self.outer(features)))


def assemble(activation: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, pad: bool,
             border: tuple[torch.Tensor, Callable[[], torch.Tensor]] | None) -> torch.Tensor:
    """One head's map ``[B, C, N, N]``: ``activation`` (in float32) of ``logits``, which are
    ``[B, C, N, N]`` without ``pad``, else the central ``[B, C, N/2, N/2]`` padded with 0;
    ``border`` = (``ring`` ``[N, N]`` 0/1, a callable giving full-size logits ``[B, C, N,
    N]``) then fills the ring (``probe_big``). The callable runs only when needed."""
    out = activation(logits.float())
    if not pad:
        return out
    q = out.shape[-1] // 2  # the centre is N/2 wide: N/4 of zeros on each side
    out = nn.functional.pad(out, (q, q, q, q))
    if border is None:
        return out
    ring, outer = border
    return out + ring * activation(outer().float())


def regions(cfg: ModelConfig, N: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(support, ring)`` of an ``N`` x ``N`` patch: ``support`` ``[N, N]`` is 1 on the
    predicted region (the whole patch, or the centre N/2 x N/2 with ``pad_object`` alone);
    ``ring`` ``[N, N]`` is the 0/1 border outside that centre with ``pad_object`` and
    ``probe_big`` (predicted by a second path), else None."""
    centre = torch.zeros(N, N)
    q = N // 4 if cfg.pad_object else 0
    centre[q:N - q, q:N - q] = 1
    ring = 1 - centre if cfg.pad_object and cfg.probe_big else None
    return (centre if ring is None else torch.ones(N, N)), ring


def amplitude_activation(cfg: ModelConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The amplitude head's activation, ``model.amp_activation``."""
    return {"sigmoid": torch.sigmoid, "softplus": nn.functional.softplus,
            "silu": nn.functional.silu}[cfg.amp_activation]


def first_width(cfg: ModelConfig) -> int:
    """Channels of the encoder's first block (16 x ``n_filters_scale``; then 2x and 4x that)."""
    return 16 * cfg.n_filters_scale


class CNN(nn.Module):
    """Amplitudes ``[B, C, N, N]`` -> complex64 patches ``[B, C, N, N]`` (amplitude, phase in
    rad). ``support`` ``[N, N]``: 1 on the predicted region (the centre N/2 x N/2 with
    ``pad_object`` alone), 0 elsewhere."""

    def __init__(self, cfg: ModelConfig, N: int):
        super().__init__()
        w, channels = first_width(cfg), cfg.gridsize ** 2
        support, ring = regions(cfg, N)
        self.register_buffer("support", support, persistent=False)
        self.encoder = nn.Sequential(_block(channels, w), nn.MaxPool2d(2),
                                     _block(w, 2 * w), nn.MaxPool2d(2),
                                     _block(2 * w, 4 * w), nn.MaxPool2d(2))
        self.amplitude = Decoder(w, channels, amplitude_activation(cfg), cfg.pad_object, ring)
        self.phase = Decoder(w, channels, phase_activation, cfg.pad_object, ring)

    @staticmethod
    def activation_bytes(cfg: ModelConfig, N: int) -> int:
        """Bytes of one group's largest activation, float32: the first block's output ``[16 x
        n_filters_scale, N, N]`` (the deeper blocks hold half of it, the decoders at most as
        much)."""
        return first_width(cfg) * N * N * 4

    def forward(self, amplitudes: torch.Tensor) -> torch.Tensor:
        z = self.encoder(amplitudes)
        return torch.polar(self.amplitude(z), self.phase(z))
