"""Validate an experiment and its data before any expensive work; write the training payload.

``python -m ptycho_torch.validate --config-json '{...}' --train-data train.cxi
--test-data test.cxi --out payload.json --report-dir DIR`` checks every setting
and cross-checks both data files against them (pattern size vs ``data.N``, probe
size, positions inside the object frame, finite non-negative counts that are whole
photon counts, not amplitudes, enough positions for one batch) and a fine-tuning
start model (``training.init_model``: same network as configured). Every problem is
printed, one per line and named by its key path or file and dataset; the exit status
is then 2 and nothing is written. Otherwise the resolved, hashed payload that the
train step consumes goes to ``--out`` and a copy of it, with its sha256, to the
report directory, and the report says what the data hold (``data.json``: pattern
count, N, photons per pattern, scan extent, step, probe size and overlap, and the
factor by which the probe's photon scale was fitted to the counts, see
:func:`ptycho_torch.photon_scale.rescale_probe`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from scipy.spatial import cKDTree

from ptycho_torch import cli, physics
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import (ConfigError, TrainingPayload, config_hash,
                                         create_training_payload, payload_to_json,
                                         load_checkpoint_config, resolve_config)
from ptycho_torch.cxi import DETECTOR, CountsReader, read_cxi
from ptycho_torch.data import check_data_file
from ptycho_torch.photon_scale import BRIGHTEST_QUANTILE, plausible_transmission
from ptycho_torch.model import load_model
from ptycho_torch.evidence import StepReport, sha256_file
from ptycho_torch.files import write_atomic

NON_INTEGER_LIMIT = 0.01  # largest fraction of non-zero pixels that may hold non-whole counts
WHOLE_TOLERANCE = 1e-3    # |x - round(x)| below this is a whole number (float32 storage)


def experiment_source(args: argparse.Namespace) -> Path | Mapping[str, Any] | None:
    """The experiment settings named on the command line (a file, a JSON mapping or none)."""
    if not args.config_json:
        return args.config
    try:
        return json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"--config-json: not valid JSON ({exc})"]) from None


# ----------------------------------------------------------------- the counts

@dataclass(frozen=True)
class CountsSummary:
    """One streaming pass over a file's counts ``[n, N, N]``."""
    totals: np.ndarray      # [n] counts per pattern (float64, non-finite pixels as 0)
    max_pixel: float        # largest count in one pixel
    nonzero: int            # finite non-zero pixels
    fractional: int         # ... of them not whole numbers
    fractional_squares_whole: int  # ... of those whose square is whole (amplitudes sqrt(k))


def summarise_counts(path: Path) -> CountsSummary:
    """Photon statistics and the whole-number test of the counts in CXI ``path``."""
    totals, peak, nonzero, fractional, squares = [], 0.0, 0, 0, 0
    with CountsReader(path) as counts:
        for _, block in counts.blocks():
            b = block.astype(np.float64)
            b[~np.isfinite(b)] = 0.0
            totals.append(b.sum(axis=(1, 2)))
            peak = max(peak, float(b.max()))
            frac = b[(b != 0) & (np.abs(b - np.rint(b)) > WHOLE_TOLERANCE)]
            sq = frac ** 2  # float32 storage of sqrt(k): k to ~1e-7 relative
            nonzero += int(np.count_nonzero(b))
            fractional += frac.size
            whole = np.abs(sq - np.rint(sq)) <= WHOLE_TOLERANCE + 1e-6 * sq
            squares += int(np.count_nonzero(whole))
    return CountsSummary(np.concatenate(totals), peak, nonzero, fractional, squares)


def counts_problems(path: Path, role: str, s: CountsSummary) -> list[str]:
    """Counts that are not photon counts: more than :data:`NON_INTEGER_LIMIT` of the
    non-zero pixels are not whole numbers (e.g. amplitudes ``sqrt(counts)``)."""
    if s.fractional <= NON_INTEGER_LIMIT * max(s.nonzero, 1):
        return []
    source = read_cxi(path, load_counts=False).attrs.get("source_file")
    where = f"{path}" + (f" (converted from {source})" if source else "")
    share = 100.0 * s.fractional / s.nonzero
    if s.fractional_squares_whole >= 0.9 * s.fractional:
        hint = ("their squares are whole numbers: these look like amplitudes sqrt(counts); "
                "store counts = amplitude^2 (a PtychoPINN NPZ is read as amplitudes and "
                "squared for you)")
    else:
        hint = ("the Poisson model needs photon counts: convert the detector signal to "
                "photons (divide by the signal per photon) and round")
    return [f"{role} data: {DETECTOR}/data in {where} is declared as counts, but "
            f"{share:.0f} % of its non-zero pixels are not whole numbers; {hint}"]


