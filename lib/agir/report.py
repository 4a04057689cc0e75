"""Pictures for `snakemake --report`: the class set of each round (new classes marked), one round's query,
pre-label quality across rounds, the chosen pre-labeler, CVAT changes across rounds, dataset statistics,
training curves and per-class test IoU.

Every round writes the same files (REPORT_FILES), so the report rule can declare a fixed set of outputs:
a stage that is not part of the round gets a small picture saying so.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.figures import pyplot, save_png
from agir.logs import get_logger
from agir.runs import project_dir, read_json_or, write_json

log = get_logger("report")

# stage -> the pictures it feeds (inside {run}/report/); summary.json is written too
REPORT_PICTURES: dict[str, tuple[str, ...]] = {
    "query": ("query_summary.png",),
    "infer": ("prelabel_quality.png", "prelabeler.png"),
    "download": ("cvat_changes.png",),
    "preprocess": ("dataset_stats.png",),
    "train": ("training_curves.png", "test_iou.png", "test_predictions.png"),
}
# drawn for every round, whatever its stages: the class set of each round up to this one
CLASS_SETS_PICTURE = "class_sets.png"
REPORT_FILES: tuple[str, ...] = ("summary.json", CLASS_SETS_PICTURE) + tuple(
    f for files in REPORT_PICTURES.values() for f in files)


_plt = pyplot
_save = save_png


def _barh(ax, counts: Mapping[str, float], title: str, fmt: str = "{:g}") -> None:
    items = sorted(counts.items(), key=lambda kv: kv[1])[-25:]
    names = [str(k) for k, _ in items]
    vals = [v for _, v in items]
    ax.barh(names, vals, color="#4c9a5a")
    for y, v in enumerate(vals):
        ax.text(v, y, " " + fmt.format(v), va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def placeholder(path: Path, text: str) -> None:
    """A small picture carrying one sentence (a declared output whose content does not apply)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.9))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    _save(fig, path)


def absent_reason(stage: str, stages: Sequence[str], cfg: Mapping) -> str:
    """Why `stage` is not part of this round, naming the setting that decides it."""
    from agir.workflow import STAGE_ORDER

    project = cfg.get("project") or {}
    until = str(project.get("until", "train"))
    label_source = (cfg.get("preprocess") or {}).get("label_source")
    if stage in STAGE_ORDER and until in STAGE_ORDER and STAGE_ORDER.index(stage) > STAGE_ORDER.index(until):
        why = f"project.until is {until}"
    elif stage in ("upload", "download"):
        why = f"preprocess.label_source is {label_source or 'not cvat'}"
    else:
        why = "project.until / preprocess.label_source"
    return f"{stage} is not part of this round ({why})"


def rounds_with(cfg: Mapping, rel: str) -> list[tuple[Path, dict]]:
    """(round folder, parsed JSON) for every round of the project that has a readable file `rel`."""
    root = project_dir(cfg)
    rounds = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    out = []
    for rnd in rounds:
        data = read_json_or(rnd / rel)
        if isinstance(data, dict):
            out.append((rnd, data))
    return out


