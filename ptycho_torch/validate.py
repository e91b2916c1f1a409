"""Validate an experiment and its data before any expensive work; write the training payload.

``python -m ptycho_torch.validate --config-json '{...}' --train-data train.cxi
--test-data test.cxi --out payload.json --report-dir DIR`` checks every setting
and cross-checks both data files against them (pattern size vs ``data.N``,
positions inside the object frame, finite non-negative counts, enough positions
for one batch). Every problem is printed, one per line and named by its key
path; the exit status is then 2 and nothing is written. Otherwise the resolved,
hashed payload that the train step consumes goes to ``--out`` and a copy of it,
with its sha256, to the report directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

from ptycho_torch import cli
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import (ConfigError, TrainingPayload, config_hash,
                                         create_training_payload, payload_to_json,
                                         resolve_config)
from ptycho_torch.data import check_data_file, read_cxi
from ptycho_torch.reports import StepReport, sha256_file, write_atomic


def experiment_source(args: argparse.Namespace) -> Path | Mapping[str, Any] | None:
    """The experiment settings named on the command line (a file, a JSON mapping or none)."""
    if not args.config_json:
        return args.config
    try:
        return json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"--config-json: not valid JSON ({exc})"]) from None


def build_payload(args: argparse.Namespace) -> TrainingPayload:
    """The validated training payload; raises ConfigError listing every problem found."""
    source, overrides = experiment_source(args), cli.overrides_from_args(args)
    cfg = resolve_config(source, overrides)  # invalid settings: no data checks make sense
    test_problems = check_data_file(args.test_data, cfg, role="test")
    try:
        payload = create_training_payload(args.train_data, args.out.parent, overrides,
                                          experiment=source)
    except ConfigError as exc:
        raise ConfigError(exc.problems + test_problems) from None
    if test_problems:
        raise ConfigError(test_problems)
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--train-data", type=Path, required=True, help="training set (.cxi)")
    parser.add_argument("--test-data", type=Path, required=True, help="test set (.cxi)")
    parser.add_argument("--out", type=Path, required=True, help="training payload (.json)")
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    built: list[TrainingPayload] = []  # handed from the validation to the body

    def load(a: argparse.Namespace) -> ExperimentConfig:
        built.append(build_payload(a))
        return built[0].config

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        text = payload_to_json(built[0])
        write_atomic(args.out, text)
        write_atomic(rep.directory / args.out.name, text)
        patterns = {role: len(read_cxi(path, load_counts=False).positions_px)
                    for role, path in (("train", args.train_data), ("test", args.test_data))}
        rep.record({"train_patterns": patterns["train"], "test_patterns": patterns["test"],
                    "N": cfg.data.N, "config_hash": config_hash(cfg),
                    "payload_sha256": sha256_file(args.out)})
        rep.verdict = "PASS: settings valid and consistent with both data files; payload written"

    return cli.run_step("validate", args, [args.out], body, load_config=load,
                        inputs=[args.train_data, args.test_data])


if __name__ == "__main__":
    raise SystemExit(main())
