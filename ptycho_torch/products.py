"""A reconstruction's products and its scoring, the same for every method (the PINN, the
iterative reference, the hybrid): ``metrics.json`` content (:func:`evaluate`), the
ptychodus product ``reconstruction.h5`` (:func:`write_ptychodus`), ``reconstruction.npz``
(:func:`write_reconstruction_npz`) and the figures (:func:`write_figures`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ptycho_torch import figures, physics
from ptycho_torch.cxi import OURS
from ptycho_torch.dataset import PtychoData, true_positions
from ptycho_torch.files import atomic_path, write_atomic
from ptycho_torch.metrics import position_rms_error, probe_error, probe_photon_ratio, score
from ptycho_torch.physics import probe_diameter_px
from ptycho_torch.stitch import illumination, scanned_region


def positions_record(data: PtychoData, corrected: np.ndarray | None) -> dict[str, Any]:
    """Whether the positions a reconstruction ends with are refined (``corrected [n, 2]``
    px, else the data's), and, when the data know the true ones, the RMS error (px,
    :func:`ptycho_torch.metrics.position_rms_error`) of the given and the final ones."""
    record: dict[str, Any] = {"refined": corrected is not None}
    true = true_positions(data)
    if true is not None:
        final = data.positions_px if corrected is None else corrected
        record["given_rms_error_px"] = position_rms_error(data.positions_px, true)
        record["rms_error_px"] = position_rms_error(final, true)
    return record



def probe_record(data: PtychoData, given: np.ndarray | None) -> dict[str, Any]:
    """Whether the probe a reconstruction ended with (``data.probe``) is refined from the
    ``given`` one (None: not refined), and, when the data know the true probe, the relative
    error of the given and the final one's shape (:func:`ptycho_torch.metrics.probe_error`)
    and their photons against the true probe's."""
    record: dict[str, Any] = {"refined": given is not None}
    if data.true_probe is not None:
        start = data.probe if given is None else given
        record.update({"given_error": probe_error(start, data.true_probe),
                       "error": probe_error(data.probe, data.true_probe),
                       "given_photon_ratio": probe_photon_ratio(start, data.true_probe),
                       "photon_ratio": probe_photon_ratio(data.probe, data.true_probe)})
    return record



def evaluate(obj: np.ndarray, data: PtychoData, source: Path,
             corrected: np.ndarray | None = None, given_probe: np.ndarray | None = None) -> dict:
    """Content of ``metrics.json`` for the object ``[H, W]`` reconstructed from ``source``
    with the probe ``data.probe``.

    Always: ``ground_truth`` (bool), ``n_patterns``, the scanned ``region``, the
    ``positions`` record (:func:`positions_record`; ``corrected``: the refined positions
    ``[n, 2]`` px, if any) and the ``probe`` record (:func:`probe_record`; ``given_probe``:
    the probe it was given, when it refined it). With a ground truth,
    :func:`ptycho_torch.metrics.score` of the region (amplitude, phase, alignment, FRC
    curves) and the same with the phase ramp removed; without one, ``metrics_skipped``: why
    nothing was scored.
    """
    region = scanned_region(data.positions_px)
    out = {"ground_truth": data.ground_truth is not None, "n_patterns": len(data.counts),
           "region": {"rows": [region[0].start, region[0].stop],
                      "cols": [region[1].start, region[1].stop],
                      "definition": "bounding box of the probe centres"},
           "positions": positions_record(data, corrected),
           "probe": probe_record(data, given_probe)}
    if data.ground_truth is None:
        out["metrics_skipped"] = (f"{source} holds no ground-truth object (CXI: "
                                  f"{OURS}/ground_truth_object, NPZ: objectGuess), so there is "
                                  "nothing to score the reconstruction against")
        return out
    truth = data.ground_truth[region]
    ramp_free = score(obj[region], truth, remove_ramp=True)
    return {**out, **score(obj[region], truth),
            "with_phase_ramp_removed": {k: ramp_free[k] for k in
                                        ("amplitude", "phase", "alignment")}}



