"""pty-chi's position correction and probe refinement on the default test scan, imperfect.

    python benchmarks/imperfect_scan.py [--case positions|defocus|shift|amplitude]
                                        [--epochs 100]

Simulates the default experiment's test scan (576 patterns of 32 x 32) three times, alike
but for what its file records: exactly, and with the error of ``--case`` (the patterns are
always simulated with the true probe at the true positions):

* ``positions``: Gaussian position errors of 1 px per axis (``data.scan.position_error_px``);
* ``defocus``: the probe 1 mm further from focus than the true one (5 -> 6 mm, +20 %);
* ``shift``: the probe shifted by 1 px along both axes;
* ``amplitude``: the probe's amplitude 10 % too high.

Reconstructs each with the iterative method's settings (LSQML, ``--epochs``): the exact
file, the imperfect one as given, the imperfect one with the matching refinement
(``iterative.position_correction`` or ``iterative.probe_refinement``), and the exact file
with that refinement too (what turning it on costs where nothing was wrong: a correction
can wander from right positions, a refinement from the right probe). Prints per run the
error of what was given and of what the solver ended with (RMS position error in px, mean
offset removed; or the probe's shape error, see ``ptycho_torch.metrics.probe_error``),
amplitude and phase PSNR (phase also with a linear ramp removed: probe refinement can trade
a phase ramp between probe and object, an ambiguity) and the solver's seconds. Then the
share of the lost PSNR the refinement recovers, and the same as JSON. Times are the
solver's, one run after another.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch import ptychi_solver
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.dataset import true_positions
from ptycho_torch.products import evaluate
from ptycho_torch.metrics import position_rms_error, probe_error, probe_photon_ratio
from ptycho_torch.simulate import simulate_dataset

CASES = {"positions": ({"data.scan.position_error_px": 1.0}, "iterative.position_correction"),
         "defocus": ({"data.probe.given_defocus_m": 1.0e-3}, "iterative.probe_refinement"),
         "shift": ({"data.probe.given_shift_px": 1.0}, "iterative.probe_refinement"),
         "amplitude": ({"data.probe.given_amplitude_factor": 1.1}, "iterative.probe_refinement")}


def solve(error: dict[str, float], refine: str | None, what: str, epochs: int
          ) -> dict[str, Any]:
    """One reconstruction; ``what``: ``positions`` or ``probe``, the record to report."""
    cfg = resolve_config(None, {**error, "execution.threads": 2, "iterative.epochs": epochs,
                                **({refine: True} if refine else {})})
    data = simulate_dataset(cfg.data, cfg.data.object.test_size_px, (cfg.seed, 1))
    solved = ptychi_solver.reconstruct(data, cfg, False, lambda *_: None)
    m = evaluate(solved.obj, replace(data, probe=solved.probe), Path("test.cxi"),
                 solved.positions if cfg.iterative.position_correction else None,
                 data.probe if cfg.iterative.probe_refinement else None)
    record = m[what]
    if cfg.iterative.probe_refinement and data.true_probe is None:  # an exact file's probe
        record = {**record, "given_error": 0.0, "error": probe_error(solved.probe, data.probe),
                  "photon_ratio": probe_photon_ratio(solved.probe, data.probe)}
    if cfg.iterative.position_correction:
        truth = true_positions(data)
        truth = data.positions_px if truth is None else truth  # an exact file records the truth
        back = evaluate(undo_warp(solved.obj, solved.positions, truth),
                        replace(data, probe=solved.probe), Path("test.cxi"))
        given_error = data.positions_px - truth
        record = {**record, "given_rms_error_px": position_rms_error(data.positions_px, truth),
                  "rms_error_px": position_rms_error(solved.positions, truth),
                  "given_smoothness": smoothness(given_error, truth) if given_error.any() else None,
                  "residual_smoothness": smoothness(solved.positions - truth, truth),
                  "warp_undone_psnr_db": {k: back[k]["psnr"] for k in ("amplitude", "phase")}}
    given = record.get("given_rms_error_px", record.get("given_error", 0.0))
    final = record.get("rms_error_px", record.get("error", 0.0))
    return {"error": error, "refined": refine, "given_error": given, "final_error": final,
            "amplitude_psnr_db": m["amplitude"]["psnr"], "phase_psnr_db": m["phase"]["psnr"],
            "phase_psnr_ramp_removed_db": m["with_phase_ramp_removed"]["phase"]["psnr"],
            "solver_seconds": solved.seconds, what: record}


def smoothness(error: np.ndarray, where: np.ndarray, k: int = 8) -> float:
    """How smooth a position error field ``[n, 2]`` (px, at positions ``where [n, 2]``) is:
    RMS of its mean over each position's ``k`` nearest neighbours over its own RMS (mean
    offset removed). About ``1/sqrt(k)`` (0.35) for independent errors, near 1 for a smooth
    warp of the scan (which the object can absorb by warping along)."""
    e = error - error.mean(axis=0)
    distance = np.linalg.norm(where[:, None] - where[None], axis=-1)
    neighbours = np.argsort(distance, axis=1)[:, 1:k + 1]
    return float(np.sqrt(np.mean(np.sum(e[neighbours].mean(axis=1) ** 2, axis=1))
                         / np.mean(np.sum(e ** 2, axis=1))))


def undo_warp(obj: np.ndarray, positions: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The object ``[H, W]`` reconstructed with probe centres ``positions [n, 2]`` (px),
    resampled into the frame of the ``true [n, 2]`` ones: ``obj(x + r(x))``, with the residual
    ``r = positions - true`` interpolated linearly between the positions (nearest outside
    them) and cubic splines between pixels. A diagnostic that needs the truth: what the
    reconstruction scores once the warp its positions leave is taken out."""
    from scipy.interpolate import griddata
    from scipy.ndimage import map_coordinates
    grid = np.mgrid[0:obj.shape[0], 0:obj.shape[1]].astype(np.float64)
    at = (grid[0], grid[1])
    coords = []
    for axis in range(2):
        r = griddata(true, positions[:, axis] - true[:, axis], at, method="linear")
        outside = np.isnan(r)
        r[outside] = griddata(true, positions[:, axis] - true[:, axis], at,
                              method="nearest")[outside]
        coords.append(grid[axis] + r)
    return (map_coordinates(obj.real, coords, order=3, mode="nearest")
            + 1j * map_coordinates(obj.imag, coords, order=3, mode="nearest")).astype(obj.dtype)


