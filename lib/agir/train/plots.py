"""Training plots for `model/plots/`: loss and mIoU curves, and test predictions beside ground truth."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from agir.figures import save_png  # noqa: E402
from agir.masks import overlay  # noqa: E402


def _save(fig, path: Path) -> Path:
    save_png(fig, path, dpi=110)
    return Path(path)


def _series(rows: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        xs.append(float(r["epoch"]))
        ys.append(float(v))
    return xs, ys


def plot_curves(rows: Sequence[Mapping], folder: str | Path, best_epoch: int | None = None) -> list[Path]:
    """`loss.png` (train and val loss per epoch) and `miou.png` (val mIoU and per-class IoU)."""
    folder = Path(folder)
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    out.append(_save(fig, folder / "loss.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = _series(rows, "val_mIoU")
    if xs:
        ax.plot(xs, ys, marker="o", linewidth=2.5, color="black", label="val mIoU")
    per_class = sorted({k for r in rows for k in r if k.startswith("val_iou_")})
    for key in per_class:
        cx, cy = _series(rows, key)
        if cx:
            ax.plot(cx, cy, linewidth=1, alpha=0.7, label=key[len("val_iou_"):])
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch})")
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("IoU")
    ax.set_title("Validation IoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    out.append(_save(fig, folder / "miou.png"))
    return out


def plot_predictions(
    samples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    classes: Sequence[Mapping],
    path: str | Path,
) -> Path:
    """A grid with one row per sample: image | ground truth | prediction (class colours over the image).

    `samples` are (sample_id, RGB uint8 image, truth mask, predicted mask); ignore pixels are shown
    in white in the truth column.
    """
    n = max(1, len(samples))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for row, (sid, image, truth, pred) in enumerate(samples):
        ignore = truth == 255
        truth_view = overlay(image, truth, classes)
        truth_view[ignore] = 255
        for col, (view, title) in enumerate(
            ((image, sid), (truth_view, "ground truth"), (overlay(image, pred, classes), "prediction"))
        ):
            ax = axes[row][col]
            ax.imshow(view)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    if not samples:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][1].text(0.5, 0.5, "no test samples", ha="center", va="center")
    fig.tight_layout()
    if samples:
        from agir.legend import add_class_legend

        add_class_legend(fig, classes, ignore=True)
    return _save(fig, Path(path))
