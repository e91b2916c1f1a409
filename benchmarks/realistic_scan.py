"""Issue #32's acceptance benchmark: the PINN on a realistic scan, given the truth, given a
poor single-mode probe guess, and given that guess with the pty-chi warm-up.

    python benchmarks/realistic_scan.py [--positions 1000] [--test-positions 256]
                                        [--epochs 45] [--warmup-epochs 30[,60...]]
                                        [--ratio 0.3]
                                        [--device auto] [--tiny]

Simulates a partially coherent scan: N = 64, 3 probe modes (``data.probe.modes``, each
further mode ``--ratio`` times the power of the one before; modes 2 + 3 must hold at least
20 % of the power, asserted from the simulated modes), a raster whose object side follows
from ``--positions`` (training scan) and ``--test-positions`` (test scan, another object),
and recorded positions with 0.5 px Gaussian errors (``data.scan.position_error_px``). The
files record the probe 20 % further from focus (``data.probe.given_defocus_m`` = 0.2 x
``data.probe.defocus_m``) with its amplitude x 10 (photons x 100, another program's
scale: ``given_amplitude_factor``, its upper limit); the PINN is given only the strongest of
those modes (scaled to their total power), brought to the counts' photon scale by validate's
fit (:func:`ptycho_torch.photon_scale.rescale_probe`).

Three PINN runs, same data, seed and epochs (:func:`ptycho_torch.train.train_model`,
:func:`ptycho_torch.infer.reconstruct`):

* ``true``: the true modes and the true positions (training and test scan);
* ``guess``: the single-mode guess and the recorded positions, used as they are;
* ``learned``: the same guess, the probe (``iterative.probe_modes: 3``) and the training
  scan's positions (``iterative.position_correction: true``) from the pty-chi warm-up
  (``model.probe_source: iterative``, :func:`ptycho_torch.warmup.warm_up`); one run per
  ``--warmup-epochs`` value (``30,60``: two warm-ups, two trainings).

Each trained PINN reconstructs two scans, as the pipeline would:

* ``scan``: the training scan itself, what ``config/examples/measured_scan.yaml`` does
  (``data.test_fraction: 0``); the ``learned`` run uses the warm-up's corrected positions,
  as the infer step does on the scan they were corrected on;
* ``held_out``: the test scan (another object); the ``learned`` run gives it the
  warmed-up probe but its own recorded positions (the warm-up never saw it).

Per run and scan: amplitude and phase PSNR against the ground truth, as they are and with
the best-fitting linear phase ramp removed (:func:`ptycho_torch.products.evaluate`: a
refined probe may sit a fraction of a pixel off the true one, which puts a linear phase
ramp on the object, an ambiguity of ptychography itself), the R-factor and its Poisson noise floor
(:func:`ptycho_torch.quality.r_factor`), the RMS position error, the reconstruction seconds;
per run the probe's error (mutual-coherence error against the true modes,
:func:`ptycho_torch.metrics.probe_error`) and the seconds of the warm-up and the training.
Then, per warm-up length and scan, ``recovered = (learned - guess) / (true - guess)`` for the amplitude and the
phase PSNR, and ``modes_2_3_power``. Acceptance (issue #32): both recovered fractions
>= 0.8 at the default size. Prints lines per run, then one JSON line with everything.
``--tiny`` (about 100 positions, 2 epochs, a 3-epoch warm-up) checks that it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ptycho_torch.config_factory import resolve_config
from ptycho_torch.dataset import PtychoData, true_positions
from ptycho_torch.infer import reconstruct
from ptycho_torch.metrics import probe_error
from ptycho_torch.photon_scale import rescale_probe
from ptycho_torch.products import evaluate
from ptycho_torch.ptychi_solver import solver_probe
from ptycho_torch.quality import predicted_counts, r_factor, valid_mask
from ptycho_torch.simulate import simulate_dataset
from ptycho_torch.train import train_model
from ptycho_torch.warmup import keep_photons, warm_up

N, MODES, POSITION_ERROR_PX, DEFOCUS_ERROR, AMPLITUDE_FACTOR = 64, 3, 0.5, 0.2, 10.0
MIN_MODES_2_3_POWER = 0.2
RECOVERED = ("amplitude_psnr_db", "phase_psnr_db", "ramp_free_amplitude_psnr_db",
             "ramp_free_phase_psnr_db")  # the figures whose recovered share is printed


def object_side(positions: int, step: float, jitter: float) -> int:
    """The object side (px) whose raster (``simulate.raster_positions``) has about
    ``positions`` positions: ``round(sqrt(positions))`` per side."""
    per_side = max(2, round(math.sqrt(positions)))
    return int(math.ceil(N + 1 + 2 * jitter + (per_side - 1) * step + 1e-6))


def rms_error(positions: np.ndarray, data: PtychoData) -> float:
    """RMS distance (px) of ``positions [n, 2]`` from ``data``'s true positions."""
    truth = true_positions(data)
    return float(np.sqrt(np.mean(np.sum(np.square(positions - truth), axis=1))))


