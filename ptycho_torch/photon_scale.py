"""The probe's photon scale: is a data file's probe at its counts' scale, and if not,
rescale it (:func:`rescale_probe`, applied by :func:`ptycho_torch.data.read_data` with
``data.probe_rescale``; validate reports the same test)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ptycho_torch import physics
from ptycho_torch.dataset import PtychoData

# A passive object (|O| <= 1) passes at most the probe's photons: the brightest patterns
# hold at most ``sum |P|^2`` (plus Poisson noise), and some part of a sample usually passes
# more than this share of them. A probe outside the range is rescaled.
BRIGHTEST_TRANSMISSION_MIN = 0.05
BRIGHTEST_QUANTILE = 0.99  # "brightest": this quantile of the patterns (robust to outliers)


def plausible_transmission(totals: np.ndarray) -> tuple[float, float]:
    """The range of the brightest patterns' share of the probe's photons that an object
    explains, for per-pattern counts ``totals [n]``: :data:`BRIGHTEST_TRANSMISSION_MIN` to
    1 + 4 Poisson sigma of the brightest patterns' counts."""
    brightest = float(np.quantile(totals, BRIGHTEST_QUANTILE))
    return BRIGHTEST_TRANSMISSION_MIN, 1.0 + 4.0 / math.sqrt(max(brightest, 1.0))


def brightest_transmission(d: PtychoData) -> float:
    """``r``: the counts of the brightest patterns (the :data:`BRIGHTEST_QUANTILE` of the
    per-pattern totals) over the counts the bare probe would give, both on the valid
    pixels: ``sum_valid c_k / sum_valid |F P|^2``. A passive object gives ``r <= 1`` (up to
    Poisson noise); ``r`` is the intensity transmission of the scan's brightest part."""
    valid = d.valid_pixels()
    modes = physics.probe_modes(torch.from_numpy(d.probe.astype(np.complex128)))
    bare = physics.far_field(modes).abs().square().sum(0)  # the modes' intensities add
    totals = np.where(valid, d.counts, 0).sum(axis=(1, 2), dtype=np.float64)
    return float(np.quantile(totals, BRIGHTEST_QUANTILE) / bare.numpy()[valid].sum())


def rescale_probe(d: PtychoData) -> PtychoData:
    """``d`` with its probe at the counts' photon scale, recorded in ``attrs["probe_scale"]``.

    The probe is kept when the brightest patterns (:func:`brightest_transmission`) hold
    between :data:`BRIGHTEST_TRANSMISSION_MIN` and 1 (+ 4 Poisson sigma) of its photons: an
    object of unknown mean transmission explains that, and training (or the calibration of
    the stitched patches) resolves it. Otherwise the probe's scale cannot be the counts' (a
    probe from another program's normalisation) and it is scaled so that the brightest
    patterns hold exactly its photons: the least change that a passive object can explain.
    A probe of modes ``[K, N, N]`` is scaled as one: its total power ``sum_k sum |P_k|^2``.
    A probe already rescaled (re-read) keeps its record."""
    r = brightest_transmission(d)
    lower, upper = plausible_transmission(d.counts.sum(axis=(1, 2), dtype=np.float64))
    if lower <= r <= upper:
        record = d.attrs.get("probe_scale") or {"factor": 1.0, "applied": False}
        return replace(d, attrs={**d.attrs, "probe_scale": record})
    given = float(np.sum(np.abs(d.probe.astype(np.complex128)) ** 2))
    record = {"factor": r, "applied": True, "given_probe_photons": given,
              "probe_photons": given * r, "brightest_transmission_given": r,
              "rule": f"brightest patterns held {r:.4g} x the given probe's photons, outside "
                      f"[{BRIGHTEST_TRANSMISSION_MIN}, {upper:.4g}]: probe scaled so that they "
                      "hold exactly its photons"}
    probe = (d.probe.astype(np.complex128) * math.sqrt(r)).astype(np.complex64)
    return replace(d, probe=probe, attrs={**d.attrs, "probe_scale": record})
