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
higher-is-better; FRC50 in cycles/px, 0.5 = Nyquist). The metrics files must describe the
same test object (same scored region and number of patterns), or the step refuses (exit 2).

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
import io
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any

from ptycho_torch import cli
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.data import data_format
from ptycho_torch.dataset import DataFileError
from ptycho_torch.evidence import (MANIFEST, StepReport, is_run_id, load_manifest, path_key,
                                   sha256_file)
from ptycho_torch.files import write_atomic
from ptycho_torch.formatting import DIGITS, number

LOG = logging.getLogger("ptycho_torch")
PARTS = ("amplitude", "phase")
METRICS = ("psnr", "ssim", "frc50")  # all: higher is better
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "frc50": "FRC50"}
UNITS = {"psnr": "dB", "ssim": "", "frc50": "cycles/px"}
COSTS = ("training_seconds", "reconstruction_seconds")  # lower is better
COST_LABELS = {"training_seconds": "training", "reconstruction_seconds": "reconstruction"}
NAME = re.compile(r"^[A-Za-z0-9_-]+$")
FINAL_MARGIN_DB = 0.5  # "the solver's quality": its final PSNR less this


# ---------------------------------------------------------------- evidence lookup

def producer(product: Path, reports_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest verified manifest under ``reports_root`` that records making exactly the
    file ``product`` (its path as manifests write it, and its current sha256), or None."""
    key, digest = path_key(product), sha256_file(product)
    manifests = [m for m in reports_root.glob(f"*/*/*/{MANIFEST}") if is_run_id(m.parents[2].name)]
    for path in sorted(manifests, key=lambda m: m.parents[2].name, reverse=True):
        m, _ = load_manifest(path)
        entry = (m or {}).get("products", {}).get(key)
        if isinstance(entry, dict) and entry.get("sha256") == digest:
            return path, m
    return None


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
    if missing and not unavailable:
        raise ConfigError([f"--method {name}: {metrics_file} lacks {', '.join(missing)}"])
    entry: dict[str, Any] = {
        "name": name, "metrics_file": path_key(metrics_file),
        "metrics_sha256": sha256_file(metrics_file),
        "model_file": path_key(model_file) if model_file else None,
        "unavailable": unavailable,
        **{part: {k: None if unavailable else m[part][k] for k in METRICS} for part in PARTS},
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


# ---------------------------------------------------------------- the comparison

def _shown(v: float | None) -> float | None:
    """``v`` rounded to the digits the table shows (wins are decided on these)."""
    if v is None or not math.isfinite(v) or v == 0:
        return v
    return round(v, DIGITS - 1 - int(math.floor(math.log10(abs(v)))))


def time_to_reach(curve: list[dict[str, Any]], psnr_db: dict[str, float]) -> dict[str, Any]:
    """The first checkpoint of a convergence ``curve`` (``[{"epoch", "seconds", "amplitude":
    {"psnr", ...}, "phase": {...}}, ...]``, epochs ascending) where the PSNR of every part in
    ``psnr_db`` reaches its value (dB): ``{"reached": True, "epoch", "seconds"}``, else
    ``{"reached": False}`` (not within the epochs run)."""
    for point in curve:
        if all(point[part]["psnr"] >= db for part, db in psnr_db.items()):
            return {"reached": True, "epoch": point["epoch"], "seconds": point["seconds"]}
    return {"reached": False}


def quality_matches(methods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every untrained method with a convergence curve (the iterative one) and every other scored
    method: the time it needed to match that method's amplitude and phase PSNR, and the
    speed-up of the other method's reconstruction over that time (> 1: the other is faster
    to equal quality)."""
    out = []
    for it in (m for m in methods if m.get("convergence") and m["model_file"] is None):
        for other in (m for m in methods if m is not it and not m["unavailable"]):
            target = {part: other[part]["psnr"] for part in PARTS}
            reach = time_to_reach(it["convergence"], target)
            seconds = other["reconstruction_seconds"]
            speedup = (reach["seconds"] / seconds if reach["reached"] and seconds else None)
            out.append({"method": it["name"], "matches": other["name"], "psnr_db": target,
                        **reach, "matched_reconstruction_seconds": seconds,
                        "speedup_of_matched": speedup})
    return out


def final_quality_matches(methods: list[dict[str, Any]],
                          margin_db: float = FINAL_MARGIN_DB) -> list[dict[str, Any]]:
    """For every method ``T`` with a convergence curve and every method ``A`` with one (``T``
    itself included): the time ``A`` needed, on its own curve, to reach ``T``'s final
    amplitude and phase PSNR less ``margin_db`` (e.g. the hybrid and the iterative solver
    from its own start, to the solver's final quality)."""
    curves = [m for m in methods if m.get("convergence") and not m["unavailable"]]
    out = []
    for target in curves:
        psnr = {part: target[part]["psnr"] - margin_db for part in PARTS}
        for m in curves:
            out.append({"target_of": target["name"], "margin_db": margin_db, "psnr_db": psnr,
                        "method": m["name"], **time_to_reach(m["convergence"], psnr)})
    return out


def break_even(methods: list[dict[str, Any]], matches: list[dict[str, Any]],
               finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scans after which training once and reconstructing each scan costs less than an
    untrained method's time per scan at the same quality: ``ceil(train / (t_other - t))``,
    None when the trained method is not faster per scan. A trained method without a curve
    is compared at its own PSNR (``matches``: the untrained method's time to it); one with a
    curve (the hybrid) at the final quality of each untrained method with a curve
    (``finals``: both methods' times to it)."""
    out = []
    by_name = {m["name"]: m for m in methods}
    for m in (m for m in methods if m["training_seconds"] is not None and not m["unavailable"]):
        pairs = ([(q["method"], f"{m['name']}'s PSNR", m["reconstruction_seconds"],
                   q.get("seconds")) for q in matches if q["matches"] == m["name"]]
                 if not m.get("convergence") else
                 [(f["target_of"], f"{f['target_of']}'s final PSNR - {f['margin_db']:g} dB",
                   f.get("seconds"),
                   next((g.get("seconds") for g in finals if g["target_of"] == f["target_of"]
                         and g["method"] == f["target_of"]), None))
                  for f in finals if f["method"] == m["name"]
                  and by_name[f["target_of"]]["model_file"] is None])
        for other, quality, per_scan, other_per_scan in pairs:
            gain = (other_per_scan - per_scan if per_scan is not None
                    and other_per_scan is not None else None)
            out.append({"method": m["name"], "against": other, "quality": quality,
                        "training_seconds": m["training_seconds"], "seconds_per_scan": per_scan,
                        "against_seconds_per_scan": other_per_scan,
                        "scans": (math.ceil(m["training_seconds"] / gain)
                                  if gain is not None and gain > 0 else None)})
    return out


def _best(values: dict[str, float | None], higher: bool) -> list[str]:
    """Names holding the best shown value (several on a tie; none without values)."""
    known = {k: _shown(v) for k, v in values.items() if v is not None and not math.isnan(v)}
    if not known:
        return []
    best = (max if higher else min)(known.values())
    return [k for k, v in known.items() if v == best]


def like_for_like(methods: list[dict[str, Any]]) -> list[str]:
    """What differs between the methods' training runs (empty: the same data, number of
    patterns and epochs; methods without training are left out)."""
    trained = [m for m in methods if m["training"] is not None]
    notes = []
    for key, what in (("data_sha256", "training data"), ("patterns", "training patterns"),
                      ("epochs", "epochs")):
        values = {m["name"]: m["training"][key] for m in trained}
        if None in values.values():
            unknown = ", ".join(k for k, v in values.items() if v is None)
            notes.append(f"{what} unknown for {unknown} (no manifest records making its model)")
        elif len(set(values.values())) > 1:
            shown = ", ".join(f"{k} {str(v)[:12]}" for k, v in values.items())
            notes.append(f"different {what} ({shown})")
    return notes


def check_same_test(methods: list[dict[str, Any]]) -> list[str]:
    """Problems if the metrics files do not score the same test object."""
    problems = []
    for key, what in (("region", "scored region"), ("n_test_patterns", "number of test patterns"),
                      ("test_data_sha256", "test data")):
        values = {m["name"]: m[key] for m in methods if m[key] is not None}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            problems.append(f"--method: the metrics files differ in their {what} ("
                            + "; ".join(f"{k}: {json.dumps(v)[:60]}" for k, v in values.items())
                            + "): not the same test object")
    return problems


def build_comparison(methods: list[dict[str, Any]], experiment: str) -> dict[str, Any]:
    """The comparison of ``methods`` (rows from :func:`method_entry`): winners per quality
    metric and per cost, what is not like for like, and a one-line verdict."""
    winners = {f"{part}.{k}": _best({m["name"]: m[part][k] for m in methods}, higher=True)
               for part in PARTS for k in METRICS}
    winners.update({c: _best({m["name"]: m[c] for m in methods}, higher=False) for c in COSTS})
    notes = like_for_like(methods)
    comparison = {"experiment": experiment, "methods": methods, "parts": list(PARTS),
                  "metrics": list(METRICS), "higher_is_better": list(METRICS),
                  "lower_is_better": list(COSTS), "winners": winners,
                  "not_like_for_like": notes, "time_to_quality": quality_matches(methods),
                  "time_to_final_quality": final_quality_matches(methods),
                  "unavailable": {m["name"]: m["unavailable"] for m in methods
                                  if m["unavailable"]}}
    comparison["break_even"] = break_even(methods, comparison["time_to_quality"],
                                          comparison["time_to_final_quality"])
    comparison["verdict"] = verdict(comparison)
    return comparison


def _wins_text(keys: list[str]) -> str:
    """``["amplitude.psnr", "amplitude.ssim", "phase.frc50"]`` -> "amplitude PSNR/SSIM, phase
    FRC50"."""
    by_part: dict[str, list[str]] = {}
    for key in keys:
        part, metric = key.split(".")
        by_part.setdefault(part, []).append(LABELS[metric])
    return ", ".join(f"{part} {'/'.join(ms)}" for part, ms in by_part.items())


def _cost_text(comparison: dict[str, Any], cost: str) -> str | None:
    values = {m["name"]: m[cost] for m in comparison["methods"] if m[cost] is not None}
    best = comparison["winners"][cost]
    if len(values) < 2 or not best:
        return None
    if len(best) > 1:
        return f"{COST_LABELS[cost]} equally fast ({', '.join(best)})"
    others = ", ".join(f"{k} {number(v)} s" for k, v in values.items() if k not in best)
    return f"{COST_LABELS[cost]} faster with {best[0]} ({number(values[best[0]])} s vs {others})"


def verdict(comparison: dict[str, Any]) -> str:
    """One line: which method wins which quality metric, and which is cheaper."""
    names = [m["name"] for m in comparison["methods"] if not m["unavailable"]]
    quality = [f"{p}.{k}" for p in PARTS for k in METRICS]
    sole = {n: [q for q in quality if comparison["winners"][q] == [n]] for n in names}
    ties = [q for q in quality if len(comparison["winners"][q]) > 1]
    ranked = sorted(names, key=lambda n: -len(sole[n]))
    parts = [(f"{n} better on {len(sole[n])} of {len(quality)} quality metrics" if i == 0
              else f"{n} on {len(sole[n])}") + (f" ({_wins_text(sole[n])})" if sole[n] else "")
             for i, n in enumerate(ranked)]
    text = "; ".join(parts)
    if ties:
        text += f"; tied on {_wins_text(ties)}"
    costs = [t for t in (_cost_text(comparison, c) for c in COSTS) if t]
    if costs:
        text += "; " + "; ".join(costs)
    for match in comparison["time_to_quality"]:
        text += (f"; {match['method']} matched {match['matches']}'s PSNR after "
                 f"{match['epoch']} epochs, {number(match['seconds'])} s" if match["reached"]
                 else f"; {match['method']} did not reach {match['matches']}'s PSNR")
    for f in comparison.get("time_to_final_quality", []):
        if f["method"] != f["target_of"]:
            text += (f"; {f['method']} reached {f['target_of']}'s final PSNR - "
                     f"{f['margin_db']:g} dB in {number(f['seconds'])} s" if f["reached"]
                     else f"; {f['method']} did not reach {f['target_of']}'s final PSNR - "
                          f"{f['margin_db']:g} dB")
    for name, reason in comparison["unavailable"].items():
        text += f"; {name} not available ({reason.split(':')[0]})"
    if comparison["not_like_for_like"]:
        text += "; NOT like for like: " + "; ".join(comparison["not_like_for_like"])
    return text + " (this run only: one seed, no error bars)."


# ---------------------------------------------------------------- rendering

def table_lines(comparison: dict[str, Any]) -> list[str]:
    """The comparison table (Markdown), the best value of each column in bold, and the verdict."""
    cols = [(f"{p}.{k}", f"{p} {LABELS[k]}" + (f" ({UNITS[k]})" if UNITS[k] else ""))
            for p in PARTS for k in METRICS]
    cols += [(c, f"{COST_LABELS[c]} (s)") for c in COSTS]
    lines = ["| method | training | " + " | ".join(label for _, label in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for m in comparison["methods"]:
        t = m["training"]
        trained = (f"{t['mode']}, {number(t['patterns'])} patterns x {number(t['epochs'])} epochs"
                   if t else "none")
        if m["unavailable"]:
            trained = f"not available: {m['unavailable']}"
        cells = []
        for key, _ in cols:
            value = m[key] if key in COSTS else m[key.split(".")[0]][key.split(".")[1]]
            bold = m["name"] in comparison["winners"][key] and len(comparison["methods"]) > 1
            cells.append(f"**{number(value)}**" if bold and value is not None else number(value))
        lines.append(f"| {m['name']} | {trained} | " + " | ".join(cells) + " |")
    first = comparison["methods"][0]
    region = first.get("region") or {}
    lines += ["", f"**Verdict:** {comparison['verdict']}", "", *time_to_quality_lines(comparison),
              *final_quality_lines(comparison), *break_even_lines(comparison),
              f"Test object: {number(first.get('n_test_patterns'))} patterns, scored region rows "
              f"{region.get('rows')}, cols {region.get('cols')} (the same for every method). "
              "Higher is better for PSNR, SSIM and FRC50 (cycles/px, 0.5 = Nyquist), lower for "
              "the times. Times are each step's own measurement (training loop; network + "
              "stitching, or the iterative solver), from the manifest of the step that made "
              "the file; run-to-run "
              "variation on shared CPUs is up to +-50 %."]
    return lines


def time_to_quality_lines(comparison: dict[str, Any]) -> list[str]:
    """Markdown table: when the iterative method reached a fixed PSNR and each other method's
    PSNR (amplitude and phase both), against that method's reconstruction time."""
    rows = []
    for m in comparison["methods"]:
        t = m.get("time_to_target")
        if t:
            rows.append(f"| {m['name']} | {t['psnr_db']:g} dB (fixed target) | "
                        + (f"{t['epoch']} | {number(t['seconds'])} | | |" if t["reached"]
                           else "not reached | | | |"))
    for q in comparison["time_to_quality"]:
        target = ", ".join(f"{p} {q['psnr_db'][p]:.4g} dB" for p in PARTS)
        cells = (f"{q['epoch']} | {number(q['seconds'])}" if q["reached"] else "not reached | ")
        rows.append(f"| {q['method']} | {q['matches']}'s PSNR ({target}) | {cells} | "
                    f"{number(q['matched_reconstruction_seconds'])} | "
                    f"{number(q['speedup_of_matched'])} |")
    if not rows:
        return []
    return ["Time to quality (the first scored checkpoint reaching the target in amplitude "
            "and phase PSNR; solver seconds, scoring not timed):", "",
            "| method | target | epochs | seconds | that method's reconstruction (s) | "
            "that method's speed-up (> 1: it is faster) |", "|---|---|---|---|---|---|", *rows,
            ""]


def final_quality_lines(comparison: dict[str, Any]) -> list[str]:
    """Markdown table: each method with a curve, the time to each such method's final
    quality (its final PSNR less the margin, amplitude and phase both)."""
    rows = [f"| {f['method']} | {f['target_of']}'s final PSNR - {f['margin_db']:g} dB ("
            + ", ".join(f"{p} {f['psnr_db'][p]:.4g} dB" for p in PARTS) + ") | "
            + (f"{f['epoch']} | {number(f['seconds'])} |" if f["reached"] else "not reached | |")
            for f in comparison.get("time_to_final_quality", [])]
    if not rows:
        return []
    return ["Time to an iterative method's final quality (seconds from counts, a hybrid's "
            "including the PINN's reconstruction before its first epoch):", "",
            "| method | target | epochs | seconds |", "|---|---|---|---|", *rows, ""]


def break_even_lines(comparison: dict[str, Any]) -> list[str]:
    """Markdown table: the whole cost, training once then reconstructing scan after scan."""
    rows = [f"| {b['method']} | {b['against']} | {b['quality']} | {number(b['training_seconds'])} | "
            f"{number(b['seconds_per_scan'])} | {number(b['against_seconds_per_scan'])} | "
            + (str(b["scans"]) if b["scans"] is not None else "never (not faster per scan)")
            + " |" for b in comparison.get("break_even", [])]
    if not rows:
        return []
    return ["Whole cost: training once, then each scan (break-even: the number of scans after "
            "which training plus reconstructing costs less than the other method alone):", "",
            "| method | against | at the quality of | training (s) | per scan (s) | "
            "other per scan (s) | break-even scans |", "|---|---|---|---|---|---|---|", *rows, ""]


def markdown_section(comparison: dict[str, Any], heading: str = "##") -> list[str]:
    """The comparison as a section of a Markdown document (the run index embeds it)."""
    names = " vs ".join(m["name"] for m in comparison["methods"])
    return [f"{heading} Method comparison: {names}", "", *table_lines(comparison)]


def markdown(comparison: dict[str, Any]) -> str:
    body = markdown_section(comparison, "#")
    body[0] += f", experiment `{comparison['experiment']}`"
    evidence = [f"- {m['name']}: `{m['metrics_file']}`"
                + "".join(f", {k} cost from `{v}`" for k, v in m["evidence"].items())
                for m in comparison["methods"]]
    return "\n".join(body + ["", "Sources:", "", *evidence]) + "\n"


def _finite(v: float | None) -> float:
    """A bar height: 0 for a missing or infinite value."""
    return v if v is not None and math.isfinite(v) else 0.0


def _convergence_panel(ax: Any, methods: list[dict[str, Any]], colours: list[str],
                       part: str) -> None:
    """PSNR of ``part`` against reconstruction seconds: the curve of an iterative method,
    one point per other method (its reconstruction time and PSNR)."""
    for m, colour in zip(methods, colours):
        if m.get("convergence"):
            ax.plot([c["seconds"] for c in m["convergence"]],
                    [c[part]["psnr"] for c in m["convergence"]], "o-", ms=2.5, color=colour,
                    label=m["name"])
        elif not m["unavailable"] and m["reconstruction_seconds"]:
            ax.plot([m["reconstruction_seconds"]], [m[part]["psnr"]], "s", ms=7, color=colour,
                    label=m["name"])
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction time [s]", fontsize=8)
    ax.set_title(f"{part} PSNR [dB] vs time", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def figure(path: Path, comparison: dict[str, Any]) -> None:
    """Bars per method: amplitude and phase PSNR, SSIM, FRC50 and the two costs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = comparison["methods"]
    names = [m["name"] for m in methods]
    colours = [f"C{i}" for i in range(len(methods))]
    curves = any(m.get("convergence") for m in methods)
    fig, axes = plt.subplots(2, 5 if curves else 4, figsize=(14 if curves else 11, 5),
                             constrained_layout=True)
    for row, part in enumerate(PARTS):
        for col, k in enumerate(METRICS):
            ax = axes[row, col]
            values = [_finite(m[part][k]) for m in methods]
            ax.bar(names, values, color=colours)
            ax.set_title(f"{part} {LABELS[k]}" + (f" [{UNITS[k]}]" if UNITS[k] else ""),
                         fontsize=9)
            ax.tick_params(labelsize=8)
        cost = COSTS[row]
        ax = axes[row, 3]
        ax.bar(names, [m[cost] or 0.0 for m in methods], color=colours)
        ax.set_title(f"{COST_LABELS[cost]} [s], lower is better", fontsize=9)
        ax.tick_params(labelsize=8)
        if curves:
            _convergence_panel(axes[row, 4], methods, colours, part)
    missing = [m["name"] for m in methods if m["unavailable"]]
    fig.suptitle(f"{' vs '.join(names)} on the test object (higher is better unless noted)"
                 + (f"; not available: {', '.join(missing)}" if missing else ""), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


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
    parser = argparse.ArgumentParser(prog="python -m ptycho_torch.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        figure(products[2], comparison)
        for product in products:
            shutil.copyfile(product, rep.directory / product.name)
        for m in rows:
            rep.record({f"{m['name']}_{p}_{k}": m[p][k] for p in PARTS for k in METRICS})
            rep.record({f"{m['name']}_{c}": m[c] for c in COSTS})
        for q in comparison["time_to_quality"]:
            rep.record({f"{q['method']}_seconds_to_{q['matches']}_psnr": q.get("seconds")})
        rep.verdict = comparison["verdict"]
        LOG.info("comparison: %s", comparison["verdict"])

    inputs = [p for _, metrics, model in methods for p in (metrics, model) if p is not None]
    return cli.run_step("compare", args, products, body, load_config=load, inputs=inputs)


if __name__ == "__main__":
    raise SystemExit(main())