# ----------------------------------------------------------------- fine-tuning

def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested mapping."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {prefix + k: v})
    return out


def init_model_problems(cfg: ExperimentConfig) -> list[str]:
    """``training.init_model`` must be a checkpoint of the configured network: same
    ``model.generator``, ``data.N`` and ``model.amp_activation`` (weights would not load,
    or load but mean something else) and weights that load into the configured ``model.*``
    (the message names every ``model.*`` setting that differs). Reads the checkpoint with
    ``weights_only=True``."""
    path = cfg.training.init_model
    if not path:
        return []
    try:
        theirs = _leaves(dataclasses.asdict(load_checkpoint_config(path)))
    except ConfigError as exc:
        return [f"training.init_model: {p}" for p in exc.problems]
    ours = _leaves(dataclasses.asdict(cfg))
    differ = {k: (ours[k], theirs.get(k)) for k in ours
              if (k.startswith("model.") or k == "data.N") and ours[k] != theirs.get(k)}
    problems = [f"{k}: {here!r} here, but training.init_model {path} was trained with "
                f"{there!r} (fine-tuning needs the same network)"
                for k, (here, there) in differ.items()
                if k in ("model.generator", "data.N", "model.amp_activation")]
    if problems:
        return problems
    try:
        load_model(path, cfg)
    except ConfigError as exc:
        settings = "; ".join(f"{k}: {here!r} here, {there!r} there"
                             for k, (here, there) in differ.items())
        return [f"training.init_model: {path} does not fit the configured network"
                f"{' (' + settings + ')' if settings else ''}: {exc.problems[0]}"]
    return []


# ----------------------------------------------------------------- what the data hold

def data_report(path: Path, s: CountsSummary) -> dict[str, Any]:
    """What the data file holds: patterns, N, photon statistics, scan extent, step, probe
    diameter and the linear overlap ``1 - step / diameter`` (step: median distance to the
    nearest position; diameter: disk holding 86.5 % of the probe intensity, as
    ``data.scan.overlap``), plus warnings about implausible values."""
    d = read_cxi(path, load_counts=False)
    pos, px_um = d.positions_px, d.object_pixel_size_m * 1e6
    step = float(np.median(cKDTree(pos).query(pos, k=2)[0][:, 1])) if len(pos) > 1 else 0.0
    diameter = physics.probe_diameter_px(torch.from_numpy(d.probe))
    photons = float(np.sum(np.abs(d.probe.astype(np.complex128)) ** 2))
    extent = np.ptp(pos, axis=0)
    out = {"source_file": d.attrs.get("source_file", str(path)), "patterns": len(pos),
           "N": d.N, "counts_per_pattern_mean": float(s.totals.mean()),
           "counts_per_pattern_min": float(s.totals.min()),
           "counts_per_pattern_max": float(s.totals.max()), "counts_max_pixel": s.max_pixel,
           "probe_photons": photons,
           "object_pixel_size_nm": d.object_pixel_size_m * 1e9,
           "object_frame_px": [int(v) for v in d.object_shape],
           "scan_extent_px": extent.tolist(), "scan_extent_um": (extent * px_um).tolist(),
           "scan_step_px": step, "probe_diameter_px": diameter,
           "overlap": 1.0 - step / diameter if diameter > 0 else 0.0,
           "masked_pixels": int((d.mask != 0).sum()) if d.mask is not None else 0,
           "ground_truth": d.ground_truth is not None,
           "probe_scale": d.attrs.get("probe_scale", {"factor": 1.0, "applied": False})}
    warnings = []
    if out["probe_scale"]["applied"]:
        warnings.append(f"the given probe's photon scale did not fit the counts (its "
                        f"{out['probe_scale']['given_probe_photons']:.4g} photons; "
                        f"{out['probe_scale']['rule']}): rescaled by "
                        f"{out['probe_scale']['factor']:.4g} in photons (data.probe_rescale)")
    share = float(np.quantile(s.totals, BRIGHTEST_QUANTILE)) / photons
    lower, upper = plausible_transmission(s.totals)
    if share > upper:
        warnings.append(f"the brightest patterns hold {share:.3g} x the probe's photons "
                        "sum|P|^2: an object of transmission <= 1 cannot; is the probe's "
                        "photon scale right (it must carry the counts' units)?")
    if share < lower:
        warnings.append(f"the brightest patterns hold only {share:.3g} x the probe's photons "
                        "sum|P|^2: is the probe's photon scale right (it must carry the "
                        "counts' units)?")
    if out["overlap"] < 0.3:
        warnings.append(f"low overlap {out['overlap']:.2f} (step {step:.3g} px, probe "
                        f"diameter {diameter:.3g} px): ptychography needs neighbouring "
                        "positions to share much of the illuminated area")
    return {**out, "warnings": warnings}


