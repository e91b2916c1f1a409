"""How well predicted counts explain measured counts: the likelihoods and the valid pixels.

Physics and statistics only, no network: training (:mod:`ptycho_torch.model`,
:mod:`ptycho_torch.train`), stitching's calibration (:mod:`ptycho_torch.stitch`) and
scoring use these without knowing how the counts were predicted.

* :class:`ValidPixels`: which detector pixels measure the diffraction (not masked by the
  detector, not saturated);
* :func:`poisson_loss`: the Poisson negative log-likelihood of the measured counts,
  :func:`amplitude_mae_loss` the amplitude-MAE alternative (:data:`LOSSES` names them for
  ``training.loss``).

Units: ``predicted`` and ``counts`` are photon counts per pixel ``[..., N, N]``, the
expected and the measured (float, same dtype).
"""

from __future__ import annotations

import dataclasses

import torch

from ptycho_torch.dataset import PtychoData


@dataclasses.dataclass(frozen=True, eq=False)
class ValidPixels:
    """Which recorded pixels measure the diffraction, for the losses and the calibration.

    ``good``: bool ``[N, N]``, False where the detector mask flags a pixel (beamstop, dead:
    it records 0 counts whatever arrives), None when every pixel is good. ``saturation``:
    counts at which the detector clips (0 = none). A clipped count only says "at least
    ``saturation``": saturated pixels are left out of the fit, like masked ones (simpler and
    cheaper than a censored likelihood; only that lower bound is lost). The mask is per
    detector, the saturated pixels per pattern: :meth:`__call__` combines both for a batch
    of counts.
    """
    good: torch.Tensor | None = None
    saturation: float = 0.0

    @classmethod
    def of(cls, data: PtychoData) -> ValidPixels:
        """The detector mask and saturation level recorded with ``data``."""
        good = data.valid_pixels()
        return cls(None if good.all() else torch.from_numpy(good), data.saturation_counts)

    def to(self, device: torch.device) -> ValidPixels:
        """The same, with the detector mask on ``device`` (where the counts are)."""
        return self if self.good is None else dataclasses.replace(self, good=self.good.to(device))

    def __call__(self, counts: torch.Tensor) -> torch.Tensor | None:
        """Bool ``[..., N, N]`` (or ``[N, N]``, broadcasting to ``counts [..., N, N]``): the
        valid pixels, i.e. good and ``counts < saturation``; None when all are valid."""
        valid = self.good
        if self.saturation > 0:
            below = counts < self.saturation
            valid = below if valid is None else valid & below
        return valid


def _mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values [..., N, N]`` over all pixels, the invalid ones counting 0 (``valid``:
    bool, broadcasting to ``values``; None: all valid, the plain mean).

    Dividing by the pixel count rather than the valid count gives every valid pixel the
    same weight in every batch, whatever its number of saturated pixels: the batch loss is
    an unbiased estimate of the data set's, and data-parallel shards average to the
    one-process value exactly. At the noise level it is 0.5 x the valid fraction.
    """
    return values.mean() if valid is None else values.where(valid, 0).mean()


def poisson_loss(predicted: torch.Tensor, counts: torch.Tensor,
                 valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Mean Poisson negative log-likelihood per pixel, minus its value at a perfect fit.

    ``predicted`` and ``counts`` are expected and measured counts ``[..., N, N]``;
    ``valid`` (:class:`ValidPixels`, bool broadcasting to them; None = all) selects the
    pixels that count: the others get no weight and no gradient (:func:`_mean`). The
    subtracted term (the NLL of the statistically "saturated" model, not detector
    saturation) does not depend on the model, so gradients are those of the NLL; the value
    is half the Poisson deviance (about 0.5 per valid pixel when the fit is at the noise
    level).
    """
    nll = predicted - counts * torch.log(predicted + eps)
    saturated = counts - counts * torch.log(counts + eps)
    return _mean(nll - saturated, valid)


def amplitude_mae_loss(predicted: torch.Tensor, counts: torch.Tensor,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error between predicted and measured amplitudes sqrt(counts) over the
    ``valid`` pixels (as in :func:`poisson_loss`)."""
    return _mean((predicted.clamp_min(0).sqrt() - counts.sqrt()).abs(), valid)


LOSSES = {"poisson": poisson_loss, "mae": amplitude_mae_loss}  # by training.loss
