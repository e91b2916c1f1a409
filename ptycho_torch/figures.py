"""PNG figures readable without the code (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ptycho_torch.reports import write_atomic  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def copy_into(path: Path, directory: Path) -> None:
    shutil.copyfile(path, directory / path.name)


def read_history(path: Path) -> list[dict[str, float]]:
    rows = path.read_text().strip().splitlines()[1:]
    return [{"epoch": int(e), "loss": float(l), "seconds": float(s)}
            for e, l, s in (r.split(",") for r in rows)]


def loss_curve(path: Path, history: list[dict[str, float]]) -> None:
    """Training loss (half Poisson deviance per pixel) against epoch, log scale."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], "o-", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("PINN training loss (no ground truth used)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _panel(ax: plt.Axes, img: np.ndarray, title: str, cmap: str, **kw: Any) -> None:
    im = ax.imshow(img, cmap=cmap, **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def reconstruction(path: Path, recon: np.ndarray, truth: np.ndarray | None,
                   metrics: dict | None) -> None:
    """Amplitude and phase of the reconstruction; with ground truth also truth and error.

    The reconstruction is shown after the same global-phase alignment the
    metrics used, so the error panel is what the numbers measure.
    """
    if truth is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
        _panel(axes[0], np.abs(recon), "reconstruction amplitude", "gray")
        _panel(axes[1], np.angle(recon), "reconstruction phase (rad)", "twilight")
        _save(fig, path)
        return
    offset = metrics["alignment"].get("phase_offset_rad", 0.0)
    scale = metrics["alignment"].get("amplitude_scale", 1.0)
    aligned = recon * scale * np.exp(-1j * offset)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2))
    for row, (part, fn, cmap) in enumerate((("amplitude", np.abs, "gray"),
                                            ("phase", np.angle, "twilight"))):
        t, r = fn(truth), fn(aligned)
        if part == "phase":
            r = t + np.angle(aligned * np.conj(truth))
        lo, hi = float(t.min()), float(t.max())
        m = metrics[part]
        _panel(axes[row, 0], t, f"ground truth {part}", cmap, vmin=lo, vmax=hi)
        _panel(axes[row, 1], r, f"reconstruction {part}\nSSIM {m['ssim']:.3f}, "
               f"PSNR {m['psnr']:.1f} dB", cmap, vmin=lo, vmax=hi)
        _panel(axes[row, 2], r - t, f"error {part}\nMAE {m['mae']:.3g}", "RdBu_r",
               vmin=-(hi - lo) / 2, vmax=(hi - lo) / 2)
    fig.suptitle("scanned region, after global phase / amplitude alignment", fontsize=10)
    _save(fig, path)
