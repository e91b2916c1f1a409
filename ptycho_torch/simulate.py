"""Simulate ptychographic data sets: object, probe, scan, Poisson counts -> CXI.

``python -m ptycho_torch.simulate --config-json '{...}' --train-out train.cxi
--test-out test.cxi --report-dir DIR`` writes a training and a test data set
of *different* objects (seeds ``[seed, 0]`` and ``[seed, 1]``).

Photon scaling: the noise-free intensities ``|F(P * O_patch)|^2`` are scaled by
one factor ``s`` so that the mean total counts per pattern equal ``nphotons``;
the stored probe is ``sqrt(s) * P``, so the stored probe and object reproduce the
expected counts directly through :func:`ptycho_torch.physics.forward_intensity`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ptycho_torch import cli, physics
from ptycho_torch.config import DataConfig, ExperimentConfig, ObjectConfig, ScanConfig
from ptycho_torch.data import PtychoData, write_cxi
from ptycho_torch.reports import StepReport


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1]."""
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def random_field(size: int, slope: float, cutoff_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth real Gaussian random field ``[size, size]`` in [0, 1].

    Power spectrum ``|k|^-slope`` for spatial frequencies below ``1/cutoff_px``.
    """
    k = np.fft.fftfreq(size)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    kk[0, 0] = 1.0 / size
    filt = kk ** (-slope / 2) * np.exp(-(kk * cutoff_px) ** 2)
    noise = rng.standard_normal((size, size))
    return _normalise(np.fft.ifft2(np.fft.fft2(noise) * filt).real)


def lines_image(size: int, blur_px: float, rng: np.random.Generator, n_lines: int = 0) -> np.ndarray:
    """PtychoPINN-style "lines": random straight segments, Gaussian-blurred, in [0, 1]."""
    img = np.zeros((size, size))
    for _ in range(n_lines or size // 2):
        (r0, c0), (r1, c1) = rng.uniform(0, size, (2, 2))
        t = np.linspace(0, 1, 2 * size)
        img[np.clip((r0 + t * (r1 - r0)).astype(int), 0, size - 1),
            np.clip((c0 + t * (c1 - c0)).astype(int), 0, size - 1)] += 1
    k = np.fft.fftfreq(size)
    gauss = np.exp(-2 * (math.pi * blur_px) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    return _normalise(np.fft.ifft2(np.fft.fft2(img) * gauss).real)


def make_object(size: int, cfg: ObjectConfig, rng: np.random.Generator) -> np.ndarray:
    """Complex object ``[size, size]`` with amplitude and phase in the configured ranges."""
    if cfg.kind == "grf":
        amp = random_field(size, cfg.spectral_slope, cfg.feature_size_px, rng)
        phase = random_field(size, cfg.spectral_slope, cfg.feature_size_px, rng)
    else:
        amp = 1.0 - lines_image(size, cfg.feature_size_px, rng)
        phase = lines_image(size, cfg.feature_size_px, rng)
    amplitude = cfg.amplitude_min + (cfg.amplitude_max - cfg.amplitude_min) * amp
    return amplitude * np.exp(1j * cfg.phase_max_rad * (2 * phase - 1))


def raster_positions(size: int, N: int, cfg: ScanConfig, rng: np.random.Generator) -> np.ndarray:
    """Probe centres ``[n, 2]`` (row, col px) on a jittered raster inside a ``size`` object.

    Every patch, jitter included, stays inside ``[0, size)`` with a 1 px margin
    for bilinear sampling.
    """
    lo, hi = N / 2 + cfg.jitter_px, size - N / 2 - 1 - cfg.jitter_px
    n_side = int(math.floor((hi - lo) / cfg.step_px)) + 1
    axis = lo + cfg.step_px * np.arange(n_side)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    pos = np.stack([rows.ravel(), cols.ravel()], axis=1)
    return pos + rng.uniform(-cfg.jitter_px, cfg.jitter_px, pos.shape)


def simulate_scan(obj: np.ndarray, probe_unit: np.ndarray, positions: np.ndarray,
                  nphotons: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts ``[n, N, N]`` float32 and the photon-scaled probe ``[N, N]``.

    The intensity scale makes the mean total counts per pattern equal ``nphotons``.
    """
    N = probe_unit.shape[0]
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(positions), N)
    intensity = physics.forward_intensity(torch.from_numpy(probe_unit), patches).numpy()
    scale = nphotons / intensity.sum(axis=(1, 2)).mean()
    counts = rng.poisson(intensity * scale).astype(np.float32)
    return counts, (probe_unit * math.sqrt(scale)).astype(np.complex64)


def simulate_dataset(cfg: DataConfig, size: int, seed: tuple[int, int]) -> PtychoData:
    """One simulated scan of a fresh object of side ``size`` px, seeded by ``seed``."""
    rng = np.random.default_rng(list(seed))
    pixel = physics.object_pixel_size_m(cfg.energy_eV, cfg.detector_distance_m,
                                        cfg.detector_pixel_size_m, cfg.N)
    probe = physics.focused_disk_probe(cfg.N, cfg.probe.pupil_radius_px, cfg.probe.defocus_m,
                                       physics.wavelength_m(cfg.energy_eV), pixel).numpy()
    obj = make_object(size, cfg.object, rng)
    positions = raster_positions(size, cfg.N, cfg.scan, rng)
    counts, probe_scaled = simulate_scan(obj, probe, positions, cfg.nphotons, rng)
    return PtychoData(counts=counts, probe=probe_scaled, positions_px=positions,
                      object_shape=obj.shape, energy_eV=cfg.energy_eV,
                      detector_distance_m=cfg.detector_distance_m,
                      detector_pixel_size_m=cfg.detector_pixel_size_m,
                      object_pixel_size_m=pixel, ground_truth=obj.astype(np.complex64),
                      attrs={"nphotons": cfg.nphotons, "seed": list(seed),
                             "generator": {"object": asdict(cfg.object), "probe": asdict(cfg.probe),
                                           "scan": asdict(cfg.scan)}})


def run(cfg: ExperimentConfig, train_out: Path, test_out: Path) -> dict:
    """Simulate and write the train and test sets; returns key numbers for the report."""
    train = simulate_dataset(cfg.data, cfg.data.object.train_size_px, (cfg.seed, 0))
    test = simulate_dataset(cfg.data, cfg.data.object.test_size_px, (cfg.seed, 1))
    write_cxi(train_out, train)
    write_cxi(test_out, test)
    return {"train_patterns": len(train.counts), "test_patterns": len(test.counts),
            "N": cfg.data.N, "object_pixel_size_nm": train.object_pixel_size_m * 1e9,
            "mean_counts_per_pattern_train": float(train.counts.sum(axis=(1, 2)).mean()),
            "nphotons": cfg.data.nphotons}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--train-out", type=Path, required=True, help="training set (.cxi)")
    parser.add_argument("--test-out", type=Path, required=True, help="test set (.cxi)")
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        numbers = run(cfg, args.train_out, args.test_out)
        rep.record(numbers)
        rep.verdict = (f"simulated {numbers['train_patterns']} training and "
                       f"{numbers['test_patterns']} test patterns of {cfg.data.N}x{cfg.data.N}")
    return cli.run_step("simulate", args, [args.train_out, args.test_out], body)


if __name__ == "__main__":
    raise SystemExit(main())
