"""Comparing reconstruction methods: the maths (who wins, time to a quality, break-even scan
counts) and the markdown tables, shared by the compare step, the run index (report step)
and the studies.

A method is a dict as the compare step builds it (``name``, amplitude and phase ``psnr``,
``ssim``, ``frc50``, ``training_seconds``, ``reconstruction_seconds``, an optional
``convergence`` curve ``[{"epoch", "seconds", "amplitude": {"psnr", ...}, "phase": ...}]``,
and ``quality``: the figures without ground truth, :func:`no_truth_figures`).

Without ground truth (no method has a PSNR) the methods are ranked by those figures alone:
the R-factor against the measured counts over its Poisson noise floor (lower is better:
1 explains the counts down to their photon noise) and the half-data FRC resolution (finer,
i.e. lower, is better). With ground truth they are columns beside the PSNR, SSIM and FRC50.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ptycho_torch.formatting import DIGITS, number


PARTS = ("amplitude", "phase")


METRICS = ("psnr", "ssim", "frc50")  # all: higher is better


LABELS = {"psnr": "PSNR", "ssim": "SSIM", "frc50": "FRC50"}


UNITS = {"psnr": "dB", "ssim": "", "frc50": "cycles/px"}


COSTS = ("training_seconds", "reconstruction_seconds")  # lower is better


COST_LABELS = {"training_seconds": "training", "reconstruction_seconds": "reconstruction"}


FINAL_MARGIN_DB = 0.5  # "the solver's quality": its final PSNR less this


NO_TRUTH = ("r_factor_over_noise", "half_frc_resolution_nm")  # lower is better: ranked


NO_TRUTH_LABELS = {"r_factor": "R-factor", "r_factor_over_noise": "R / noise floor",
                   "half_frc_resolution_nm": "half-data FRC resolution (nm)"}


def no_truth_figures(metrics: dict[str, Any]) -> dict[str, float | None]:
    """A method's figures without ground truth from its ``metrics.json`` ``quality``
    (:func:`ptycho_torch.quality.assess_reconstruction`): the R-factor, its Poisson noise
    floor and their ratio (dimensionless), and the half-data FRC resolution at the 1/2-bit
    threshold (nm; None where not computed). All None without a ``quality`` record."""
    q = metrics.get("quality") if isinstance(metrics.get("quality"), dict) else {}
    c, h = q.get("data_consistency") or {}, q.get("half_data_frc") or {}
    return {"r_factor": c.get("r_factor"),
            "r_factor_poisson_expected": c.get("r_factor_poisson_expected"),
            "r_factor_over_noise": c.get("r_factor_over_noise"),
            "half_frc_resolution_nm": h.get("resolution_half_bit_nm")}


def has_ground_truth(methods: list[dict[str, Any]]) -> bool:
    """Whether any available method is scored against a ground truth (has a PSNR)."""
    return any(m[p]["psnr"] is not None for m in methods if not m["unavailable"] for p in PARTS)


def ranking_without_truth(methods: list[dict[str, Any]]) -> dict[str, list[str]]:
    """For each of :data:`NO_TRUTH`: the available methods that have it, best (lowest)
    first."""
    out = {}
    for key in NO_TRUTH:
        known = [m for m in methods if not m["unavailable"]
                 and (m.get("quality") or {}).get(key) is not None]
        out[key] = [m["name"] for m in sorted(known, key=lambda m: m["quality"][key])]
    return out


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
    winners.update({f"quality.{k}": _best({m["name"]: (m.get("quality") or {}).get(k)
                                           for m in methods if not m["unavailable"]},
                                          higher=False) for k in NO_TRUTH})
    notes = like_for_like(methods)
    comparison = {"experiment": experiment, "methods": methods, "parts": list(PARTS),
                  "metrics": list(METRICS), "higher_is_better": list(METRICS),
                  "lower_is_better": list(COSTS) + [f"quality.{k}" for k in NO_TRUTH],
                  "ground_truth": has_ground_truth(methods),
                  "ranking_without_ground_truth": ranking_without_truth(methods),
                  "winners": winners,
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


def _truth_text(comparison: dict[str, Any]) -> str:
    """Which method wins which quality metric against the ground truth."""
    names = [m["name"] for m in comparison["methods"] if not m["unavailable"]]
    quality = [f"{p}.{k}" for p in PARTS for k in METRICS]
    sole = {n: [q for q in quality if comparison["winners"][q] == [n]] for n in names}
    ties = [q for q in quality if len(comparison["winners"][q]) > 1]
    ranked = sorted(names, key=lambda n: -len(sole[n]))
    parts = [(f"{n} better on {len(sole[n])} of {len(quality)} quality metrics" if i == 0
              else f"{n} on {len(sole[n])}") + (f" ({_wins_text(sole[n])})" if sole[n] else "")
             for i, n in enumerate(ranked)]
    text = "; ".join(parts)
    return text + (f"; tied on {_wins_text(ties)}" if ties else "")


def _ranking_text(comparison: dict[str, Any]) -> str:
    """The methods in order of each figure without ground truth, with their values."""
    values = {m["name"]: m.get("quality") or {} for m in comparison["methods"]}
    texts = []
    for key, what in (("r_factor_over_noise", "R-factor / its noise floor"),
                      ("half_frc_resolution_nm", "half-data FRC resolution (nm)")):
        order = comparison["ranking_without_ground_truth"][key]
        if order:
            texts.append(f"by {what}, lower is better: "
                         + " < ".join(f"{n} {number(values[n][key])}" for n in order))
    return "; ".join(texts) if texts else "no figures without ground truth"


def verdict(comparison: dict[str, Any]) -> str:
    """One line: which method wins which quality metric (without ground truth: the ranking
    by the R-factor and the half-data FRC), and which is cheaper."""
    if comparison.get("ground_truth", True):
        text = _truth_text(comparison)
        if any(comparison["ranking_without_ground_truth"].values()):
            text += f"; without the ground truth, {_ranking_text(comparison)}"
    else:
        text = f"no ground truth: ranked {_ranking_text(comparison)}"
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


def table_lines(comparison: dict[str, Any]) -> list[str]:
    """The comparison table (Markdown), the best value of each column in bold, and the verdict."""
    cols = [(f"{p}.{k}", f"{p} {LABELS[k]}" + (f" ({UNITS[k]})" if UNITS[k] else ""))
            for p in PARTS for k in METRICS]
    cols += [(f"quality.{k}", label) for k, label in NO_TRUTH_LABELS.items()]
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
            value = m[key] if key in COSTS else (m.get(key.split(".")[0]) or {}).get(
                key.split(".")[1])
            bold = (m["name"] in comparison["winners"].get(key, [])
                    and len(comparison["methods"]) > 1)
            cells.append(f"**{number(value)}**" if bold and value is not None else number(value))
        lines.append(f"| {m['name']} | {trained} | " + " | ".join(cells) + " |")
    first = comparison["methods"][0]
    region = first.get("region") or {}
    lines += ["", f"**Verdict:** {comparison['verdict']}", "", *time_to_quality_lines(comparison),
              *final_quality_lines(comparison), *break_even_lines(comparison),
              f"Test object: {number(first.get('n_test_patterns'))} patterns, scored region rows "
              f"{region.get('rows')}, cols {region.get('cols')} (the same for every method). "
              "Higher is better for PSNR, SSIM and FRC50 (cycles/px, 0.5 = Nyquist; against "
              "the ground truth), lower for the R-factor over its Poisson noise floor (1: "
              "the counts explained down to their photon noise), the half-data FRC "
              "resolution (1/2-bit; no ground truth needed) and the times. Times are each step's own measurement (training loop; network + "
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
