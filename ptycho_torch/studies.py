"""Studies: the step gathering the method comparisons of a study's experiments (one per
value of a setting, :mod:`ptycho_torch.study_points`) into quality-vs-setting tables and a
plot.

``python -m ptycho_torch.studies --config-json JSON --key data.nphotons
--point 1000.0 results/dose_nphotons_1e3/compare/comparison.json --point ... --out-dir
results/dose/study --report-dir reports/<run_id>/dose/study`` (the `study` rule of
workflow/rules/studies.smk) reads one ``comparison.json`` (:mod:`ptycho_torch.compare`) per
value of the studied setting and writes

* ``quality.json``: per value, per method: amplitude and phase PSNR (dB), SSIM, FRC50
  (cycles/px), training and reconstruction seconds, "unavailable" reasons, the
  iterative method's time to each other method's quality, each iterative method's (the
  hybrid's too) time to each one's final quality, and the break-even scan counts;
* ``quality.csv``: the same, one row per (value, method);
* ``quality.md``: one Markdown table per quality metric (values down, methods across);
* ``quality.png``: each metric against the setting, one line per method (log axis when the
  values are positive and span a factor 100 or more).

The numbers are each comparison's own (one seed per value, no error bars).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from ptycho_torch import cli
from ptycho_torch.comparison import COSTS, LABELS, METRICS, PARTS, UNITS
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.evidence import StepReport
from ptycho_torch.files import write_atomic
from ptycho_torch.formatting import number

LOG = logging.getLogger("ptycho_torch")
PRODUCTS = ("quality.json", "quality.csv", "quality.md", "quality.png")


def read_point(value: Any, path: Path) -> dict[str, Any]:
    """One value's row: its comparison's methods, reduced to quality and cost."""
    try:
        comparison = json.loads(path.read_text())
        methods = {m["name"]: {**{p: m[p] for p in PARTS}, **{c: m[c] for c in COSTS},
                               "unavailable": m.get("unavailable")}
                   for m in comparison["methods"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError([f"--point {value!r}: {path} is not a readable comparison.json "
                           f"({exc!r})"]) from None
    return {"value": value, "experiment": comparison.get("experiment"), "comparison": str(path),
            "methods": methods,
            **{k: comparison.get(k, []) for k in ("time_to_quality", "time_to_final_quality",
                                                   "break_even")}}


def method_names(points: list[dict[str, Any]]) -> list[str]:
    """Every method of any point, in first-seen order."""
    return list(dict.fromkeys(name for p in points for name in p["methods"]))


def columns() -> list[tuple[str, str, Callable[[dict[str, Any]], Any]]]:
    """``(csv name, title, getter of a method's value)`` of every metric and cost."""
    quality = [(f"{p}_{k}", f"{p} {LABELS[k]}" + (f" ({UNITS[k]})" if UNITS[k] else ""),
                lambda m, p=p, k=k: m[p][k]) for p in PARTS for k in METRICS]
    return quality + [(c, f"{c.replace('_', ' ')}", lambda m, c=c: m[c]) for c in COSTS]


def csv_text(key: str, points: list[dict[str, Any]]) -> str:
    """One row per (value, method): the value, the method, every metric and cost."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([key, "method", *(name for name, _, _ in columns()), "unavailable"])
    for point in points:
        for name, m in point["methods"].items():
            cells = [get(m) for _, _, get in columns()]
            writer.writerow([point["value"], name, *["" if v is None else v for v in cells],
                             m["unavailable"] or ""])
    return buf.getvalue()


def markdown(key: str, points: list[dict[str, Any]]) -> str:
    """A table per quality metric and per cost: values down, methods across."""
    names = method_names(points)
    lines = [f"# Study of `{key}`: {len(points)} values, methods {', '.join(names)}", ""]
    for _, title, get in columns():
        lines += [f"## {title}", "", f"| `{key}` | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for point in points:
            row = [number(get(point["methods"][n])) if n in point["methods"] else "n/a"
                   for n in names]
            lines.append(f"| {point['value']} | " + " | ".join(row) + " |")
        lines.append("")
    missing = {f"{n} at {p['value']}": m["unavailable"] for p in points
               for n, m in p["methods"].items() if m["unavailable"]}
    lines += [f"- not available: {k}: {v}" for k, v in missing.items()]
    return "\n".join(lines) + "\n"


def log_axis(values: list[Any]) -> bool:
    """Plot against a log axis: numbers, all positive, spanning a factor 100 or more."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(nums) == len(values) and min(nums) > 0 and max(nums) / min(nums) >= 100


def figure(path: Path, key: str, points: list[dict[str, Any]]) -> None:
    """Rows amplitude / phase; columns PSNR, SSIM, FRC50 and a cost (reconstruction seconds
    on the amplitude row, training seconds on the phase row); one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [p["value"] for p in points]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = values if numeric else list(range(len(values)))
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), constrained_layout=True)
    panels = [(row, col, part, k) for row, part in enumerate(PARTS)
              for col, k in enumerate(METRICS)]
    panels += [(row, 3, None, c) for row, c in enumerate(("reconstruction_seconds",
                                                          "training_seconds"))]
    for row, col, part, k in panels:
        ax = axes[row, col]
        for i, name in enumerate(method_names(points)):
            ys = [_value(p["methods"].get(name), part, k) for p in points]
            ax.plot(x, [math.nan if y is None else y for y in ys], "o-", color=f"C{i}",
                    label=name, ms=4)
        ax.set_title(f"{part} {LABELS[k]}" + (f" [{UNITS[k]}]" if UNITS[k] else "")
                     if part else f"{k.replace('_', ' ')} [s]", fontsize=9)
        if log_axis(values):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(x, [str(v) for v in values])
        if part is None:
            ax.set_yscale("log")
        ax.set_xlabel(key, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"quality against {key} (higher is better; times: lower)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def _value(method: dict[str, Any] | None, part: str | None, key: str) -> float | None:
    if method is None:
        return None
    v = method[part][key] if part else method[key]
    return v if v is None or math.isfinite(v) else None


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("studies", __doc__)
    cli.add_config_args(parser)
    parser.add_argument("--key", required=True, help="the studied setting (dotted key)")
    parser.add_argument("--point", nargs=2, action="append", required=True,
                        metavar=("VALUE", "COMPARISON"),
                        help="one value (JSON) and its comparison.json; repeat, in plot order")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help=f"writes {', '.join(PRODUCTS)} here")
    cli.add_seal_arg(parser)
    cli.add_report_arg(parser)
    args = parser.parse_args(argv)
    products = [args.out_dir / n for n in PRODUCTS]

    def load(a: argparse.Namespace) -> ExperimentConfig:
        cfg = cli.config_from_args(a)
        problems = [f"--point {v} {f}: not found" for v, f in a.point if not Path(f).is_file()]
        for v, _ in a.point:
            try:
                json.loads(v)
            except json.JSONDecodeError:
                problems.append(f"--point {v}: the value must be JSON (e.g. 1000.0, \"grf\")")
        if problems:
            raise ConfigError(problems)
        return cfg

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        points = [read_point(json.loads(v), Path(f)) for v, f in args.point]
        record = {"experiment": cfg.experiment, "key": args.key, "points": points}
        write_atomic(products[0], json.dumps(record, indent=2) + "\n")
        write_atomic(products[1], csv_text(args.key, points))
        write_atomic(products[2], markdown(args.key, points))
        figure(products[3], args.key, points)
        for product in products:
            shutil.copyfile(product, rep.directory / product.name)
        rep.record({"key": args.key, "values": len(points)})
        rep.verdict = (f"{args.key}: {len(points)} values x "
                       f"{len(method_names(points))} methods gathered")
        LOG.info("study: %s", rep.verdict)

    return cli.run_step("study", args, products, body, load_config=load,
                        inputs=[Path(f) for _, f in args.point], sealed=args.seal)


if __name__ == "__main__":
    raise SystemExit(main())
