"""Compare reconstruction methods on the same test object: quality and cost side by side.

``python -m ptycho_torch.compare --config-json JSON
--method pinn results/EXP/infer/metrics.json results/EXP/train/model.pt
--method supervised results/EXP/baseline/infer/metrics.json results/EXP/baseline/train/model.pt
--out-dir results/EXP/compare --report-dir reports/<run_id>/EXP/compare`` writes
``comparison.json``, ``comparison.md`` and ``comparison.png``.

Each ``--method NAME METRICS [MODEL]`` is one method: the ``metrics.json`` that scored its
reconstruction of the test object and, for a trained method, its ``model.pt``. Any number
of methods (at least two) can be compared; a method without a model (an iterative solver)
has no training cost.

Quality: PSNR, SSIM and FRC50 of amplitude and phase, read from each metrics file (all
higher-is-better; FRC50 in cycles/px, 0.5 = Nyquist), and the figures that need no ground
truth (``quality``: the R-factor over its Poisson noise floor and the half-data FRC
resolution, lower is better). Without ground truth (metrics files with ``"ground_truth":
false`` and a ``quality`` record) the methods are ranked by those alone. The metrics files
must describe the same test object (same scored region and number of patterns), or the
step refuses (exit 2).

Cost: the seconds each step measured itself (train: ``train_seconds``, the training loop;
infer: ``reconstruction_seconds``, network + stitching), read from the manifest of the step
that made the file: the newest verified ``reports/*/*/*/manifest.json`` that records making
exactly this file (path and sha256), as the report's provenance table finds it. The
manifests used are named in ``comparison.json`` and recorded as inputs. A file no manifest
records making has unknown cost ("n/a"). The same manifests give the number of training
patterns, epochs and the sha256 of the training and test data: methods trained on different
data, patterns or epochs are compared anyway, and the verdict says so.

Time to quality: a method whose metrics file holds a ``convergence`` curve (the iterative
reference, :mod:`ptycho_torch.iterative`: quality at checkpoints against solver seconds) is
also reported with the epochs and seconds it needed to reach its fixed target
(``time_to_target``) and each other method's amplitude and phase PSNR (both), and the
speed-up of that method's reconstruction over this time (:func:`quality_matches`).

A method that could not run (its metrics file says ``"unavailable": REASON``, e.g. pty-chi
not installed) keeps its row, with "n/a" values and the reason; the others are compared as
usual.

The verdict names, for each quality metric, the method with the higher value (a tie when
the values agree to the 4 significant digits the table shows), and the faster method to
train and to reconstruct. It describes this one run: no error bars, one seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from ptycho_torch import cli, figures
from ptycho_torch.comparison import (COSTS, METRICS, NO_TRUTH, PARTS, build_comparison,
                                     check_same_test, markdown, no_truth_figures)
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.data import data_format
from ptycho_torch.dataset import DataFileError
from ptycho_torch.evidence import (StepReport, path_key,
                                   sha256_file)
from ptycho_torch.files import write_atomic
from ptycho_torch.ledger import producer

LOG = logging.getLogger("ptycho_torch")
NAME = re.compile(r"^[A-Za-z0-9_-]+$")


# ---------------------------------------------------------------- evidence lookup


def _data_sha(manifest: dict[str, Any]) -> str | None:
    """sha256 of the data file a step recorded reading: its CXI input, else its NPZ one
    (a hybrid also reads the PINN's reconstruction.npz, beside the test data's CXI file)."""
    found: dict[str, str | None] = {}
    for name, entry in manifest.get("inputs", {}).items():
        try:
            kind = data_format(name)
        except DataFileError:  # not a data file: config, model, ...
            continue
        if isinstance(entry, dict):
            found.setdefault(kind, entry.get("sha256"))
    return found.get("cxi", found.get("npz"))


def method_entry(name: str, metrics_file: Path, model_file: Path | None,
                 reports_root: Path) -> dict[str, Any]:
    """One method's row: quality from ``metrics_file``, cost and training facts from the
    manifests of the steps that made ``metrics_file`` and ``model_file``."""
    try:
        m = json.loads(metrics_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"--method {name}: {metrics_file} is not a readable metrics.json "
                           f"({exc})"]) from None
    unavailable = m.get("unavailable") if isinstance(m, dict) else None
    missing = [f"{part}.{k}" for part in PARTS for k in METRICS
               if not isinstance(m.get(part), dict) or not isinstance(m[part].get(k), (int, float))]
    without_truth = m.get("ground_truth") is False and isinstance(m.get("quality"), dict)
    if missing and not unavailable and not without_truth:
        raise ConfigError([f"--method {name}: {metrics_file} lacks {', '.join(missing)}"])
    entry: dict[str, Any] = {
        "name": name, "metrics_file": path_key(metrics_file),
        "metrics_sha256": sha256_file(metrics_file),
        "model_file": path_key(model_file) if model_file else None,
        "unavailable": unavailable,
        **{part: {k: None if unavailable or without_truth else m[part][k] for k in METRICS}
           for part in PARTS},
        "quality": no_truth_figures(m),
        "n_test_patterns": m.get("n_patterns"), "region": m.get("region"),
        "alignment": m.get("alignment"), "evidence": {},
        "convergence": m.get("convergence"), "time_to_target": m.get("time_to_target")}
    made = producer(metrics_file, reports_root)
    rec = made[1].get("numbers", {}) if made else {}
    entry["reconstruction_seconds"] = rec.get("reconstruction_seconds")
    entry["network_seconds"] = rec.get("network_seconds")
    entry["test_data_sha256"] = _data_sha(made[1]) if made else None
    if made:
        entry["evidence"]["reconstruction"] = str(made[0])
    entry["training"] = None
    entry["training_seconds"] = None
    if model_file is not None:
        trained = producer(model_file, reports_root)
        numbers = trained[1].get("numbers", {}) if trained else {}
        entry["training_seconds"] = numbers.get("train_seconds")
        entry["training"] = {"mode": numbers.get("mode"), "patterns": numbers.get("patterns"),
                             "epochs": numbers.get("epochs"),
                             "data_sha256": _data_sha(trained[1]) if trained else None}
        if trained:
            entry["evidence"]["training"] = str(trained[0])
    return entry


# ---------------------------------------------------------------- command line

def parse_methods(specs: list[list[str]]) -> tuple[list[tuple[str, Path, Path | None]], list[str]]:
    """``--method NAME METRICS [MODEL]`` values -> ``(name, metrics, model)``, problems."""
    methods, problems = [], []
    for spec in specs:
        if len(spec) not in (2, 3):
            problems.append(f"--method {' '.join(spec)}: expected NAME METRICS [MODEL]")
            continue
        name, metrics, model = spec[0], Path(spec[1]), Path(spec[2]) if len(spec) == 3 else None
        if not NAME.match(name):
            problems.append(f"--method {name}: a name holds only letters, digits, '-' and '_'")
        for f in (metrics, model):
            if f is not None and not f.is_file():
                problems.append(f"--method {name}: {f} not found")
        methods.append((name, metrics, model))
    names = [m[0] for m in methods]
    if len(specs) < 2:
        problems.append("--method: give at least two methods to compare")
    if len(set(names)) < len(names):
        problems.append(f"--method: method names must differ, got {', '.join(names)}")
    return methods, problems


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("compare", __doc__)
    cli.add_config_args(parser)
    parser.add_argument("--method", action="append", nargs="+", default=[], required=True,
                        metavar=("NAME", "METRICS [MODEL]"),
                        help="one method (repeat for each): its name, the metrics.json of its "
                             "reconstruction of the test object, and its model.pt if trained")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes comparison.json, comparison.md, comparison.png here")
    parser.add_argument("--reports-root", type=Path,
                        help="where the step manifests are looked up (default: the reports "
                             "directory holding --report-dir)")
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in ("comparison.json", "comparison.md", "comparison.png")]
    reports_root = args.reports_root or args.report_dir.parent.parent.parent
    methods, problems = parse_methods(args.method)

    def load(a: argparse.Namespace) -> ExperimentConfig:
        cfg = cli.config_from_args(a)
        if problems:
            raise ConfigError(problems)
        return cfg

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        rows = [method_entry(name, metrics, model, reports_root)
                for name, metrics, model in methods]
        same = check_same_test(rows)
        if same:
            raise ConfigError(same)
        comparison = build_comparison(rows, cfg.experiment)
        rep.inputs += [Path(p) for m in rows for p in m["evidence"].values()]
        text = json.dumps(comparison, indent=2) + "\n"
        write_atomic(products[0], text)
        write_atomic(products[1], markdown(comparison))
        figures.comparison(products[2], comparison)
        for product in products:
            shutil.copyfile(product, rep.directory / product.name)
        for m in rows:
            rep.record({f"{m['name']}_{p}_{k}": m[p][k] for p in PARTS for k in METRICS})
            rep.record({f"{m['name']}_{c}": m[c] for c in COSTS})
            rep.record({f"{m['name']}_{k}": m["quality"][k] for k in NO_TRUTH})
        for q in comparison["time_to_quality"]:
            rep.record({f"{q['method']}_seconds_to_{q['matches']}_psnr": q.get("seconds")})
        rep.verdict = comparison["verdict"]
        LOG.info("comparison: %s", comparison["verdict"])

    inputs = [p for _, metrics, model in methods for p in (metrics, model) if p is not None]
    return cli.run_step("compare", args, products, body, load_config=load, inputs=inputs)


if __name__ == "__main__":
    raise SystemExit(main())
