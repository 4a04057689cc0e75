"""Pictures for `snakemake --report`: one round's query, pre-label quality across rounds, CVAT changes,
dataset statistics, training curves and per-class test IoU."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agir.logs import get_logger
from agir.runs import project_dir, read_json, write_bytes, write_json

log = get_logger("report")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    write_bytes(path, buf.getvalue())


def _barh(ax, counts: Mapping[str, float], title: str, fmt: str = "{:g}") -> None:
    items = sorted(counts.items(), key=lambda kv: kv[1])[-25:]
    names = [str(k) for k, _ in items]
    vals = [v for _, v in items]
    ax.barh(names, vals, color="#4c9a5a")
    for y, v in enumerate(vals):
        ax.text(v, y, " " + fmt.format(v), va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def rounds_with(cfg: Mapping, rel: str) -> list[tuple[Path, dict]]:
    """(round folder, parsed JSON) for every round of the project that has the file `rel`."""
    root = project_dir(cfg)
    rounds = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [(rnd, read_json(rnd / rel)) for rnd in rounds if (rnd / rel).exists()]


def query_summary(run: Path, out: Path) -> dict:
    plt = _plt()
    records = read_json(run / "query" / "query.json") if (run / "query" / "query.json").exists() else []
    species = Counter(str(r.get("category_common_name") or r.get("common_name") or "?") for r in records)
    bins = Counter(str(r.get("estimated_area_bin") or r.get("size_class") or "?") for r in records)
    fig, axes = plt.subplots(1, 2, figsize=(10, max(3, 0.22 * len(species) + 1)))
    _barh(axes[0], species, f"records per species ({len(records)} in all)")
    _barh(axes[1], bins, "records per area bin")
    _save(fig, out)
    return {"records": len(records), "species": dict(species), "area_bins": dict(bins)}


def quality_across_rounds(cfg: Mapping, out: Path) -> list[dict]:
    """Pre-label quality of every round of the project that has infer/quality.json."""
    plt = _plt()
    rows = []
    for rnd, data in rounds_with(cfg, "infer/quality.json"):
        model = data.get("model")
        model = f"{model.get('arch')}/{model.get('encoder')}" if isinstance(model, dict) else (model or "vegetation index")
        rows.append({"round": rnd.name, "model": model, "binary_iou": data.get("binary_iou_mean"),
                     "class_miou": data.get("class_miou"), "images": data.get("images_evaluated")})
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows) + 2), 3.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["binary_iou"] or 0 for r in rows], 0.4, label="plant vs background IoU")
    ax.bar([x + 0.2 for x in xs], [r["class_miou"] or 0 for r in rows], 0.4, label="per-class mIoU")
    for x, r in zip(xs, rows):
        for dx, v in ((-0.2, r["binary_iou"]), (0.2, r["class_miou"])):
            if v is not None:
                ax.text(x + dx, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{r['round']}\n{r['model'] or ''}" for r in rows], fontsize=7)
    ax.set_ylim(0, 1.08)
    ax.set_title("pre-label quality against the database masks, per round", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out)
    return rows


def cvat_changes(run: Path, out: Path, cfg: Mapping) -> dict:
    """Per round: frames and shapes sent to CVAT, and the fraction of pixels people changed."""
    plt = _plt()
    rows = []
    for rnd, data in rounds_with(cfg, "cvat/metrics.json"):
        down, up = data.get("download") or {}, data.get("upload") or {}
        rows.append({"round": rnd.name, "changed_pixel_fraction": down.get("changed_fraction_mean"),
                     "changed_per_label": down.get("changed_fraction_per_label") or {},
                     "frames": down.get("frames", up.get("frames")), "shapes_uploaded": up.get("shapes")})
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(rows) + 2), 3))
    xs = list(range(len(rows)))
    ax.bar(xs, [r["changed_pixel_fraction"] or 0 for r in rows], color="#c0504d")
    for x, r in zip(xs, rows):
        v = r["changed_pixel_fraction"] or 0
        ax.text(x, v, f"{v:.3f}\n{r['frames']} frames, {r['shapes_uploaded']} shapes", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [r["round"] for r in rows], fontsize=8)
    ax.set_ylabel("changed pixel fraction")
    ax.set_title("how much annotators changed the pre-labels, per round", fontsize=9)
    _save(fig, out)
    return {"rounds": rows}


def dataset_stats(run: Path, out: Path) -> dict:
    import pandas as pd

    plt = _plt()
    index = pd.read_csv(run / "dataset" / "index.csv") if (run / "dataset" / "index.csv").exists() else pd.DataFrame()
    stats = read_json(run / "dataset" / "stats.json") if (run / "dataset" / "stats.json").exists() else {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    split_counts = index["split"].value_counts().to_dict() if "split" in index else {}
    _barh(axes[0], split_counts, f"samples per split ({len(index)} tiles)")
    freqs = stats.get("class_pixel_frequencies") or {}
    _barh(axes[1], freqs, "class pixel frequency (train)", fmt="{:.3f}")
    _save(fig, out)
    return {"samples": int(len(index)), "splits": split_counts, "class_pixel_frequencies": freqs}


def training_pictures(run: Path, report_dir: Path) -> dict:
    """Per-class test IoU chart, plus the training curves and prediction grid the train stage drew."""
    plt = _plt()
    metrics = read_json(run / "model" / "metrics.json") if (run / "model" / "metrics.json").exists() else {}
    test = metrics.get("test") or {}
    per_class = test.get("per_class_iou") or {}
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(per_class) + 1)))
    _barh(ax, {k: float(v) for k, v in per_class.items() if v is not None}, "test IoU per class", fmt="{:.3f}")
    _save(fig, report_dir / "test_iou.png")
    copied = {}
    plots = run / "model" / "plots"
    for name, pattern in (("training_curves.png", ("curve", "loss", "miou")), ("test_predictions.png", ("pred", "grid"))):
        src = next((p for p in sorted(plots.glob("*.png")) if any(k in p.name.lower() for k in pattern)), None)
        if src:
            shutil.copyfile(src, report_dir / name)
        else:  # keep the declared output even when the train stage drew no such picture
            fig, ax = plt.subplots(figsize=(4, 1))
            ax.axis("off")
            ax.text(0.5, 0.5, f"no {name} in model/plots", ha="center")
            _save(fig, report_dir / name)
        copied[name] = str(src) if src else None
    return {"test_per_class_iou": per_class, "test_miou": test.get("mIoU"), **copied}


def run_report_stage(cfg: Mapping, run: Path, stages: list[str]) -> dict:
    report_dir = run / "report"
    summary: dict[str, Any] = {"round": str(cfg["project"]["subname"]), "stages": stages}
    summary["query"] = query_summary(run, report_dir / "query_summary.png")
    if "infer" in stages:
        summary["prelabel_quality"] = quality_across_rounds(cfg, report_dir / "prelabel_quality.png")
    if "download" in stages:
        summary["cvat"] = cvat_changes(run, report_dir / "cvat_changes.png", cfg)
    if "preprocess" in stages:
        summary["dataset"] = dataset_stats(run, report_dir / "dataset_stats.png")
    if "train" in stages:
        summary["train"] = training_pictures(run, report_dir)
    write_json(report_dir / "summary.json", summary)
    log.info("report pictures in %s", report_dir)
    return summary
