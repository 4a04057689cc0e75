"""Pre-label quality: inference masks scored against the database's own masks.

This is the number that says whether each round's model is getting better: round 1's
vegetation-index baseline versus round 2's trained model, on the records that have DB masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agir.logs import get_logger
from agir.masks import BACKGROUND, BINARY_CLASS, IGNORE, overlay, read_classes, read_mask
from agir.records import (
    class_for_record,
    image_id,
    is_missing,
    load_query_records,
    mask_path,
    record_id,
)
from agir.runs import read_json, read_json_or, read_jsonl, write_bytes, write_json

log = get_logger("evaluate")


def confusion_counts(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """(n x n) pixel confusion matrix over indices 0..n-1; truth IGNORE pixels are skipped."""
    valid = truth != IGNORE
    p = np.clip(pred[valid].astype(np.int64), 0, n - 1)
    t = truth[valid].astype(np.int64)
    t = np.where(t < n, t, 0)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def truth_name_map(records: Sequence[Mapping], cfg: Mapping) -> dict[int, str]:
    """DB mask value (category_class_id) -> class name under the configured class mode."""
    out: dict[int, str] = {}
    for r in records:
        cid = r.get("category_class_id")
        if not is_missing(cid):
            out.setdefault(int(cid), class_for_record(r, cfg))
    return out


def training_split_of_images(cfg: Mapping, run: Path | None = None) -> dict[str, str]:
    """image_id -> split of the dataset the pre-labelling model was trained on (empty for the baseline).

    A model's checkpoint sits in `{round}/model/best.pth`; that round's `dataset/metrics.json` says
    which split each source image went to, so pre-label quality can be reported on images the model
    never trained on. The checkpoint is the one inference recorded in `infer/metrics.json` (what
    `ckpt_path: previous` / `auto` resolved to), else the configured path.
    """
    used = (read_json_or(Path(run) / "infer" / "metrics.json", {}) or {}) if run is not None else {}
    if run is not None and used.get("backend") not in (None, "model"):
        return {}
    ckpt = (used.get("model") or {}).get("path") if isinstance(used.get("model"), Mapping) else None
    if not ckpt:
        ckpt = ((cfg.get("seg_inference") or {}).get("model") or {}).get("ckpt_path")
    if not ckpt or str(ckpt) in ("previous", "auto"):
        return {}
    metrics = Path(ckpt).resolve().parent.parent / "dataset" / "metrics.json"
    try:
        return {str(k): str(v) for k, v in (read_json(metrics).get("split_of_image") or {}).items()}
    except (OSError, ValueError):
        return {}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _in_run(run: Path, path: str | Path) -> Path:
    """Manifest paths are relative to the run folder."""
    p = Path(path)
    return p if p.is_absolute() else run / p


def _crop_box(line: Mapping) -> tuple[int, int, int, int] | None:
    for key in ("crop", "crop_box", "crop_xywh"):
        box = line.get(key)
        if box:
            x, y, w, h = (int(v) for v in box)
            return x, y, w, h
    return None


def evaluate_run(cfg: Mapping, run: Path, gallery_size: int = 6) -> tuple[dict, list[tuple]]:
    manifest = read_jsonl(run / "infer" / "manifest.jsonl", missing_ok=True)
    classes = read_classes(run / "infer" / "masks") if (run / "infer" / "masks" / "classes.json").exists() else []
    names = [c["name"] for c in sorted(classes, key=lambda c: c["index"])]
    index_of = {n: i + 1 for i, n in enumerate(names)}
    try:
        records = load_query_records(run)
    except Exception:  # images-folder source: nothing to compare against
        records = []
    by_id = {record_id(r, cfg): r for r in records}
    by_image: dict[str, list[Mapping]] = {}
    for r in records:
        by_image.setdefault(image_id(r, cfg), []).append(r)
    value_to_name = truth_name_map(records, cfg)
    split_of = training_split_of_images(cfg, run)

    n = len(names) + 1
    total = np.zeros((n, n), np.int64)
    per_image, gallery = [], []
    for line in manifest:
        if line.get("status") != "ok":
            continue
        recs = [by_id[i] for i in line.get("record_ids", []) if i in by_id] or by_image.get(str(line.get("image_id")), [])
        truth_file = next((mask_path(r, cfg) for r in recs if mask_path(r, cfg)), None)
        if truth_file is None or not Path(truth_file).exists():
            continue
        pred_path = _in_run(run, line.get("mask") or f"infer/masks/{line['id']}.png")
        pred = read_mask(pred_path)
        raw = read_mask(truth_file)
        box = _crop_box(line)
        if box:
            x, y, w, h = box
            raw = raw[y : y + h, x : x + w]
        if raw.shape != pred.shape:
            raw = cv2.resize(raw, (pred.shape[1], pred.shape[0]), interpolation=cv2.INTER_NEAREST)
        lut = np.full(256, IGNORE, np.uint8)
        lut[BACKGROUND] = BACKGROUND
        for value, name in value_to_name.items():
            if 0 < value < 255:
                lut[value] = index_of.get(name, IGNORE)
        truth = lut[raw]
        cm = confusion_counts(pred, truth, n)
        total += cm
        fg_p, fg_t = pred > 0, (truth > 0) & (truth != IGNORE)
        valid = truth != IGNORE
        union = np.logical_or(fg_p, fg_t)[valid].sum()
        binary = float(np.logical_and(fg_p, fg_t)[valid].sum() / union) if union else 1.0
        img_ious = iou_from_confusion(cm)[1:]
        present = [float(v) for v in img_ious if not np.isnan(v)]
        image_key = str(line.get("image_id", line["id"]))
        per_image.append({
            "id": line["id"],
            "image_id": image_key,
            "binary_iou": round(binary, 4),
            "class_iou": round(float(np.mean(present)), 4) if present else 1.0,
            # True/False when a trained model made the pre-label: was this image in its train split?
            "seen_in_training": (split_of.get(image_key) == "train") if split_of else None,
        })
        if len(gallery) < gallery_size:
            gallery.append((line["id"], line.get("image"), pred, truth))

    ious = iou_from_confusion(total)
    per_class = {names[i - 1]: (None if np.isnan(ious[i]) else round(float(ious[i]), 4)) for i in range(1, n)}
    scored = [v for v in per_class.values() if v is not None]
    model = read_json(run / "infer" / "metrics.json").get("model") if (run / "infer" / "metrics.json").exists() else None
    result: dict[str, Any] = {
        "round": str(cfg["project"]["subname"]),
        "model": model,
        "images_evaluated": len(per_image),
        "binary_iou_mean": round(float(np.mean([p["binary_iou"] for p in per_image])), 4) if per_image else None,
        "class_miou": round(float(np.mean(scored)), 4) if scored else None,
        "per_class_iou": per_class,
        "per_image": per_image,
    }
    if split_of:
        unseen = [p for p in per_image if p["seen_in_training"] is False]
        result["unseen_by_model"] = {
            "images": len(unseen),
            "binary_iou_mean": _mean([p["binary_iou"] for p in unseen]),
            "class_iou_mean": _mean([p["class_iou"] for p in unseen]),
        }
    if not per_image:
        result["reason"] = "no inference output has a database mask to compare with"
    return result, [(g[0], g[1], g[2], g[3], classes) for g in gallery]


def gallery_figure(items: Sequence[tuple], run: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agir.images import read_image

    rows = max(1, len(items))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, (rid, image, pred, truth, classes) in enumerate(items):
        img_path = _in_run(run, image or f"infer/images/{rid}.jpg")
        img = read_image(img_path)
        if img.shape[:2] != pred.shape:
            img = cv2.resize(img, (pred.shape[1], pred.shape[0]))
        axes[row, 0].imshow(img)
        axes[row, 0].set_title(str(rid), fontsize=8)
        axes[row, 1].imshow(overlay(img, pred, classes))
        axes[row, 1].set_title("pre-label", fontsize=8)
        axes[row, 2].imshow(overlay(img, np.where(truth == IGNORE, 0, truth).astype(np.uint8), classes))
        axes[row, 2].set_title("database mask", fontsize=8)
    if not items:
        axes[0, 1].text(0.5, 0.5, "no pre-label has a database mask", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if items:
        from agir.legend import add_class_legend

        add_class_legend(fig, items[0][4])
    return fig


def run_evaluate_stage(cfg: Mapping, run: Path) -> dict:
    import io

    result, gallery = evaluate_run(cfg, run)
    model = result["model"]
    label = f"{model.get('arch')}/{model.get('encoder')}" if isinstance(model, dict) else (model or "vegetation index")
    title = (
        f"{result['round']}: pre-labels ({label}) vs database masks — "
        f"binary IoU {result['binary_iou_mean']}, class mIoU {result['class_miou']}"
    )
    fig = gallery_figure(gallery, run, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    write_bytes(run / "infer" / "quality_gallery.png", buf.getvalue())
    write_json(run / "infer" / "quality.json", result)
    log.info(
        "pre-label quality on %d image(s): binary IoU %s, class mIoU %s",
        result["images_evaluated"], result["binary_iou_mean"], result["class_miou"],
    )
    return result


__all__ = ["run_evaluate_stage", "evaluate_run", "confusion_counts", "iou_from_confusion", "BINARY_CLASS"]
