"""PNG figures readable without the code (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

import csv
import math
import io
import shutil
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ptycho_torch.comparison import (COST_LABELS, COSTS, LABELS, METRICS, NO_TRUTH,  # noqa: E402
                                     NO_TRUTH_LABELS, PARTS, UNITS)
from ptycho_torch.files import write_atomic  # noqa: E402


def save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def copy_into(path: Path, directory: Path) -> None:
    shutil.copyfile(path, directory / path.name)


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of ``history.csv`` (``epoch`` int, every other column float; ``nan`` kept)."""
    with path.open(newline="") as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def loss_curve(path: Path, history: list[dict[str, float]]) -> None:
    """Training loss and, where there is one, validation loss (PINN: half Poisson deviance
    per pixel; supervised: L1) against epoch, log scale."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "o-", ms=3, label="training")
    val = np.array([h.get("val_loss", np.nan) for h in history], dtype=float)
    if np.isfinite(val).any():
        ax.plot(epochs, val, "s-", ms=3, label="validation (held-out positions)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def _panel(ax: plt.Axes, img: np.ndarray, title: str, cmap: str, **kw: Any) -> None:
    im = ax.imshow(img, cmap=cmap, **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def reconstruction(path: Path, recon: np.ndarray, truth: np.ndarray | None,
                   metrics: dict | None) -> None:
    """Amplitude and phase of ``recon`` [H, W]; with ``truth`` [H, W] also truth and error.

    The reconstruction is shown after the alignment the metrics applied
    (``metrics["alignment"]``: shift, crop, global phase, amplitude scale), so the
    error panel is what the numbers in the titles measure.
    """
    if truth is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
        _panel(axes[0], np.abs(recon), "reconstruction amplitude", "gray")
        _panel(axes[1], np.angle(recon), "reconstruction phase (rad)", "twilight")
        fig.suptitle("scanned region (no ground truth: not scored)", fontsize=10)
        save(fig, path)
        return
    from ptycho_torch.metrics import apply_alignment  # scipy/skimage: only where scored
    aligned, truth = apply_alignment(recon, truth, metrics["alignment"])
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2))
    for row, (part, fn, cmap, unit) in enumerate((("amplitude", np.abs, "gray", ""),
                                                  ("phase", np.angle, "twilight", " (rad)"))):
        t, r = fn(truth), fn(aligned)
        if part == "phase":  # truth + wrapped difference, as the metrics compare them
            r = t + np.angle(aligned * np.conj(truth))
        lo, hi = float(t.min()), float(t.max())
        m = metrics[part]
        _panel(axes[row, 0], t, f"ground truth {part}{unit}", cmap, vmin=lo, vmax=hi)
        _panel(axes[row, 1], r, f"reconstruction {part}{unit}\nSSIM {m['ssim']:.3f}, "
               f"PSNR {m['psnr']:.1f} dB, FRC50 {m['frc50']:.3f} cycles/px", cmap,
               vmin=lo, vmax=hi)
        _panel(axes[row, 2], r - t, f"error {part}{unit} (reconstruction - truth)\n"
               f"MAE {m['mae']:.3g}", "RdBu_r", vmin=-(hi - lo) / 2, vmax=(hi - lo) / 2)
    fig.suptitle("scanned region, after registration and global phase / amplitude alignment",
                 fontsize=10)
    save(fig, path)


def frc_curves(path: Path, freq: np.ndarray, curves: Mapping[str, np.ndarray],
               crossings: Mapping[str, tuple[float, float]], pixel_size_m: float,
               title: str, markers: Mapping[str, float] | None = None) -> None:
    """Fourier ring correlation ``curves[name]`` [k] against ``freq`` [k] (cycles/px).

    ``crossings[name]`` = (1/2, 1/7 threshold crossings, cycles/px), shown in the legend
    with the period they resolve; the thresholds are drawn as lines, and each of
    ``markers`` (legend label: cycles/px) as a vertical line. The top axis gives the
    frequency in 1/um (object pixel ``pixel_size_m``).
    """
    px_um = pixel_size_m * 1e6
    fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    for name, curve in curves.items():  # ring 0 (DC) is empty: the means are subtracted
        f50, f7 = crossings[name]
        ax.plot(freq[1:], curve[1:], lw=1.5, label=f"{name}: FRC50 {f50:.3f}, FRC1/7 {f7:.3f} "
                f"cycles/px (period {px_um / f50 * 1e3:.0f} / {px_um / f7 * 1e3:.0f} nm)")
    ax.axhline(0.5, color="k", ls="--", lw=1, label="1/2 threshold (FRC50)")
    ax.axhline(1 / 7, color="k", ls=":", lw=1, label="1/7 threshold")
    for (label, f), colour in zip((markers or {}).items(), ("tab:blue", "tab:orange")):
        ax.axvline(f, color=colour, ls="-.", lw=1, label=label)
    ax.set_xlim(0, 0.5)
    ax.set_ylim(max(-1.0, min(-0.1, *(float(np.min(c[1:])) for c in curves.values()))), 1.05)
    ax.set_xlabel("spatial frequency (cycles/px)")
    ax.set_ylabel("FRC")
    top = ax.secondary_xaxis("top", functions=(lambda f: f / px_um, lambda k: k * px_um))
    top.set_xlabel("spatial frequency (1/um)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    save(fig, path)


def message(path: Path, title: str, text: str) -> None:
    """A figure that says why there is nothing to plot (keeps a step's products fixed)."""
    fig, ax = plt.subplots(figsize=(6.4, 2.0))
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9,
            transform=ax.transAxes)
    save(fig, path)