# ----------------------------------------------------------------- the step

def build_payload(args: argparse.Namespace) -> tuple[TrainingPayload, dict[str, CountsSummary]]:
    """The validated training payload and each file's counts summary; raises ConfigError
    listing every problem found."""
    source, overrides = experiment_source(args), cli.overrides_from_args(args)
    cfg = resolve_config(source, overrides)  # invalid settings: no data checks make sense
    problems, summaries = [], {}
    for role, path in (("train", args.train_data), ("test", args.test_data)):
        found = check_data_file(path, cfg, role=role)
        if not found:  # readable and sound: are they photon counts?
            summaries[role] = summarise_counts(path)
            found = counts_problems(path, role, summaries[role])
        problems += found
    problems += init_model_problems(cfg)
    try:
        payload = create_training_payload(args.train_data, args.out.parent, overrides,
                                          experiment=source, check_data=False)
    except ConfigError as exc:
        problems = exc.problems + problems
    if problems:
        raise ConfigError(problems)
    return payload, summaries


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("validate", __doc__)
    cli.add_config_args(parser)
    parser.add_argument("--train-data", type=Path, required=True, help="training set (.cxi)")
    parser.add_argument("--test-data", type=Path, required=True, help="test set (.cxi)")
    parser.add_argument("--out", type=Path, required=True, help="training payload (.json)")
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    built: list[tuple[TrainingPayload, dict[str, CountsSummary]]] = []  # validation -> body

    def load(a: argparse.Namespace) -> ExperimentConfig:
        built.append(build_payload(a))
        return built[0][0].config

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        payload, summaries = built[0]
        text = payload_to_json(payload)
        write_atomic(args.out, text)
        write_atomic(rep.directory / args.out.name, text)
        if cfg.training.init_model:
            rep.inputs.append(Path(cfg.training.init_model))
        found = {role: data_report(path, summaries[role])
                 for role, path in (("train", args.train_data), ("test", args.test_data))}
        rep.write_json("data.json", found)
        keys = ("patterns", "counts_per_pattern_mean", "counts_per_pattern_max",
                "counts_max_pixel", "scan_step_px", "probe_diameter_px", "overlap")
        rep.record({"N": cfg.data.N, **{f"{role}_{k}": found[role][k] for role in found
                                         for k in keys},
                    "train_scan_extent_um": " x ".join(f"{v:.4g}" for v in
                                                       found["train"]["scan_extent_um"]),
                    "object_pixel_size_nm": found["train"]["object_pixel_size_nm"],
                    **{f"{role}_probe_scale_factor": found[role]["probe_scale"]["factor"]
                       for role in found},
                    "warnings": "; ".join(f"{role}: {w}" for role in found
                                          for w in found[role]["warnings"]) or "none",
                    "init_model": cfg.training.init_model or "none",
                    "probe_source": cfg.model.probe_source,  # iterative: the warm-up's probe
                    "config_hash": config_hash(cfg), "payload_sha256": sha256_file(args.out)})
        warned = sum(len(found[role]["warnings"]) for role in found)
        rep.verdict = ("PASS: settings valid and consistent with both data files; payload "
                       "written" + (f" ({warned} warning(s), see below)" if warned else ""))

    return cli.run_step("validate", args, [args.out], body, load_config=load,
                        inputs=[args.train_data, args.test_data])


if __name__ == "__main__":
    raise SystemExit(main())