def recovered(exact: float, given: float, refined: float) -> float | None:
    """The share of the PSNR lost to the error that the refinement wins back."""
    return (refined - given) / (exact - given) if exact - given > 0.1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="positions")
    parser.add_argument("--epochs", type=int, default=100, help="LSQML epochs")
    args = parser.parse_args()
    error, refine = CASES[args.case]
    what = "positions" if args.case == "positions" else "probe"
    runs = [solve({}, None, what, args.epochs), solve(error, None, what, args.epochs),
            solve(error, refine, what, args.epochs), solve({}, refine, what, args.epochs)]
    unit = "px" if args.case == "positions" else "rel"
    print(f"case {args.case}, {args.epochs} LSQML epochs")
    print(f"{'run':<20}{'given err ' + unit:>15}{'final err ' + unit:>15}{'amp dB':>8}"
          f"{'phase dB':>9}{'no ramp':>8}{'solver s':>9}")
    for r, name in zip(runs, ("exact", "imperfect", "refined", "exact, refined")):
        print(f"{name:<20}{r['given_error']:>15.3f}{r['final_error']:>15.3f}"
              f"{r['amplitude_psnr_db']:>8.2f}{r['phase_psnr_db']:>9.2f}"
              f"{r['phase_psnr_ramp_removed_db']:>8.2f}{r['solver_seconds']:>9.1f}")
    share = {k: recovered(*(r[k] for r in runs[:3])) for k in
             ("amplitude_psnr_db", "phase_psnr_db", "phase_psnr_ramp_removed_db")}
    summary = {"benchmark": "imperfect_scan", "case": args.case, "epochs": args.epochs,
               "runs": runs, "share_of_lost_psnr_recovered": share,
               "error_reduction": 1 - runs[2]["final_error"] / runs[2]["given_error"]
               if runs[2]["given_error"] > 1e-6 else None,
               "refined_minus_exact_db": {k: runs[2][k] - runs[0][k] for k in share},
               "refined_minus_exact_refined_db": {k: runs[2][k] - runs[3][k] for k in share}}
    print("share of the lost PSNR recovered (target >= 0.5): " + ", ".join(
        f"{k[:-3]} {v:.2f}" if v is not None else f"{k[:-3]} - (nothing lost)"
        for k, v in share.items()))
    reduction = summary["error_reduction"]
    print("error of what was refined: " + (f"reduced by {100 * reduction:.0f} %" if reduction
                                           is not None else "none given (shape exact)")
          + "; refined - exact: " + ", ".join(f"{k[:-3]} {v:+.2f} dB" for k, v in
                                              summary["refined_minus_exact_db"].items()))
    print("refined - exact file refined the same way (what the refinement costs where nothing "
          "was wrong is in the last row): " + ", ".join(
              f"{k[:-3]} {v:+.2f} dB" for k, v in summary["refined_minus_exact_refined_db"].items()))
    if what == "positions":
        r = runs[2]["positions"]
        print(f"smoothness of the position error (neighbour-mean RMS / RMS; 0.35 if independent):"
              f" given {r['given_smoothness']:.2f}, after correction {r['residual_smoothness']:.2f}")
        back = r["warp_undone_psnr_db"]
        print(f"corrected, with the residual warp undone (needs the truth): amplitude "
              f"{back['amplitude']:.2f} dB, phase {back['phase']:.2f} dB "
              f"({back['amplitude'] - runs[0]['amplitude_psnr_db']:+.2f} / "
              f"{back['phase'] - runs[0]['phase_psnr_db']:+.2f} dB against exact)")
    if what == "probe":
        print("probe photons / true probe's: given " + ", ".join(
            f"{r['probe'].get('given_photon_ratio', 1.0):.3f}" for r in runs[1:2])
              + f", refined {runs[2]['probe'].get('photon_ratio', 1.0):.3f}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