def scan_positions(path: Path, amplitude: np.ndarray, positions_px: np.ndarray,
                   illumination: np.ndarray, diameter_px: float, pixel_size_m: float,
                   region: tuple[slice, slice]) -> None:
    """Where the probe went. Left: ``amplitude`` [H, W] with the probe centres
    ``positions_px`` [n, 2] (row, col px), the probe footprint (circles of
    ``diameter_px``, the disk holding 86.5 % of the probe intensity) at the first, middle
    and last position and the scored ``region`` (dashed box). Right: ``illumination``
    [H, W], the summed probe intensity (photons per object pixel). Axes in um.
    """
    px_um = pixel_size_m * 1e6
    h, w = amplitude.shape
    extent = (-0.5 * px_um, (w - 0.5) * px_um, (h - 0.5) * px_um, -0.5 * px_um)
    y, x = positions_px[:, 0] * px_um, positions_px[:, 1] * px_um
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 6.0), layout="constrained")
    for ax, img, label, cmap in ((axes[0], amplitude, "reconstructed amplitude", "gray"),
                                 (axes[1], illumination, "photons per object pixel", "magma")):
        im = ax.imshow(img, cmap=cmap, extent=extent)
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
        r0, c0 = region[0].start * px_um, region[1].start * px_um
        ax.add_patch(plt.Rectangle((c0, r0), (region[1].stop - 1) * px_um - c0,
                                   (region[0].stop - 1) * px_um - r0, fill=False, ls="--",
                                   ec="cyan", lw=1, label="scored region"))
    axes[0].plot(x, y, ".", color="orange", ms=3, label=f"probe centres ({len(x)})")
    axes[0].plot(x, y, "-", color="orange", lw=0.3, alpha=0.5)
    for k in sorted({0, len(x) // 2, len(x) - 1}):
        axes[0].add_patch(plt.Circle((x[k], y[k]), diameter_px * px_um / 2, fill=False,
                                     ec="lime", lw=1.2, label="probe footprint" if k == 0
                                     else None))
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3)
    axes[0].set_title(f"scan: {len(x)} positions; circles: probe diameter "
                      f"{diameter_px * px_um * 1e3:.0f} nm (86.5 % of its intensity)", fontsize=9)
    axes[1].set_title(f"illumination (summed probe intensity); pixel {px_um * 1e3:.1f} nm",
                      fontsize=9)
    save(fig, path)


def position_errors(path: Path, true: np.ndarray, given: np.ndarray,
                    corrected: np.ndarray | None) -> None:
    """Scan position errors: at each true probe centre ``true [n, 2]`` (row, col px) the
    error of the ``given`` positions and, when refined, of the ``corrected`` ones, as
    arrows (mean offset removed, see :func:`ptycho_torch.metrics.position_rms_error`),
    drawn 5 x longer than they are; right: histograms of the error lengths."""
    from ptycho_torch.metrics import position_rms_error
    sets = [("given", given, "tab:red")] + ([("corrected", corrected, "tab:blue")]
                                            if corrected is not None else [])
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.5), layout="constrained")
    axes[0].plot(true[:, 1], true[:, 0], ".", color="gray", ms=2, label="true positions")
    for name, pos, colour in sets:
        e = (pos - true) - (pos - true).mean(axis=0)
        axes[0].quiver(true[:, 1], true[:, 0], e[:, 1], e[:, 0], color=colour, angles="xy",
                       scale_units="xy", scale=0.2, width=0.003,
                       label=f"{name}: RMS {position_rms_error(pos, true):.3f} px")
        axes[1].hist(np.hypot(e[:, 0], e[:, 1]), bins=30, color=colour, alpha=0.6, label=name)
    axes[0].invert_yaxis()
    axes[0].set_aspect("equal")
    axes[0].set(xlabel="column (px)", ylabel="row (px)",
                title="position errors (arrows 5 x their length)")
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="error (px, mean offset removed)", ylabel="positions",
                title="error lengths")
    axes[1].legend(fontsize=8)
    save(fig, path)