def single_mode_guess(d: PtychoData) -> PtychoData:
    """``d`` with only its file's strongest probe mode (the total power), at the counts'
    photon scale as validate fits it."""
    guess, _ = solver_probe(d.probe, 1)
    return rescale_probe(replace(d, probe=guess[0]))


def scored(model, data: PtychoData, truth: PtychoData, cfg, device: torch.device) -> dict:
    """Reconstruct ``data`` with ``model``: amplitude and phase PSNR against the ground truth,
    R-factor and its noise floor, RMS position error against ``truth`` (the simulated scan)
    and the reconstruction seconds."""
    rec = reconstruct(model.eval(), data, cfg, device)
    metrics = evaluate(rec.obj, data, Path("scan.cxi"))
    fit = r_factor(data.counts, predicted_counts(rec.obj, data.probe, data.positions_px),
                   valid_mask(data))
    ramp_free = metrics["with_phase_ramp_removed"]
    return {"amplitude_psnr_db": metrics["amplitude"]["psnr"],
            "phase_psnr_db": metrics["phase"]["psnr"],
            "ramp_free_amplitude_psnr_db": ramp_free["amplitude"]["psnr"],
            "ramp_free_phase_psnr_db": ramp_free["phase"]["psnr"], "r_factor": fit["r_factor"],
            "r_factor_noise_floor": fit["r_factor_poisson_expected"],
            "position_rms_error_px": rms_error(data.positions_px, truth),
            "reconstruction_seconds": rec.total_seconds}


def score(label: str, cfg, device: torch.device, train: PtychoData, test: PtychoData,
          truth: tuple[PtychoData, PtychoData], warmup_s: float = 0.0) -> dict:
    """Train on ``train``; reconstruct and score (:func:`scored`) the training scan itself
    (``scan``: the measured-scan recipe, ``data.test_fraction: 0``) and the held-out
    ``test`` scan (``held_out``); ``truth`` = the simulated (training, test) scans, holding
    the true probe and positions."""
    start = time.perf_counter()
    model, _, _ = train_model(cfg, train, device)
    train_s = time.perf_counter() - start
    row = {"run": label, "probe_error": probe_error(test.probe, truth[1].true_probe),
           "warmup_seconds": warmup_s, "train_seconds": train_s,
           "scan": scored(model, train, truth[0], cfg, device),
           "held_out": scored(model, test, truth[1], cfg, device)}
    for which in ("scan", "held_out"):
        r = row[which]
        print(f"{label:8s} {which:8s} amp/phase PSNR {r['amplitude_psnr_db']:6.2f} / "
              f"{r['phase_psnr_db']:6.2f} dB (phase ramp removed {r['ramp_free_phase_psnr_db']:6.2f}"
              f" dB) | R {r['r_factor']:.4f} (floor "
              f"{r['r_factor_noise_floor']:.4f}) | pos RMS {r['position_rms_error_px']:.3f} px",
              flush=True)
    print(f"{label:8s} probe err {row['probe_error']:.3f} | warm-up {warmup_s:.1f} s, train "
          f"{train_s:.1f} s", flush=True)
    return row