def class_sets(run: Path, out: Path) -> list[dict]:
    """Each round of the project up to this one: its classes (index order) and which are new (classes.json).

    A round without classes.json (made before class sets existed, or not past its query) shows "—".
    """
    import textwrap

    from agir.status import class_set_summary

    run = Path(run)
    root = run.parent
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    rows = []
    for name in [n for n in names if n <= run.name] or [run.name]:
        info = class_set_summary(root / name)
        rows.append({"round": name, "classes": None if info is None else info.get("classes"),
                     "new": None if info is None else info.get("new"), "error": (info or {}).get("error")})

    def cell(values: list[str] | None, width: int, error: str | None = None) -> str:
        if error:
            return textwrap.fill(f"unreadable: {error}", width)
        if values is None:
            return "\u2014"
        return textwrap.fill(f"{len(values)}: " + ", ".join(values), width) if values else "none"

    # wrap widths in characters match the column widths below at font size 7
    table = [[r["round"], cell(r["classes"], 62, r["error"]), "" if r["error"] else cell(r["new"], 32)] for r in rows]
    heights = [max(c.count("\n") + 1 for c in row) for row in table]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.22 * (sum(heights) + 1)))
    ax.axis("off")
    tab = ax.table(cellText=table, colLabels=["round", "classes (mask index order)", "new in this round"],
                   colWidths=[0.14, 0.56, 0.30], cellLoc="left", loc="upper center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    unit = 1.0 / (sum(heights) + 1)
    for (r, _c), c in tab.get_celld().items():
        c.set_height(unit * (heights[r - 1] if r > 0 else 1))
        if r > 0 and table[r - 1][0] == run.name:
            c.set_text_props(fontweight="bold")  # the round this report is about
    ax.set_title("class set per round (old classes keep their index; new ones are appended)", fontsize=9)
    _save(fig, out)
    return rows


def query_summary(run: Path, out: Path) -> dict:
    plt = _plt()
    records = read_json_or(run / "query" / "query.json") or []
    species = Counter(str(r.get("category_common_name") or r.get("common_name") or "?") for r in records)
    bins = Counter(str(r.get("estimated_area_bin") or r.get("size_class") or "?") for r in records)
    fig, axes = plt.subplots(1, 2, figsize=(10, max(3, 0.22 * len(species) + 1)))
    _barh(axes[0], species, f"records per species ({len(records)} in all)")
    _barh(axes[1], bins, "records per area bin")
    _save(fig, out)
    return {"records": len(records), "species": dict(species), "area_bins": dict(bins)}


def _model_label(model: Any) -> str:
    if isinstance(model, dict):
        return f"{model.get('arch')}/{model.get('encoder')}"
    return str(model or "vegetation index")


def quality_across_rounds(cfg: Mapping, out: Path) -> list[dict]:
    """Pre-label quality of every round of the project that has infer/quality.json."""
    plt = _plt()
    rows = []
    for rnd, data in rounds_with(cfg, "infer/quality.json"):
        rows.append({"round": rnd.name, "model": _model_label(data.get("model")),
                     "binary_iou": data.get("binary_iou_mean"), "class_miou": data.get("class_miou"),
                     "images": data.get("images_evaluated")})
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows) + 2), 3.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["binary_iou"] or 0 for r in rows], 0.4, label="plant vs background IoU")
    ax.bar([x + 0.2 for x in xs], [r["class_miou"] or 0 for r in rows], 0.4, label="per-class mIoU")
    for x, r in zip(xs, rows):
        for dx, v in ((-0.2, r["binary_iou"]), (0.2, r["class_miou"])):
            if v is not None:
                ax.text(x + dx, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{r['round']}\n{r['model']}" for r in rows], fontsize=7)
    ax.set_ylim(0, 1.08)
    ax.set_title("pre-label quality against the database masks, per round", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out)
    return rows


def prelabeler_picture(run: Path, out: Path) -> dict | None:
    """The candidates' plant IoU (and mIoU) from infer/prelabeler.json, the chosen one highlighted."""
    info = read_json_or(run / "infer" / "prelabeler.json")
    if not isinstance(info, dict):
        placeholder(out, "no pre-labeler choice in this round (seg_inference.model.ckpt_path is not auto)")
        return None
    plt = _plt()
    cands = [c for c in info.get("candidates") or [] if isinstance(c, Mapping)]
    chosen = info.get("chosen_name") or info.get("chosen")
    names = [str(c.get("name")) for c in cands]
    is_chosen = [c.get("name") == chosen or (c.get("path") is not None and c.get("path") == info.get("chosen"))
                 for c in cands]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(cands) + 2), 3.2))
    xs = list(range(len(cands)))
    plant = [float(c.get("plant_iou") or 0) for c in cands]
    miou = [float(c.get("miou") or 0) for c in cands]
    ax.bar([x - 0.2 for x in xs], plant, 0.4, color=["#2e7d32" if h else "#9e9e9e" for h in is_chosen],
           label="plant IoU (decides)")
    ax.bar([x + 0.2 for x in xs], miou, 0.4, color=["#81c784" if h else "#d0d0d0" for h in is_chosen],
           label="per-class mIoU")
    for x, c, h in zip(xs, cands, is_chosen):
        for dx, key in ((-0.2, "plant_iou"), (0.2, "miou")):
            if c.get(key) is not None:
                ax.text(x + dx, float(c[key]), f"{float(c[key]):.3f}", ha="center", va="bottom", fontsize=7)
        ax.text(x, -0.12, f"{c.get('images', '?')} images" + ("\nCHOSEN" if h else ""), ha="center", va="top",
                fontsize=7, transform=ax.get_xaxis_transform(), fontweight="bold" if h else "normal")
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylim(0, 1.1)
    margin = info.get("margin")
    ax.set_title(f"pre-labeler: {chosen}" + (f", plant IoU {float(margin):+.3f} over the runner-up"
                                             if margin is not None else ""), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out)
    return {"chosen": chosen, "margin": margin, "reason": info.get("reason"),
            "candidates": [{k: c.get(k) for k in ("name", "plant_iou", "miou", "images")} for c in cands]}