def probes(path: Path, given: np.ndarray, final: np.ndarray, true: np.ndarray | None) -> None:
    """The probe ``[N, N]`` a reconstruction was given, the one it ended with (refined, or
    the given one) and, when known, the true one: amplitude (top) and phase (bottom, where
    the amplitude exceeds 5 % of its maximum), each with its error against the true probe
    (:func:`ptycho_torch.metrics.probe_error`). Of probe modes ``[K, N, N]``: the root of
    their summed intensity and the phase of the strongest mode."""
    from ptycho_torch.metrics import probe_error
    shown = [("given", given), ("final", final)] + ([("true", true)] if true is not None else [])
    fig, axes = plt.subplots(2, len(shown), figsize=(3.6 * len(shown), 6.4),
                             layout="constrained", squeeze=False)
    top = max(float(_probe_view(p)[0].max()) for _, p in shown)
    for k, (name, p) in enumerate(shown):
        err = f", error {probe_error(p, true):.3f}" if true is not None else ""
        amplitude, p = _probe_view(p)
        _panel(axes[0, k], amplitude, f"{name}: amplitude{err}", "gray", vmin=0, vmax=top)
        phase = np.where(np.abs(p) > 0.05 * np.abs(p).max(), np.angle(p), np.nan)
        _panel(axes[1, k], phase, f"{name}: phase (rad)", "twilight", vmin=-np.pi, vmax=np.pi)
    save(fig, path)


def _probe_view(probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude ``[N, N]`` and the field whose phase is shown: ``|P|`` and ``P`` for one
    mode; for modes ``[K, N, N]`` ``sqrt(sum_k |P_k|^2)`` and the strongest mode."""
    if probe.ndim == 2:
        return np.abs(probe), probe
    power = np.square(np.abs(probe)).sum(axis=(1, 2))
    return np.sqrt(np.square(np.abs(probe)).sum(0)), probe[int(np.argmax(power))]


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


def comparison(path: Path, comparison: dict[str, Any]) -> None:
    """``comparison.png`` of a comparison (:func:`ptycho_torch.comparison.build_comparison`):
    bars per method of amplitude and phase PSNR, SSIM, FRC50 (against the ground truth), the
    R-factor over its noise floor and the half-data FRC resolution (without it), the two
    costs, and the PSNR against time where a method has a convergence curve."""
    methods = comparison["methods"]
    names = [m["name"] for m in methods]
    colours = [f"C{i}" for i in range(len(methods))]
    curves = any(m.get("convergence") for m in methods)
    fig, axes = plt.subplots(2, 6 if curves else 5, figsize=(16.5 if curves else 13.5, 5),
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
        key = NO_TRUTH[row]
        ax = axes[row, 4]
        ax.bar(names, [_finite((m.get("quality") or {}).get(key)) for m in methods],
               color=colours)
        ax.set_title(f"{NO_TRUTH_LABELS[key]}, lower is better", fontsize=9)
        ax.tick_params(labelsize=8)
        if curves:
            _convergence_panel(axes[row, 5], methods, colours, part)
    missing = [m["name"] for m in methods if m["unavailable"]]
    fig.suptitle(f"{' vs '.join(names)} on the test object (higher is better unless noted"
                 + ("" if comparison.get("ground_truth", True) else "; no ground truth") + ")"
                 + (f"; not available: {', '.join(missing)}" if missing else ""), fontsize=10)
    save(fig, path)
