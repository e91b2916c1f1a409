"""The probe warm-up step: refine the data file's probe with pty-chi before the PINN trains.

``python -m ptycho_torch.probe_warmup --config-json JSON --data results/EXP/simulate/train.cxi
--out results/EXP/probe_warmup/probe.npz --report-dir reports/<run_id>/EXP/probe_warmup``
runs :func:`ptycho_torch.warmup.warm_up` (``model.probe_warmup_epochs`` epochs of the
iterative method with probe refinement, and position correction with
``iterative.position_correction``) on the training scan and writes the warm-up file
(:func:`ptycho_torch.warmup.write_warmup`) that the train step takes (``--probe``). Only
with ``model.probe_source: iterative``. Evidence: ``probe.png`` (the given, the warmed-up
and, for simulated data, the true probe), ``warmup.json`` and, for data simulated with
position errors, ``position_errors.png``. Without pty-chi the step fails, naming how to
install it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptycho_torch import cli, figures
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.cxi import read_cxi
from ptycho_torch.dataset import true_positions
from ptycho_torch.evidence import StepReport
from ptycho_torch.execution import setup_execution
from ptycho_torch.metrics import position_rms_error, probe_error
from ptycho_torch.ptychi_solver import IterativeUnavailable
from ptycho_torch.warmup import ITERATIVE, source_record, warm_up, write_warmup


def run(args: argparse.Namespace, cfg: ExperimentConfig, rep: StepReport) -> None:
    """The step body: warm up on ``args.data``, write the file and the evidence."""
    gpu = setup_execution(cfg.execution).type == "cuda"
    data = read_cxi(args.data)
    try:
        warmed = warm_up(data, cfg, gpu)
    except IterativeUnavailable as exc:
        raise cli.StepFailed(f"model.probe_source: iterative needs pty-chi: {exc}") from None
    write_warmup(args.out, warmed)
    record = dict(warmed.record)
    if data.true_probe is not None:
        record["given_probe_error"] = probe_error(data.probe, data.true_probe)
        record["probe_error"] = probe_error(warmed.probe, data.true_probe)
    truth = true_positions(data)
    if truth is not None and warmed.positions_corrected:
        record["given_position_rms_error_px"] = position_rms_error(data.positions_px, truth)
        record["position_rms_error_px"] = position_rms_error(warmed.positions_px, truth)
        figures.position_errors(rep.directory / "position_errors.png", truth,
                                data.positions_px, warmed.positions_px)
    rep.write_json("warmup.json", record)
    figures.probes(rep.directory / "probe.png", data.probe, warmed.probe, data.true_probe)
    rep.record({**source_record(cfg, warmed), "patterns": len(data.counts),
                **{k: v for k, v in record.items() if k.endswith("error") or
                   k.endswith("error_px")}})
    change = f"probe changed by {warmed.record['probe_change']:.3g}"
    if "probe_error" in record:
        change += (f"; error against the true probe {record['given_probe_error']:.3g} -> "
                   f"{record['probe_error']:.3g}")
    rep.verdict = (f"{warmed.record['engine']} warm-up, {warmed.record['epochs']} epochs in "
                   f"{warmed.record['seconds']:.1f} s: {change}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.probe_warmup",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--data", type=Path, required=True, help="the training scan (.cxi)")
    parser.add_argument("--out", type=Path, required=True, help="the warm-up file (.npz)")
    cli.add_execution_args(parser)
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)

    def load(a: argparse.Namespace) -> ExperimentConfig:
        cfg = cli.config_from_args(a)
        problems = [f"--data: {a.data} not found"] if not a.data.is_file() else []
        if cfg.model.probe_source != ITERATIVE:
            problems.append(f"model.probe_source: {cfg.model.probe_source!r}; the warm-up "
                            f"runs only with {ITERATIVE!r}")
        if problems:
            raise ConfigError(problems)
        return cfg

    return cli.run_step("probe_warmup", args, [args.out], lambda cfg, rep: run(args, cfg, rep),
                        load_config=load, inputs=[args.data])


if __name__ == "__main__":
    raise SystemExit(main())
