"""The generators by name (``model.generator``): networks from amplitudes to object patches.

A generator is an ``nn.Module`` class, built as ``cls(cfg: ModelConfig, N: int)``, that maps
a batch of groups of normalised diffraction amplitudes ``[B, C, N, N]`` (``C =
gridsize^2``, ``sqrt(counts) / input_scale``) to complex64 object patches ``[B, C, N, N]``
(a transmission: amplitude and phase in rad). It answers, without being built,

* ``activation_bytes(cfg, N) -> int`` (a static or class method): bytes of one group's
  largest activation in float32; the inference step sizes its CPU batches by it;

and may hold a buffer ``support`` ``[N, N]``: the weights of the region it predicts, which
the overlap constraint averages with (without it: the whole patch, uniformly).
:class:`ptycho_torch.model.PtychoPINN` wraps it with the probe and the forward model.

Adding a generator: a module holding its class, and one line in :data:`GENERATORS`. This
module imports no torch (the config layer imports it when Snakemake parses the workflow):
a generator's module is imported when it is asked for.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from torch import nn

    from ptycho_torch.config import ModelConfig

# name -> "module:class"
GENERATORS: Mapping[str, str] = MappingProxyType({
    "cnn": "ptycho_torch.generator_cnn:CNN",
    "unet": "ptycho_torch.generator_unet:UNet",
    "fno": "ptycho_torch.generator_fno:FNO",
})


def generator_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` in :data:`GENERATORS` (its module imported now)."""
    module, _, attr = GENERATORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_generator(cfg: ModelConfig, N: int) -> nn.Module:
    """A new generator ``cfg.generator`` for patches of ``N`` x ``N`` px (random weights)."""
    return generator_class(cfg.generator)(cfg, N)
