"""The U-Net generator (``model.generator: unet``): the CNN's encoder, two decoders with skips.

It maps a group of ``C = gridsize^2`` normalised diffraction amplitudes ``[B, C, N, N]`` to
complex object patches ``[B, C, N, N]``. The encoder is the CNN's (three blocks of two 3 x 3
convolutions, 16, 32, 64 x ``n_filters_scale`` channels, each followed by 2 x 2 max
pooling); each decoder, amplitude (``amp_activation``) and phase (``pi * tanh``, rad),
upsamples the bottleneck and at every scale concatenates the encoder block's output of
that scale (the skip connection) before its block. ``pad_object`` and ``probe_big`` work
as for the CNN (:class:`ptycho_torch.generator_cnn.Decoder`): the decoder stops at the N/2
scale and the centre is zero-padded; the border is filled by one more upsampling block
(with the full-size skip) under ``probe_big``. The predicted region is the buffer
``support``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ptycho_torch.config import ModelConfig
from ptycho_torch.generator_cnn import (_block, amplitude_activation, assemble, first_width,
                                        phase_activation, regions)


class SkipDecoder(nn.Module):
    """Bottleneck ``z`` ``[B, 4w, N/8, N/8]`` and the encoder's block outputs ``skips`` (``[B,
    w, N, N]``, ``[B, 2w, N/2, N/2]``, ``[B, 4w, N/4, N/4]``) -> one real map ``[B, C, N,
    N]`` through ``activation`` (float32).

    Each scale: 2x nearest upsampling, the skip of that scale concatenated, one block
    (N/4: 8w -> 2w, N/2: 4w -> w, N: 2w -> w). With ``pad`` the N scale is left out and the
    N/2 map is the zero-padded centre; ``ring`` (``[N, N]`` 0/1, ``probe_big``) adds the N
    scale as a second path that fills the border.
    """

    def __init__(self, w: int, c_out: int, activation: Callable[[torch.Tensor], torch.Tensor],
                 pad: bool, ring: torch.Tensor | None = None):
        super().__init__()
        stages = [(8 * w, 2 * w), (4 * w, w)] + ([] if pad else [(2 * w, w)])
        self.stages = nn.ModuleList(_block(c_in, c) for c_in, c in stages)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(w, c_out, 1)
        self.activation, self.pad = activation, pad
        self.outer = None
        if ring is not None:
            self.outer = nn.Sequential(_block(2 * w, w), nn.Conv2d(w, c_out, 1))
            self.register_buffer("ring", ring, persistent=False)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = z
        for stage, skip in zip(self.stages, reversed(skips)):
            x = stage(torch.cat([self.up(x), skip], dim=1))
        border = None
        if self.outer is not None:
            border = (self.ring, lambda: self.outer(torch.cat([self.up(x), skips[0]], dim=1)))
        return assemble(self.activation, self.head(x), self.pad, border)


class UNet(nn.Module):
    """Amplitudes ``[B, C, N, N]`` (N a multiple of 8) -> complex64 patches ``[B, C, N, N]``
    (amplitude, phase in rad). ``support`` ``[N, N]``: as the CNN's
    (:func:`ptycho_torch.generator_cnn.regions`)."""

    def __init__(self, cfg: ModelConfig, N: int):
        super().__init__()
        w, channels = first_width(cfg), cfg.gridsize ** 2
        support, ring = regions(cfg, N)
        self.register_buffer("support", support, persistent=False)
        self.encoder = nn.ModuleList([_block(channels, w), _block(w, 2 * w),
                                      _block(2 * w, 4 * w)])
        self.pool = nn.MaxPool2d(2)
        self.amplitude = SkipDecoder(w, channels, amplitude_activation(cfg), cfg.pad_object, ring)
        self.phase = SkipDecoder(w, channels, phase_activation, cfg.pad_object, ring)

    @staticmethod
    def activation_bytes(cfg: ModelConfig, N: int) -> int:
        """Bytes of one group's largest activation, float32: the full-size decoder block's
        input ``[2 x 16 x n_filters_scale, N, N]`` (upsampled features and their skip)."""
        return 2 * first_width(cfg) * N * N * 4

    def forward(self, amplitudes: torch.Tensor) -> torch.Tensor:
        skips, x = [], amplitudes
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return torch.polar(self.amplitude(x, skips), self.phase(x, skips))
