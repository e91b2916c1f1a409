"""The FNO generator (``model.generator: fno``): a Fourier neural operator, then a CNN refiner.

It maps a group of ``C = gridsize^2`` normalised diffraction amplitudes ``[B, C, N, N]`` to
complex object patches ``[B, C, N, N]``. A 1 x 1 convolution lifts the amplitudes to ``W =
32 x n_filters_scale`` channels; ``fno_layers`` Fourier layers follow, each ``x -> GELU(K x
+ P x)``: ``K`` a spectral convolution (:class:`SpectralConv`: the lowest ``fno_modes``
frequencies along each axis mixed by learned complex ``W x W`` matrices, the rest dropped)
and ``P`` a pointwise 1 x 1 convolution (which keeps what ``K`` drops). The refiner, one
block of two 3 x 3 convolutions (``16 x n_filters_scale`` channels) on the Fourier features
concatenated with the input amplitudes, sharpens the local detail the truncated spectrum
cannot hold; two 1 x 1 heads give amplitude (``amp_activation``) and phase (``pi * tanh``,
rad). ``pad_object``: the heads' centre N/2 x N/2 is kept and the border is 0; with
``probe_big`` the whole patch is kept (the heads already predict it). The predicted region
is the buffer ``support``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ptycho_torch.config import ModelConfig
from ptycho_torch.generator_cnn import (_block, amplitude_activation, assemble, first_width,
                                        phase_activation, regions)


def fno_width(cfg: ModelConfig) -> int:
    """Channels of the Fourier layers: 32 x ``n_filters_scale``."""
    return 2 * first_width(cfg)


class SpectralConv(nn.Module):
    """``[B, W, N, N]`` -> ``[B, W, N, N]``: ``irfft2(R . rfft2(x))`` with ``R`` learned complex
    ``W x W`` matrices, one per kept frequency (``|k_y| < modes`` rows from both ends of the
    spectrum, ``0 <= k_x < modes`` columns; ``2 modes <= N``); every other frequency is
    zeroed. Runs in float32 (also under mixed-precision autocast). Weights ``[2, W, W,
    modes, modes, 2]``: (rows from the start, from the end), in, out, k_y, k_x, (real,
    imaginary)."""

    def __init__(self, width: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1 / (width * math.sqrt(2))  # each complex entry of variance 1 / width^2
        self.weight = nn.Parameter(scale * torch.randn(2, width, width, modes, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, weight = self.modes, torch.view_as_complex(self.weight)
        spectrum = torch.fft.rfft2(x.float(), norm="ortho")  # [B, W, N, N/2 + 1]
        out = torch.zeros_like(spectrum)
        for rows, w in ((slice(0, m), weight[0]), (slice(-m, None), weight[1])):
            out[:, :, rows, :m] = torch.einsum("bixy,ioxy->boxy", spectrum[:, :, rows, :m], w)
        return torch.fft.irfft2(out, s=x.shape[-2:], norm="ortho")


class FourierLayer(nn.Module):
    """``[B, W, N, N]`` -> ``[B, W, N, N]``: ``GELU(SpectralConv(x) + Conv1x1(x))``."""

    def __init__(self, width: int, modes: int):
        super().__init__()
        self.spectral = SpectralConv(width, modes)
        self.pointwise = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.spectral(x) + self.pointwise(x))


class FNO(nn.Module):
    """Amplitudes ``[B, C, N, N]`` -> complex64 patches ``[B, C, N, N]`` (amplitude, phase in
    rad); ``2 x fno_modes <= N``. ``support`` ``[N, N]``: as the CNN's
    (:func:`ptycho_torch.generator_cnn.regions`)."""

    def __init__(self, cfg: ModelConfig, N: int):
        super().__init__()
        w, width, channels = first_width(cfg), fno_width(cfg), cfg.gridsize ** 2
        support, ring = regions(cfg, N)
        self.register_buffer("support", support, persistent=False)
        self.register_buffer("ring", ring if ring is not None else torch.zeros(0),
                             persistent=False)
        self.pad = cfg.pad_object
        self.lift = nn.Conv2d(channels, width, 1)
        self.layers = nn.Sequential(*(FourierLayer(width, cfg.fno_modes)
                                      for _ in range(cfg.fno_layers)))
        self.refiner = _block(width + channels, w)
        self.amplitude, self.phase = nn.Conv2d(w, channels, 1), nn.Conv2d(w, channels, 1)
        self.amp_activation = amplitude_activation(cfg)

    @staticmethod
    def activation_bytes(cfg: ModelConfig, N: int) -> int:
        """Bytes of one group's largest activation, float32: the refiner's input ``[32 x
        n_filters_scale + C, N, N]`` (a Fourier layer's spectrum, ``[W, N, N/2 + 1]``
        complex, is about as large as its ``[W, N, N]`` input)."""
        return (fno_width(cfg) + cfg.gridsize ** 2) * N * N * 4

    def _head(self, logits: torch.Tensor,
              activation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``[B, C, N, N]`` logits -> the map, centre-only with ``pad_object`` (the ring, with
        ``probe_big``, from the same logits)."""
        if not self.pad:
            return assemble(activation, logits, False, None)
        q = logits.shape[-1] // 4
        border = (self.ring, lambda: logits) if self.ring.numel() else None
        return assemble(activation, logits[..., q:-q, q:-q], True, border)

    def forward(self, amplitudes: torch.Tensor) -> torch.Tensor:
        features = self.layers(self.lift(amplitudes))
        x = self.refiner(torch.cat([features, amplitudes], dim=1))
        return torch.polar(self._head(self.amplitude(x), self.amp_activation),
                           self._head(self.phase(x), phase_activation))
