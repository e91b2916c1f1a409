"""Shared command-line plumbing of the step CLIs.

Every step: parse arguments -> resolve and validate its config (problems are
printed one per line, exit status 2, nothing written) -> run inside a
:class:`~ptycho_torch.evidence.StepReport` (log, summary, manifest). An
unexpected error exits with status 1, leaves a FAILED summary and no manifest,
and removes the step's partial products.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError, config_hash, parse_set_option, resolve_config
from ptycho_torch.dataset import DataFileError
from ptycho_torch.evidence import StepReport

LOG = logging.getLogger("ptycho_torch")


class StepFailed(RuntimeError):
    """A failure the step explains in its message (e.g. training diverged): logged and
    reported without a traceback, exit status 1, products removed as for any failure."""


def step_parser(step: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line of ``python -m ptycho_torch.<step>``, its module docstring as help."""
    return argparse.ArgumentParser(prog=f"python -m ptycho_torch.{step}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="experiment YAML/JSON file")
    src.add_argument("--config-json", help="experiment settings as one JSON object (Snakemake)")
    add_set_arg(parser)


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one setting (repeatable), e.g. --set training.epochs=3")


def add_report_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report-dir", type=Path, required=True,
                        help="step evidence directory reports/<run_id>/<experiment>/<step>")


def add_seal_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seal", type=Path, nargs="*", default=[], metavar="FILE",
                        help="Snakemake's log and benchmark files of the steps before this one "
                             "(results/<experiment>/{logs,benchmarks}/): their sha256 and size "
                             "go into this step's manifest, for the audit")


def sealable(paths: list[Path]) -> list[Path]:
    """The files of ``--seal`` that exist; a missing one is logged (a step that never ran
    under Snakemake, or a file deleted since) and left out."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        LOG.warning("--seal: not found, not sealed: %s", ", ".join(missing))
    return [p for p in paths if p.is_file()]


def add_execution_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train and infer: where/how fast, never what is computed."""
    g = parser.add_argument_group("execution (never changes the science)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"))
    g.add_argument("--threads", type=int, help="torch CPU threads (0 = torch default)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--inference-batch-size", type=int)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` options plus execution flags, as dotted-key overrides."""
    overrides = dict(parse_set_option(s) for s in args.set)
    for flag in ("device", "threads", "deterministic", "inference_batch_size"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[f"execution.{flag}"] = value
    return overrides


def config_source(args: argparse.Namespace) -> Path | dict[str, Any] | None:
    """The experiment named on the command line: a file, a JSON object, or None (defaults)."""
    if not args.config_json:
        return args.config
    try:
        source = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"--config-json: not valid JSON ({exc})"]) from None
    if not isinstance(source, dict):
        raise ConfigError([f"--config-json: must be a JSON object, not {type(source).__name__}"])
    return source


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return resolve_config(config_source(args), overrides_from_args(args))


def fail_config(problems: list[str]) -> int:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    print(f"{len(problems)} problem(s) found; nothing was written.", file=sys.stderr)
    return 2


def _attach_log(directory: Path, step: str) -> list[logging.Handler]:
    """The step's log file ``<step>.log`` in ``directory`` and the console (the current
    ``sys.stderr``), attached to the package's logger for the step's duration: the caller
    detaches them (:func:`_detach_log`), so nothing outlives the step."""
    LOG.setLevel(logging.INFO)
    file = logging.FileHandler(directory / f"{step}.log")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers = [file, logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        LOG.addHandler(handler)
    return handlers


def _detach_log(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        LOG.removeHandler(handler)
        handler.close()


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _remove_report_dir(directory: Path) -> None:
    """Remove a step directory and its experiment and run directories if that leaves them
    empty (rmdir refuses a non-empty one): a refused step leaves no empty run directory."""
    _remove([directory])
    for parent in (directory.parent, directory.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            return


def run_step(step: str, args: argparse.Namespace, products: list[Path],
             body: Callable[[ExperimentConfig, StepReport], None],
             load_config: Callable[[argparse.Namespace], ExperimentConfig] = config_from_args,
             inputs: list[Path] | None = None, sealed: list[Path] | None = None) -> int:
    """Validate, then run ``body(cfg, report)`` with full evidence; returns the exit status.
    ``sealed``: files recorded in the manifest (``sealed``), never removed on failure."""
    try:
        cfg = load_config(args)
    except (ConfigError, DataFileError) as exc:
        return fail_config(getattr(exc, "problems", [str(exc)]))
    if args.report_dir.exists():
        return fail_config([f"--report-dir: {args.report_dir} already exists; "
                            "each run writes a fresh step directory"])
    args.report_dir.mkdir(parents=True)
    handlers = _attach_log(args.report_dir, step)
    rep = StepReport(args.report_dir, step, products, config_hash(cfg), cfg.seed,
                     inputs=list(inputs or []), sealed=sealable(sealed or []))
    LOG.info("%s: run %s, experiment %s, config %s", step, rep.run_id, cfg.experiment,
             rep.config_hash[:12])
    rep.write_json("config.json", dataclasses.asdict(cfg))
    try:
        body(cfg, rep)
        missing = [str(p) for p in products if not Path(p).is_file()]
        if missing:
            raise RuntimeError(f"the step did not write its product(s): {', '.join(missing)}")
    except (ConfigError, DataFileError) as exc:
        _detach_log(handlers)
        _remove(products)
        _remove_report_dir(args.report_dir)
        return fail_config(getattr(exc, "problems", [str(exc)]))
    except StepFailed as exc:
        LOG.error("step failed: %s", exc)
        _remove(products)
        rep.verdict = f"FAILED: {exc}"
        rep.finish(ok=False)
        return 1
    except Exception:  # noqa: BLE001 - every failure is logged and reported
        LOG.error("step failed:\n%s", traceback.format_exc())
        _remove(products)
        rep.verdict = "FAILED: see the log"
        rep.finish(ok=False)
        return 1
    finally:
        _detach_log(handlers)
    rep.finish(ok=True)
    print(f"{step}: {rep.verdict}\n  report: {args.report_dir}", file=sys.stderr)
    return 0