def recovered(rows: dict[str, dict], which: str, key: str) -> float | None:
    """``(learned - guess) / (true - guess)`` of ``rows[run][which][key]`` (None when true
    == guess)."""
    true, guess, learned = (rows[run][which][key] for run in ("true", "guess", "learned"))
    return None if true == guess else (learned - guess) / (true - guess)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=1000,
                        help="training scan positions (about; the object side follows)")
    parser.add_argument("--test-positions", type=int, default=256,
                        help="test scan positions (about)")
    parser.add_argument("--epochs", type=int, default=45, help="PINN training epochs")
    parser.add_argument("--warmup-epochs", default="30",
                        help="warm-up epochs; a comma-separated list runs one learned run each")
    parser.add_argument("--ratio", type=float, default=0.3,
                        help="data.probe.mode_power_ratio")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true",
                        help="100 / 64 positions, 2 epochs, a 3-epoch warm-up")
    args = parser.parse_args()
    if args.tiny:
        args.positions, args.test_positions, args.epochs, args.warmup_epochs = 100, 64, 2, "3"
    warmups = [int(e) for e in args.warmup_epochs.split(",")]
    torch.set_num_threads(args.threads)
    use_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_gpu else "cpu")
    base = resolve_config(None, {"data.N": N})
    step, jitter = base.data.scan.step_px, base.data.scan.jitter_px
    sides = (object_side(args.positions, step, jitter),
             object_side(args.test_positions, step, jitter))
    cfg = resolve_config(None, {
        "data.N": N, "data.probe.modes": MODES, "data.probe.mode_power_ratio": args.ratio,
        "data.probe.given_defocus_m": DEFOCUS_ERROR * base.data.probe.defocus_m,
        "data.probe.given_amplitude_factor": AMPLITUDE_FACTOR,
        "data.scan.position_error_px": POSITION_ERROR_PX,
        "data.object.train_size_px": sides[0], "data.object.test_size_px": sides[1],
        "training.epochs": args.epochs, "execution.threads": args.threads,
        "model.probe_source": "iterative", "model.probe_warmup_epochs": warmups[0],
        "iterative.probe_modes": MODES, "iterative.position_correction": True})
    t0 = time.perf_counter()
    sim = (simulate_dataset(cfg.data, sides[0], (cfg.seed, 0)),
           simulate_dataset(cfg.data, sides[1], (cfg.seed, 1)))
    powers = np.square(np.abs(sim[0].true_probe)).sum((1, 2))
    modes_2_3 = float(powers[1:].sum() / powers.sum())
    assert modes_2_3 >= MIN_MODES_2_3_POWER, \
        f"modes 2+3 hold {modes_2_3:.3f} of the power (< {MIN_MODES_2_3_POWER})"
    print(f"{len(sim[0].counts)} training ({sides[0]} px), {len(sim[1].counts)} test "
          f"({sides[1]} px) patterns, N = {N}; modes 2+3 hold {modes_2_3:.3f} of the power; "
          f"simulated in {time.perf_counter() - t0:.1f} s; device {device}", flush=True)
    guess = tuple(single_mode_guess(d) for d in sim)
    rows = {"true": score("true", cfg, device, *(
        replace(d, probe=d.true_probe, positions_px=true_positions(d)) for d in sim), sim)}
    rows["guess"] = score("guess", cfg, device, *guess, sim)
    records, recovered_by = {}, {}
    for epochs in warmups:
        wcfg = replace(cfg, model=replace(cfg.model, probe_warmup_epochs=epochs))
        warmed = warm_up(guess[0], wcfg, gpu=use_gpu)
        learned_train = replace(guess[0], probe=warmed.probe, positions_px=warmed.positions_px)
        learned_test = replace(guess[1], probe=keep_photons(warmed.probe, guess[1].probe))
        # (the test scan keeps its own recorded positions: the warm-up never saw it)
        rows["learned"] = score(f"learned ({epochs} warm-up epochs)", cfg, device,
                                learned_train, learned_test, sim, warmed.record["seconds"])
        records[epochs] = {**warmed.record, "run": rows["learned"]}
        recovered_by[epochs] = {which: {key[:-len("_psnr_db")]: recovered(rows, which, key)
                                        for key in RECOVERED}
                                for which in ("scan", "held_out")}
        print(f"recovered with {epochs} warm-up epochs: {json.dumps(recovered_by[epochs])}",
              flush=True)
    print(json.dumps({
        "args": vars(args), "N": N, "positions": len(sim[0].counts),
        "test_positions": len(sim[1].counts), "object_sides_px": list(sides),
        "modes_2_3_power": modes_2_3, "mode_powers": (powers / powers.sum()).tolist(),
        "guess_probe_scale": guess[0].attrs.get("probe_scale"),
        "runs": [rows["true"], rows["guess"]], "learned_by_warmup_epochs": records,
        "recovered_by_warmup_epochs": recovered_by}))


if __name__ == "__main__":
    main()