def cvat_changes(run: Path, out: Path, cfg: Mapping) -> dict:
    """The fraction of pixels annotators changed, per round of the project (this round highlighted)."""
    plt = _plt()
    rows = []
    for rnd, data in rounds_with(cfg, "cvat/metrics.json"):
        down, up = data.get("download") or {}, data.get("upload") or {}
        if down.get("changed_fraction_mean") is None:
            continue  # uploaded but not downloaded yet: nobody's corrections to count
        rows.append({"round": rnd.name, "changed_pixel_fraction": float(down["changed_fraction_mean"]),
                     "changed_per_label": down.get("changed_fraction_per_label") or {},
                     "frames": down.get("frames", up.get("frames")), "shapes_uploaded": up.get("shapes")})
    if not rows:
        placeholder(out, "no round of this project has downloaded CVAT annotations yet")
        return {"rounds": rows}
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(rows) + 2), 3.2))
    xs = list(range(len(rows)))
    vals = [r["changed_pixel_fraction"] for r in rows]
    ax.bar(xs, vals, color=["#c0504d" if r["round"] == run.name else "#e6a9a7" for r in rows])
    if len(rows) > 1:
        ax.plot(xs, vals, color="#7f2a28", marker="o", linewidth=1)
    for x, r in zip(xs, rows):
        frames = f"\n{r['frames']} frames" if r["frames"] is not None else ""
        ax.text(x, r["changed_pixel_fraction"], f"{r['changed_pixel_fraction']:.3f}{frames}", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(xs, [r["round"] for r in rows], fontsize=8)
    ax.set_ylim(0, max(vals) * 1.3 + 0.01)
    ax.set_ylabel("changed pixel fraction")
    ax.set_title("how much annotators changed the pre-labels, per round (falls as the model improves)", fontsize=9)
    _save(fig, out)
    return {"rounds": rows}


def dataset_stats(run: Path, out: Path) -> dict:
    import pandas as pd

    plt = _plt()
    index = pd.read_csv(run / "dataset" / "index.csv") if (run / "dataset" / "index.csv").exists() else pd.DataFrame()
    stats = read_json_or(run / "dataset" / "stats.json") or {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    split_counts = index["split"].value_counts().to_dict() if "split" in index else {}
    _barh(axes[0], split_counts, f"samples per split ({len(index)} tiles)")
    freqs = stats.get("class_pixel_frequencies") or {}
    _barh(axes[1], freqs, "class pixel frequency (train)", fmt="{:.3f}")
    _save(fig, out)
    return {"samples": int(len(index)), "splits": split_counts, "class_pixel_frequencies": freqs}


def _side_by_side(pictures: Sequence[Path], out: Path) -> None:
    """Several PNGs next to each other in one picture."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(pictures), figsize=(6 * len(pictures), 4), squeeze=False)
    for ax, pic in zip(axes[0], pictures):
        ax.imshow(plt.imread(str(pic)))
        ax.axis("off")
    _save(fig, out)


def training_pictures(run: Path, report_dir: Path) -> dict:
    """Per-class test IoU chart, plus the training curves and prediction grid the train stage drew."""
    plt = _plt()
    metrics = read_json_or(run / "model" / "metrics.json") or {}
    test = metrics.get("test") or {}
    per_class = test.get("per_class_iou") or {}
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(per_class) + 1)))
    _barh(ax, {k: float(v) for k, v in per_class.items() if v is not None}, "test IoU per class", fmt="{:.3f}")
    _save(fig, report_dir / "test_iou.png")
    plots = run / "model" / "plots"
    found = sorted(plots.glob("*.png")) if plots.is_dir() else []
    curves = [p for p in found if any(k in p.name.lower() for k in ("curve", "loss", "miou"))]
    preds = next((p for p in found if any(k in p.name.lower() for k in ("pred", "grid"))), None)
    if curves:
        _side_by_side(curves, report_dir / "training_curves.png")
    else:  # keep the declared output even when the train stage drew no curves
        placeholder(report_dir / "training_curves.png", "no training curves in model/plots")
    if preds:
        shutil.copyfile(preds, report_dir / "test_predictions.png")
    else:
        placeholder(report_dir / "test_predictions.png", "no test prediction grid in model/plots")
    return {"test_per_class_iou": per_class, "test_miou": test.get("mIoU"),
            "training_curves.png": [str(p) for p in curves] or None,
            "test_predictions.png": str(preds) if preds else None}


def run_report_stage(cfg: Mapping, run: Path, stages: Sequence[str]) -> dict:
    """Write every file of REPORT_FILES under {run}/report/; pictures of stages outside the round say so."""
    report_dir = Path(run) / "report"
    stages = list(stages)
    summary: dict[str, Any] = {"round": str(cfg["project"]["subname"]), "stages": stages, "not_in_round": {}}

    def skip(stage: str) -> None:
        text = absent_reason(stage, stages, cfg)
        summary["not_in_round"][stage] = text
        for name in REPORT_PICTURES[stage]:
            placeholder(report_dir / name, text)

    summary["class_sets"] = class_sets(run, report_dir / CLASS_SETS_PICTURE)
    this = summary["class_sets"][-1] if summary["class_sets"] and summary["class_sets"][-1]["round"] == Path(
        run).name else None
    summary["classes"] = {"classes": this["classes"], "new": this["new"]} if this else None
    summary["query"] = query_summary(run, report_dir / "query_summary.png")
    if "infer" in stages:
        summary["prelabel_quality"] = quality_across_rounds(cfg, report_dir / "prelabel_quality.png")
        summary["prelabeler"] = prelabeler_picture(run, report_dir / "prelabeler.png")
    else:
        skip("infer")
    if "download" in stages:
        summary["cvat"] = cvat_changes(run, report_dir / "cvat_changes.png", cfg)
    else:
        skip("download")
    if "preprocess" in stages:
        summary["dataset"] = dataset_stats(run, report_dir / "dataset_stats.png")
    else:
        skip("preprocess")
    if "train" in stages:
        summary["train"] = training_pictures(run, report_dir)
        summary["train"]["init"] = (read_json_or(Path(run) / "model" / "metrics.json") or {}).get("init")
    else:
        skip("train")
    write_json(report_dir / "summary.json", summary)
    log.info("report pictures in %s", report_dir)
    return summary
