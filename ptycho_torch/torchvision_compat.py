"""A stand-in for the one piece of torchvision that pty-chi imports.

pty-chi 2.2.0 (``ptychi``) declares torchvision as a dependency, but uses it in exactly one
place: ``ptychi/utils.py`` does ``from torchvision.transforms import GaussianBlur`` at import
time, for ``generate_gaussian_random_image`` (a smoothed random initial guess, which this
pipeline never asks for). The torchvision wheels pip can reach here are linked against
CUDA torch and fail to import beside our CPU torch 2.13.0 ("operator torchvision::nms does
not exist"), which would break ``import ptychi`` as well. So the ``iterative`` extra installs
pty-chi with ``--no-deps`` (no torchvision), and :func:`register` puts this module's
minimal ``torchvision.transforms`` into ``sys.modules`` before ``ptychi`` is imported: a
:class:`GaussianBlur` with torchvision's semantics, in plain torch. Where a real torchvision
is installed, :func:`register` leaves it alone.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Sequence

import torch


def _kernel_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised Gaussian ``[size]`` sampled at integer offsets from the centre (px)."""
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class GaussianBlur(torch.nn.Module):
    """``torchvision.transforms.GaussianBlur`` with a fixed ``sigma`` (px): a separable
    Gaussian of ``kernel_size`` (odd; ``(width, height)`` as torchvision orders it) applied
    to real images ``[..., H, W]``, reflect-padded (mirrored without repeating the edge).
    torchvision draws sigma from ``[lo, hi]`` when given a pair; only ``lo == hi`` is
    supported here, which is what pty-chi asks for."""

    def __init__(self, kernel_size: int | Sequence[int],
                 sigma: float | Sequence[float] = (0.1, 2.0)) -> None:
        super().__init__()
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        sg = (sigma, sigma) if isinstance(sigma, (int, float)) else tuple(sigma)
        if len(ks) != 2 or any(k <= 0 or k % 2 == 0 for k in ks):
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if len(sg) != 2 or sg[0] != sg[1] or sg[0] <= 0:
            raise ValueError("this stand-in supports one fixed positive sigma only, "
                             f"got {sigma}")
        self.kernel_size, self.sigma = ks, float(sg[0])

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        shape = img.shape
        x = img.reshape(-1, 1, shape[-2], shape[-1])
        kx = _kernel_1d(self.kernel_size[0], self.sigma, img.dtype, img.device)
        ky = _kernel_1d(self.kernel_size[1], self.sigma, img.dtype, img.device)
        px, py = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        x = torch.nn.functional.pad(x, (px, px, py, py), mode="reflect")
        x = torch.nn.functional.conv2d(x, ky.view(1, 1, -1, 1))
        x = torch.nn.functional.conv2d(x, kx.view(1, 1, 1, -1))
        return x.reshape(shape)


def register() -> bool:
    """Make ``import torchvision.transforms`` give :class:`GaussianBlur` when no torchvision
    is installed. Returns True when the stand-in was registered (or already is)."""
    if "torchvision" in sys.modules:
        return getattr(sys.modules["torchvision"], "__ptycho_torch_stand_in__", False)
    if importlib.util.find_spec("torchvision") is not None:
        return False
    package = types.ModuleType("torchvision")
    package.__doc__ = __doc__
    package.__path__ = []  # a package, so that the submodule import resolves
    package.__ptycho_torch_stand_in__ = True
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlur
    package.transforms = transforms
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
    return True
