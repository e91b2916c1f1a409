"""The probe's photon scale (ptycho_torch/photon_scale.py): a probe off by a factor is fitted
to the counts when read, a probe that fits them is kept."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import synthetic_scan
from ptycho_torch import physics
from ptycho_torch.config import DataConfig
from ptycho_torch.cxi import write_cxi
from ptycho_torch.data import read_data
from ptycho_torch.dataset import PtychoData


def _lit_scan(probe_factor: float, n: int = 200, N: int = 16, seed: int = 4) -> PtychoData:
    """Patterns of a flat object of intensity transmission ``t_k`` uniform in [0.4, 1]:
    Poisson counts of ``t_k |F P|^2`` (``P``: a 3 px Gaussian of 1e5 photons), given with
    the probe times ``sqrt(probe_factor)`` (another program's normalisation)."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.meshgrid(np.arange(N) - N / 2, np.arange(N) - N / 2))
    probe = np.exp(-r ** 2 / 18.0).astype(np.complex128)
    probe *= np.sqrt(1e5 / np.square(np.abs(probe)).sum())
    bare = physics.far_field(torch.from_numpy(probe)).abs().square().numpy()
    t = rng.uniform(0.4, 1.0, n)
    d = synthetic_scan(n, N, seed)
    return replace(d, counts=rng.poisson(t[:, None, None] * bare).astype(np.float32),
                   probe=(probe * np.sqrt(probe_factor)).astype(np.complex64))


@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_a_probe_off_by_a_factor_is_rescaled_to_the_counts(tmp_path, factor):
    true = _lit_scan(1.0)
    given = _lit_scan(factor)
    write_cxi(tmp_path / "off.cxi", given)
    d = read_data(tmp_path / "off.cxi", DataConfig(N=16))
    photons = np.square(np.abs(d.probe.astype(np.complex128))).sum()
    true_photons = np.square(np.abs(true.probe.astype(np.complex128))).sum()
    # the brightest patterns pass ~all of the probe's photons (t_k up to 1): the true scale
    assert photons == pytest.approx(true_photons, rel=0.02)
    record = d.attrs["probe_scale"]
    assert record["applied"] is True
    assert record["factor"] == pytest.approx(photons / record["given_probe_photons"], rel=1e-5)
    assert record["factor"] == pytest.approx(1 / factor, rel=0.02)
    assert np.allclose(np.angle(d.probe), np.angle(given.probe), atol=1e-6)  # shape kept
    write_cxi(tmp_path / "again.cxi", d)  # re-read: consistent now, the record is kept
    again = read_data(tmp_path / "again.cxi", DataConfig(N=16))
    assert np.array_equal(again.probe, d.probe) and again.attrs["probe_scale"] == record


def test_a_probe_that_fits_the_counts_is_kept_and_rescaling_can_be_turned_off(tmp_path):
    write_cxi(tmp_path / "ok.cxi", _lit_scan(1.0))
    kept = read_data(tmp_path / "ok.cxi", DataConfig(N=16))
    assert np.array_equal(kept.probe, _lit_scan(1.0).probe)
    assert kept.attrs["probe_scale"] == {"factor": 1.0, "applied": False}
    write_cxi(tmp_path / "off.cxi", _lit_scan(1e3))
    as_given = read_data(tmp_path / "off.cxi", DataConfig(N=16, probe_rescale=False))
    assert np.array_equal(as_given.probe, _lit_scan(1e3).probe)
    assert "probe_scale" not in as_given.attrs