def write_ptychodus(path: Path, obj: np.ndarray, data: PtychoData,
                    history: list[dict[str, float]], name: str) -> None:
    """Reconstruction as a ptychodus product HDF5 (its v1.7 layout: docs/outputs.md)."""
    px = data.object_pixel_size_m

    def fill(f) -> None:
        f.attrs["name"] = name
        f.attrs["comments"] = "ptycho_torch PINN reconstruction"
        f.attrs["detector_object_distance_m"] = data.detector_distance_m
        f.attrs["probe_energy_eV"] = data.energy_eV
        f.attrs["probe_photon_count"] = float(np.abs(data.probe).__pow__(2).sum())
        f.attrs["exposure_time_s"] = 0.0
        f["probe_position_indexes"] = np.arange(len(data.positions_px))
        centre = (np.asarray(obj.shape) - 1) / 2
        f["probe_position_x_m"] = (data.positions_px[:, 1] - centre[1]) * px
        f["probe_position_y_m"] = (data.positions_px[:, 0] - centre[0]) * px
        probe = f.create_dataset(  # [1 OPR mode, K incoherent modes, N, N]
            "probe", data=physics.probe_modes(data.probe)[None].astype(np.complex64))
        probe.attrs["pixel_width_m"] = px
        probe.attrs["pixel_height_m"] = px
        o = f.create_dataset("object", data=obj[None].astype(np.complex64))
        o.attrs.update({"center_x_m": 0.0, "center_y_m": 0.0,
                        "pixel_width_m": px, "pixel_height_m": px})
        f["object_layer_spacing_m"] = np.zeros(0)
        f["loss_epochs"] = np.array([h["epoch"] for h in history], dtype=np.int64)
        f["loss_values"] = np.array([h["loss"] for h in history], dtype=np.float64)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        fill(f)



def write_reconstruction_npz(path: Path, obj: np.ndarray, data: PtychoData) -> None:
    """``reconstruction.npz`` (uncompressed, written atomically): ``object`` complex64
    ``[H, W]``, ``amplitude`` and ``phase`` (rad) float32 ``[H, W]``, ``pixel_size_m``
    float64 scalar (object pixel), ``probe_position_px`` float64 ``[n, 2]`` (probe centre
    (row, col) in object pixels), ``scanned_region_px`` int64 ``[2, 2]`` ((row start,
    stop), (col start, stop): the region metrics are computed on), ``probe`` complex64
    ``[N, N]`` (``[K, N, N]``: incoherent modes)."""
    region = scanned_region(data.positions_px)
    buf = io.BytesIO()
    np.savez(buf, object=obj.astype(np.complex64), amplitude=np.abs(obj).astype(np.float32),
             phase=np.angle(obj).astype(np.float32),
             pixel_size_m=np.float64(data.object_pixel_size_m),
             probe_position_px=data.positions_px.astype(np.float64),
             scanned_region_px=np.array([[s.start, s.stop] for s in region], dtype=np.int64),
             probe=data.probe.astype(np.complex64))
    write_atomic(path, buf.getvalue())



def ctf_zero_markers(data: PtychoData) -> dict[str, float]:
    """``{label: cycles/px}`` of the first amplitude and phase contrast zeros of the in-line
    hologram that a simulated defocused focused-disk probe records
    (:func:`physics.hologram_ctf_zeros`), for the FRC figure; empty for other data, whose
    defocus is not known."""
    probe = data.attrs.get("generator", {}).get("probe", {})
    if probe.get("kind") != "focused_disk" or not probe.get("defocus_m"):
        return {}
    dz = float(probe["defocus_m"])
    zeros = physics.hologram_ctf_zeros(dz, physics.wavelength_m(data.energy_eV),
                                       data.object_pixel_size_m)
    return {f"{part} contrast zero of the {dz * 1e3:g} mm defocus ({f:.3f} cycles/px)": f
            for part, f in zip(("amplitude", "phase"), zeros)}



def write_figures(out_dir: Path, obj: np.ndarray, data: PtychoData, metrics: dict) -> None:
    """``reconstruction.png``, ``frc.png`` and ``scan_positions.png`` into ``out_dir``."""
    region = scanned_region(data.positions_px)
    truth = None if data.ground_truth is None else data.ground_truth[region]
    figures.reconstruction(out_dir / "reconstruction.png", obj[region], truth,
                           metrics if truth is not None else None)
    if truth is None:
        figures.message(out_dir / "frc.png", "FRC against the ground truth: not computed",
                        f"{metrics['metrics_skipped']}.\nquality.png holds the half-data FRC, "
                        "which needs no ground truth.")
    else:
        curves = metrics["frc_curves"]
        figures.frc_curves(out_dir / "frc.png", np.asarray(curves["freq_cycles_per_px"]),
                           {p: np.asarray(curves[p]) for p in ("amplitude", "phase")},
                           {p: (metrics[p]["frc50"], metrics[p]["frc_1_7"])
                            for p in ("amplitude", "phase")}, data.object_pixel_size_m,
                           "FRC of the reconstruction against the ground truth\n"
                           "(scanned region, after alignment)", ctf_zero_markers(data))
    figures.scan_positions(out_dir / "scan_positions.png", np.abs(obj), data.positions_px,
                           illumination(data.probe, data.positions_px, data.object_shape),
                           probe_diameter_px(torch.from_numpy(data.probe)),
                           data.object_pixel_size_m, region)
