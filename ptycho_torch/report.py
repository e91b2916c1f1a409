"""Run report: ``reports/<run_id>/index.md`` and ``index.json``.

``python -m ptycho_torch.report --run-dir reports/<run_id> --experiment EXP
--metrics results/EXP/infer/metrics.json --figures loss.png reconstruction.png
--out results/EXP/report/index.md [--config-json JSON]`` lists every step
directory of this run under ``reports/<run_id>/<EXP>/`` with its status, the
reconstruction metrics, the figures (copied into the report's own step
directory, linked relatively) and, for every product that a manifest of this
experiment names, the run whose manifest hashes match the file now on disk
(products this run did not remake come from earlier runs). The same index,
with links relative to its place, goes to ``--out``; ``reports/latest`` is
switched atomically to the run directory. With ``--comparison comparison.json`` (the
compare step's) the index also holds the method comparison table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ptycho_torch import cli
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.evidence import (MANIFEST, SUMMARY, StepReport, is_run_id, load_manifest,
                                   sha256_file)
from ptycho_torch.files import write_atomic
from ptycho_torch.ledger import provenance
from ptycho_torch.formatting import number

METRICS = ("mae", "psnr", "ssim", "frc50")


def step_status(step_dir: Path) -> dict[str, Any]:
    """Status of one step directory: from its (verified) manifest, else from its summary."""
    manifest_file = step_dir / MANIFEST
    if manifest_file.is_file():
        m, problem = load_manifest(manifest_file)
        if m is None:
            return {"status": f"manifest {problem}", "duration_s": None, "manifest_sha256": None}
        return {"status": m.get("status", "ok"), "duration_s": m.get("duration_s"),
                "manifest_sha256": sha256_file(manifest_file)}
    summary = step_dir / SUMMARY
    failed = summary.is_file() and "FAILED" in summary.read_text().partition("\n")[0]
    return {"status": "failed" if failed else "incomplete", "duration_s": None,
            "manifest_sha256": None}


def steps_of_run(run_dir: Path, experiment: str, own: Path) -> list[dict[str, Any]]:
    """Every step directory of ``experiment`` in this run (``own``: the report's, running),
    with the sha256 of each finished step's manifest (the audit checks them against it)."""
    steps = []
    for d in sorted(p for p in (run_dir / experiment).iterdir() if p.is_dir()):
        info = ({"status": "this step", "duration_s": None, "manifest_sha256": None}
                if d == own else step_status(d))
        steps.append({"step": d.name, **info, "dir": f"{experiment}/{d.name}"})
    return steps


def render(index: dict[str, Any], link: Callable[[str], str]) -> str:
    """Markdown of ``index``; ``link(path_in_run_dir)`` makes a link relative to the file."""
    run_id = index["run_id"]
    lines = [f"# Run `{run_id}`, experiment `{index['experiment']}`", "",
             f"Created {index['created_utc']} by `python -m ptycho_torch.report`.", "",
             "## Steps run in this run", "",
             "| step | status | duration (s) | evidence | manifest sha256 |",
             "|---|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {number(s['duration_s'] or '')} "
              f"| [{s['dir']}/]({link(s['dir'])}): [summary.md]({link(s['dir'] + '/' + SUMMARY)}), "
              f"[{MANIFEST}]({link(s['dir'] + '/' + MANIFEST)}) "
              f"| `{(s.get('manifest_sha256') or '-')[:12]}` |" for s in index["steps"]]
    m = index["metrics"]
    lines += ["", "## Reconstruction quality", "",
              f"On the scanned region of the test object ({m.get('n_patterns', '?')} patterns); "
              f"alignment: `{json.dumps(m.get('alignment', {}), sort_keys=True)}`.", "",
              "| | MAE | PSNR (dB) | SSIM | FRC50 |", "|---|---|---|---|---|"]
    lines += [f"| {part} | " + " | ".join(number(m[part].get(k, "")) for k in METRICS) + " |"
              for part in ("amplitude", "phase") if part in m]
    if "quality" in m:  # ptycho_torch.quality: needs no ground truth
        c, h = m["quality"]["data_consistency"], m["quality"]["half_data_frc"]
        frc = h.get("skipped") or (f"half-data FRC resolution {number(h['resolution_half_bit_nm'])}"
                                   f" nm (1/2-bit), {number(h['resolution_1_7_nm'])} nm (1/7)")
        lines += ["", f"Without ground truth: R-factor {number(c['r_factor'])} against the "
                  f"measured counts (Poisson noise alone: {number(c['r_factor_poisson_expected'])}"
                  f"); {frc}."]
    if index.get("comparison"):  # --comparison: the method comparison (ptycho_torch.compare)
        from ptycho_torch.comparison import markdown_section
        lines += ["", *markdown_section(index["comparison"])]
    lines += ["", "## Figures", ""]
    lines += [f"![{Path(f).stem}]({link(f)})" for f in index["figures"]]
    lines += ["", "## Products and the runs that made them", "",
              "| product | sha256 | made by |", "|---|---|---|"]
    for p in index["products"]:
        if p["run_id"] is None:
            origin = "**no manifest matches this file**"
        else:
            origin = f"`{p['run_id']}` ({p['step']})"
            origin += " this run" if p["run_id"] == run_id else ""
        lines.append(f"| `{p['path']}` | `{p['sha256'][:12]}` | {origin} |")
    return "\n".join(lines) + "\n"


def links_from(index_file: Path, run_dir: Path) -> Callable[[str], str]:
    """Relative links from ``index_file`` to paths given relative to ``run_dir``."""
    base = index_file.resolve().parent
    return lambda path: os.path.relpath(run_dir.resolve() / path, base)


def update_latest(run_dir: Path) -> None:
    """Point ``reports/latest`` at ``run_dir`` (relative link, swapped in atomically)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, latest)


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser("report", __doc__)
    cli.add_config_args(parser)
    parser.add_argument("--run-dir", type=Path, required=True, help="reports/<run_id>")
    parser.add_argument("--experiment", required=True, help="experiment name")
    parser.add_argument("--metrics", type=Path, required=True,
                        help="metrics.json of the infer step")
    parser.add_argument("--figures", type=Path, nargs="*", default=[], help="PNG figures to embed")
    parser.add_argument("--comparison", type=Path,
                        help="comparison.json of the compare step: adds its table (optional)")
    cli.add_seal_arg(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="copy of index.md at a fixed path (results/<experiment>/report/)")
    args = parser.parse_args(argv)
    args.report_dir = args.run_dir / args.experiment / "report"
    run_index = args.run_dir / "index.md"
    products = [args.out, run_index, args.run_dir / "index.json"]

    def load(a: argparse.Namespace) -> ExperimentConfig:
        cfg = cli.config_from_args(a)
        problems = [f"--experiment: {a.experiment!r} differs from the config's experiment "
                    f"{cfg.experiment!r}"] if cfg.experiment != a.experiment else []
        if not is_run_id(a.run_dir.name):
            problems.append(f"--run-dir: {a.run_dir.name!r} is not a run id YYYY-MM-DDTHHMMSSZ")
        problems += [f"--metrics: {a.metrics} not found"] if not a.metrics.is_file() else []
        problems += [f"--figures: {f} not found" for f in a.figures if not f.is_file()]
        if a.comparison and not a.comparison.is_file():
            problems.append(f"--comparison: {a.comparison} not found")
        if problems:
            raise ConfigError(problems)
        return cfg

    def body(cfg: ExperimentConfig, rep: StepReport) -> None:
        names = []
        for f in args.figures:
            shutil.copyfile(f, rep.directory / f.name)
            names.append(f"{args.experiment}/report/{f.name}")
        index = {"run_id": rep.run_id, "experiment": args.experiment,
                 "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "steps": steps_of_run(args.run_dir, args.experiment, args.report_dir),
                 "metrics": json.loads(args.metrics.read_text()), "figures": names,
                 "comparison": json.loads(args.comparison.read_text()) if args.comparison else None,
                 "products": provenance(args.run_dir.parent, args.experiment)}
        for path in (run_index, args.out):
            write_atomic(path, render(index, links_from(path, args.run_dir)))
        write_atomic(products[2], json.dumps(index, indent=2, default=str) + "\n")
        update_latest(args.run_dir)
        remade = sum(p["run_id"] == rep.run_id for p in index["products"])
        untraced = sum(p["run_id"] is None for p in index["products"])
        ssim = {f"{part}_ssim": m["ssim"] for part, m in index["metrics"].items()
                if part in ("amplitude", "phase")}
        rep.record({"steps_this_run": len(index["steps"]), "products": len(index["products"]),
                    "products_remade": remade, "products_untraced": untraced, **ssim})
        rep.verdict = (f"index of run {rep.run_id}: {len(index['steps'])} step(s) run, "
                       f"{remade} of {len(index['products'])} products remade"
                       + (f", {untraced} UNTRACED" if untraced else ""))

    return cli.run_step("report", args, products, body, load_config=load,
                        inputs=[args.metrics, *args.figures, *filter(None, [args.comparison])],
                        sealed=args.seal)


if __name__ == "__main__":
    raise SystemExit(main())
