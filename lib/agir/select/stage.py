"""The select stage: rank the inferred candidate pool and pick the N images that go to CVAT.

Inputs: `{run}/infer/manifest.jsonl` (or `{run}/select/pool/manifest.jsonl` when `select.score_max_side`
is set: the pool scored at reduced resolution; same line format), whose `ok` lines carry per-image
`"uncertainty"` when a model ran, and `{run}/query/query.json` for record metadata (joined through each
line's `record_ids`: full_image items hold every record of the image, cutout items one).

Earlier rounds of the project (sibling run folders sorting before this one) are read to exclude what
was annotated there: frames of their `cvat/download.json` and `cvat/annotations/masks/*.png`, and with
`preprocess.label_source: db_masks` the ids of their active `select/selection.json`. A candidate is
excluded when its id, one of its records, or its image (when a whole image was annotated) matches.

Outputs (all atomic): `select/selection.json`, `select/scores.parquet` (every candidate with its
statistics, metadata, eligibility, score and pick rank), `select/metrics.json`,
`select/score_distribution.png` and `select/gallery.png`.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agir import records as recs
from agir.errors import AgirError
from agir.figures import pyplot, save_png
from agir.logs import get_logger
from agir.names import file_stem
from agir.runs import atomic_write, read_json, read_json_or, read_jsonl, write_json
from agir.select.strategies import (
    DEFAULT_COVER_BY,
    DEFAULT_GROUP_BY,
    DEFAULT_SCORE,
    DEFAULT_STRATIFY_BY,
    check_strategy,
    dominant_class,
    select,
)
from agir.select.uncertainty import flatten_uncertainty

log = get_logger("select")

DEFAULTS: dict[str, Any] = {
    "strategy": "all",
    "n": 20,
    "seed": 0,
    "score": DEFAULT_SCORE,
    "stratify_by": DEFAULT_STRATIFY_BY,
    "fallback": "stratified",
    "include_annotated": False,
    "score_max_side": None,
    "uncertain_margin": 0.2,
    "area_bins": 3,
    "gallery": 4,
    "cover_by": list(DEFAULT_COVER_BY),
    "temperature": 1.0,
    "power_base": "score",
    "cost": "errors",
    "cost_overhead": 0.02,
    "cost_weight": 1.0,
    "rarity_power": 0.5,
    "class_freq": "labelled",
    "group_cap": None,
    "group_by": DEFAULT_GROUP_BY,
}
# strategies whose picks are not "everything above a score": no cut-off line in the histogram
NO_CUTOFF = ("diverse", "kcenter", "power", "class_balanced", "stratified", "veg_random", "random", "all")
# manifest keys that are not record metadata (a record column of the same name is prefixed meta_)
RESERVED = {"id", "image_id", "n_records", "record_ids", "image", "mask", "score", "rank", "selected",
            "excluded", "excluded_reason", "dominant_class"}


def select_settings(cfg: Mapping) -> dict:
    """cfg["select"] over the defaults (a config without the section behaves as strategy all)."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (cfg.get("select") or {}).items()})
    check_strategy(out["strategy"])
    return out


def labelled_class_freq(run: Path) -> tuple[dict[str, int] | None, str | None]:
    """Class pixel counts of the newest earlier round's training set (dataset/stats.json), without background."""
    for rnd in reversed(earlier_rounds(run)):
        stats = read_json_or(rnd / "dataset" / "stats.json", None)
        counts = stats.get("class_pixel_counts") if isinstance(stats, Mapping) else None
        if isinstance(counts, Mapping):
            return {str(k): int(v) for k, v in counts.items() if k != "background"}, f"{rnd.name}/dataset/stats.json"
    return None, None


def class_freq_option(value: Any, run: Path) -> tuple[dict | None, str]:
    """select.class_freq -> (mapping or None = the pool's predicted areas, where it came from)."""
    if isinstance(value, Mapping):
        return dict(value), "select.class_freq"
    if value in (None, "pool"):
        return None, "pool predicted area"
    if value == "labelled":
        freq, src = labelled_class_freq(run)
        if freq is None:
            log.info("select: class_freq labelled: no earlier round has dataset/stats.json; using the pool's "
                     "predicted areas")
            return None, "pool predicted area (no labelled set yet)"
        return freq, src
    raise AgirError(f"select.class_freq={value!r}: use labelled, pool or a mapping class name -> count")


def candidate_manifest(run: Path, settings: Mapping) -> Path:
    rel = "select/pool/manifest.jsonl" if settings.get("score_max_side") else "infer/manifest.jsonl"
    path = Path(run) / rel
    if not path.is_file():
        what = "run infer-seg with purpose=score (select.score_max_side is set)" if "pool" in rel else \
            "run infer-seg first"
        raise AgirError(f"select: {path} not found; {what}")
    return path


# ---------------------------------------------------------------------------------- metadata
def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _metadata(records: Sequence[Mapping]) -> dict:
    """One value per scalar column for an item's records: the most common (ties: smallest as text)."""
    out: dict[str, Any] = {}
    if not records:
        return out
    keys = dict.fromkeys(k for r in records for k in r)
    for k in keys:
        vals = [r.get(k) for r in records if _scalar(r.get(k)) and not recs.is_missing(r.get(k))]
        if not vals:
            continue
        counts = Counter(vals)
        top = max(counts.values())
        out[k] = sorted((v for v, c in counts.items() if c == top), key=str)[0]
    return out


def candidates_table(lines: Sequence[Mapping], records: Sequence[Mapping] | None, cfg: Mapping) -> pd.DataFrame:
    """One row per ok manifest line: id, image_id, n_records, uncertainty columns, record metadata."""
    by_id: dict[str, Mapping] = {}
    for rec in records or []:
        try:
            by_id[recs.record_id(rec, cfg)] = rec
        except AgirError:
            continue
    rows = []
    for line in lines:
        rids = [str(r) for r in line.get("record_ids") or []]
        row: dict[str, Any] = {"id": str(line["id"]), "image_id": None if line.get("image_id") is None
                               else str(line["image_id"]), "n_records": len(rids)}
        unc = line.get("uncertainty")
        if isinstance(unc, Mapping):
            row.update(flatten_uncertainty(unc))
        for k, v in _metadata([by_id[r] for r in rids if r in by_id]).items():
            key = f"meta_{k}" if k in RESERVED or k in row else k
            row[key] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({"id": pd.Series(dtype=str), "image_id": pd.Series(dtype=object)})
    return df


# ------------------------------------------------------------------------------ earlier rounds
def earlier_rounds(run: Path) -> list[Path]:
    project = Path(run).parent
    if not project.is_dir():
        return []
    return sorted(p for p in project.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name < Path(run).name)


def _item_index(rnd: Path) -> dict[str, Mapping]:
    out: dict[str, Mapping] = {}
    for rel in ("select/pool/manifest.jsonl", "infer/manifest.jsonl"):  # infer last: it wins
        for line in read_jsonl(rnd / rel, missing_ok=True):
            if "id" in line:
                out[str(line["id"])] = line
    return out


def annotated_in_round(rnd: Path, label_source: str) -> set[str]:
    """Item ids annotated in one round: CVAT download frames + decoded masks (+ active selections for db_masks)."""
    ids: set[str] = set()
    dl = read_json_or(rnd / "cvat" / "download.json", None)
    if isinstance(dl, Mapping):
        for task in (dl.get("tasks") or {}).values():
            for f in (task or {}).get("frames") or []:
                if f.get("record_id") is not None:
                    ids.add(str(f["record_id"]))
    mask_dir = rnd / "cvat" / "annotations" / "masks"
    if mask_dir.is_dir():
        ids.update(p.stem for p in mask_dir.glob("*.png"))
    if label_source == "db_masks":
        sel = read_json_or(rnd / "select" / "selection.json", None)
        if isinstance(sel, Mapping) and sel.get("strategy", "all") != "all":
            ids.update(str(i) for i in sel.get("selected") or [])
    return ids


def annotated_keys(run: Path, label_source: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(item ids, record ids, whole-image ids) annotated in earlier rounds, each -> the round's name."""
    items: dict[str, str] = {}
    records: dict[str, str] = {}
    images: dict[str, str] = {}
    for rnd in earlier_rounds(run):
        ids = annotated_in_round(rnd, label_source)
        if not ids:
            continue
        index = _item_index(rnd)
        by_stem = {file_stem(k): v for k, v in index.items()}  # masks are named by file stem
        for i in ids:
            items.setdefault(i, rnd.name)
            line = index.get(i) or by_stem.get(i)
            if not line:
                continue
            items.setdefault(str(line["id"]), rnd.name)
            for r in line.get("record_ids") or []:
                records.setdefault(str(r), rnd.name)
            img = line.get("image_id")
            # a full-image item is named after its image: then the whole image was annotated
            if img is not None and str(line["id"]) == file_stem(str(img)):
                images.setdefault(str(img), rnd.name)
    return items, records, images


def _exclusions(lines: Sequence[Mapping], run: Path, label_source: str) -> dict[str, str]:
    """Candidate id -> reason, for candidates annotated in an earlier round."""
    items, records, images = annotated_keys(run, label_source)
    if not (items or records or images):
        return {}
    out = {}
    for line in lines:
        cid = str(line["id"])
        if cid in items:
            out[cid] = f"annotated in round {items[cid]}"
            continue
        hit = next((str(r) for r in line.get("record_ids") or [] if str(r) in records), None)
        if hit is not None:
            out[cid] = f"record {hit} annotated in round {records[hit]}"
            continue
        img = line.get("image_id")
        if img is not None and str(img) in images:
            out[cid] = f"image {img} annotated in round {images[str(img)]}"
    return out


# -------------------------------------------------------------------------------------- stage
def run_select_stage(cfg: Mapping, run: str | os.PathLike) -> dict:
    """Select N candidates of the round's pool; writes select/ outputs and returns the metrics."""
    started = time.perf_counter()
    run = Path(run)
    st = select_settings(cfg)
    src = candidate_manifest(run, st)
    lines_all = read_jsonl(src)
    # one candidate per id (the last line wins, as in a manifest rewritten after a resume)
    lines = list({str(ln["id"]): ln for ln in lines_all if ln.get("status") == "ok" and "id" in ln}.values())
    qpath = run / "query" / "query.json"
    records = recs.load_query_records(run) if qpath.is_file() else None
    df = candidates_table(lines, records, cfg)

    label_source = (cfg.get("preprocess") or {}).get("label_source", "db_masks")
    excluded = {} if st["include_annotated"] else _exclusions(lines, run, label_source)
    df["excluded"] = df["id"].isin(excluded)
    df["excluded_reason"] = df["id"].map(excluded)
    if excluded:
        log.info("select: %d of %d candidates were annotated in earlier rounds and are left out",
                 len(excluded), len(df))

    extra: dict[str, Any] = {}
    freq_source = None
    if st["strategy"] == "class_balanced":
        extra["class_freq"], freq_source = class_freq_option(st["class_freq"], run)
    sel = select(
        df.drop(columns=["excluded", "excluded_reason"]),
        st["strategy"],
        int(st["n"]),
        int(st["seed"]),
        fallback=st["fallback"],
        exclude=excluded,
        score=st["score"],
        stratify_by=st["stratify_by"],
        area_bins_n=int(st["area_bins"]),
        cover_by=st["cover_by"],
        temperature=float(st["temperature"]),
        power_base=st["power_base"],
        cost=st["cost"],
        cost_overhead=float(st["cost_overhead"]),
        cost_weight=float(st["cost_weight"]),
        rarity_power=float(st["rarity_power"]),
        group_cap=None if st["group_cap"] is None else int(st["group_cap"]),
        group_by=st["group_by"],
        **extra,
    )
    rank = {cid: i for i, cid in enumerate(sel.ids)}
    df["score"] = df["id"].map(sel.scores).astype(float)
    df["selected"] = df["id"].isin(rank)
    df["rank"] = df["id"].map(rank).astype("Int64")
    df["dominant_class"] = dominant_class(df) if len(df) else pd.Series(dtype=object)

    by_line = {str(ln["id"]): ln for ln in lines}
    sel_records = list(dict.fromkeys(str(r) for i in sel.ids for r in by_line[i].get("record_ids") or []))
    sel_images = list(dict.fromkeys(str(by_line[i]["image_id"]) for i in sel.ids
                                    if by_line[i].get("image_id") is not None))
    out = run / "select"
    selection = {
        "strategy": st["strategy"],
        "strategy_used": sel.strategy,
        "n": int(st["n"]),
        "seed": int(st["seed"]),
        "selected": sel.ids,
        "selected_records": sel_records,
        "selected_images": sel_images,
        "scores": {i: _finite(sel.scores.get(i)) for i in sel.ids},
        "score_column": sel.score_column,
        "pool_size": len(df),
        "excluded": {"count": len(excluded), "ids": sorted(excluded)},
        "fallback": sel.fallback,
        "source": str(src.relative_to(run)),
        "score_max_side": st["score_max_side"],
        "group_cap": st["group_cap"],
    }
    if freq_source is not None:
        selection["class_freq_source"] = freq_source
    write_parquet(out / "scores.parquet", df)
    write_json(out / "selection.json", selection)

    eligible = df[~df["excluded"]]
    chosen = df[df["selected"]]
    metrics = {
        "stage": "select",
        "strategy": st["strategy"],
        "strategy_used": sel.strategy,
        "fallback": sel.fallback,
        "score_column": sel.score_column,
        "source": selection["source"],
        "manifest_lines": len(lines_all),
        "failed_lines": sum(1 for ln in lines_all if ln.get("status") != "ok"),
        "pool_size": len(df),
        "excluded": len(excluded),
        "eligible": len(eligible),
        "selected": len(sel.ids),
        "model_statistics": bool(sel.fallback is None and "entropy_mean" in df.columns),
        "score_mean_pool": _mean(eligible["score"]),
        "score_mean_selected": _mean(chosen["score"]),
        "selected_dominant_class": {str(k): int(v) for k, v in chosen["dominant_class"].value_counts().items()},
        "pool_dominant_class": {str(k): int(v) for k, v in eligible["dominant_class"].value_counts().items()},
    }
    gcol = st["group_by"]
    if gcol in df.columns and len(chosen):  # near-duplicates in the batch (select.group_cap bounds them)
        per_group = chosen[gcol].dropna().astype(str).value_counts()
        metrics["selected_groups"] = int(len(per_group))
        metrics["max_selected_per_group"] = int(per_group.max()) if len(per_group) else 0
    for stat in ("entropy_plant", "margin_plant", "least_confidence", "plant_fraction"):
        if stat in df.columns:
            metrics[f"{stat}_mean_pool"] = _mean(eligible[stat])
            metrics[f"{stat}_mean_selected"] = _mean(chosen[stat])
    classes = _classes_for(run, src)
    plot_score_distribution(out / "score_distribution.png", eligible, sel.score_column, sel.strategy)
    plot_gallery(out / "gallery.png", eligible, by_line, run, classes, int(st["gallery"]), sel.score_column)
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out / "metrics.json", metrics)
    log.info("select: %s picked %d of %d eligible candidates (%d excluded)", sel.strategy, len(sel.ids),
             len(eligible), len(excluded))
    return metrics


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _mean(s: pd.Series) -> float | None:
    v = pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return float(v.mean()) if len(v) else None


def write_parquet(path: Path, df: pd.DataFrame) -> Path:
    """Atomic parquet (temporary sibling, then rename); mixed-type metadata columns are stored as text."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c].dropna()}
            if len(kinds) > 1:
                df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    with atomic_write(path, "wb") as fh:
        df.to_parquet(fh, index=False)
    return Path(path)


def _classes_for(run: Path, src: Path) -> list[dict]:
    path = src.parent / "masks" / "classes.json"
    try:
        return list(read_json(path)) if path.is_file() else []
    except Exception as exc:  # a picture must not fail the stage
        log.warning("select: %s unreadable (%s); gallery without legend", path, exc)
        return []


# ------------------------------------------------------------------------------------ pictures
_plt = pyplot
_save = save_png


def plot_score_distribution(path: Path, eligible: pd.DataFrame, label: str, strategy: str) -> None:
    """Histogram of the eligible candidates' scores, the selected ones on top, and the cut-off.

    Strategies that do not pick by a threshold (NO_CUTOFF: a bin's best may score low, power sampling
    draws) get no cut-off line.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    s = pd.to_numeric(eligible.get("score", pd.Series(dtype=float)), errors="coerce")
    finite = np.isfinite(s.to_numpy(dtype=float)) if len(s) else np.zeros(0, bool)
    vals = s[finite]
    if len(vals):
        bins = np.histogram_bin_edges(vals, bins=min(30, max(5, len(vals) // 3)))
        ax.hist(vals, bins=bins, color="#9db8d9", label=f"pool ({len(vals)})")
        chosen = vals[eligible["selected"].to_numpy()[finite]]
        if len(chosen):
            ax.hist(chosen, bins=bins, color="#d95f43", label=f"selected ({len(chosen)})")
        if len(chosen) and strategy not in NO_CUTOFF:
            cut = float(chosen.min())
            ax.axvline(cut, color="k", ls="--", lw=1)
            ax.text(cut, ax.get_ylim()[1] * 0.95, f" cut-off {cut:.3g}", fontsize=8, va="top")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no candidates with a score", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"score: {label}", fontsize=9)
    ax.set_ylabel("candidates", fontsize=9)
    ax.set_title(f"select: {strategy}", fontsize=10)
    _save(fig, path)


def _thumb(run: Path, line: Mapping, classes: Sequence[Mapping], side: int = 256) -> np.ndarray | None:
    import cv2

    from agir.images import read_image
    from agir.masks import overlay, read_mask

    try:
        rgb = read_image(run / line["image"])
        if line.get("mask") and classes:
            mask = read_mask(run / line["mask"])
            if mask.shape[:2] == rgb.shape[:2]:
                rgb = overlay(rgb, mask, classes)
    except Exception as exc:  # one unreadable file leaves a blank tile, not a failed stage
        log.warning("select: gallery: %s: %s", line.get("id"), exc)
        return None
    h, w = rgb.shape[:2]
    f = side / max(h, w)
    if f < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return rgb


def plot_gallery(path: Path, eligible: pd.DataFrame, by_line: Mapping[str, Mapping], run: Path,
                 classes: Sequence[Mapping], k: int, label: str) -> None:
    """Top row: the k most uncertain candidates, bottom row: the k least, with their pre-label overlay."""
    from matplotlib.patches import Patch

    plt = _plt()
    s = pd.to_numeric(eligible.get("score", pd.Series(dtype=float)), errors="coerce")
    ranked = eligible.assign(_s=s).loc[np.isfinite(s.to_numpy(dtype=float))] if len(s) else eligible
    ranked = ranked.sort_values(["_s", "id"], ascending=[False, True]) if len(ranked) else ranked
    k = max(0, min(int(k), len(ranked)))
    if k == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no candidates to show", ha="center", va="center")
        _save(fig, path)
        return
    top = ranked.head(k)
    bottom = ranked.tail(k).iloc[::-1] if len(ranked) > k else ranked.iloc[0:0]
    rows = [("most uncertain", top)] + ([("least uncertain", bottom)] if len(bottom) else [])
    fig, axes = plt.subplots(len(rows), k, figsize=(2.6 * k, 2.8 * len(rows) + 0.5), squeeze=False)
    for r, (title, part) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(part):
                continue
            row = part.iloc[c]
            img = _thumb(run, by_line.get(row["id"], {}), classes)
            if img is not None:
                ax.imshow(img)
            mark = " *" if bool(row.get("selected")) else ""
            ax.set_title(f"{str(row['id'])[:22]}{mark}\n{row['_s']:.3f}", fontsize=7)
        axes[r][0].text(-0.08, 0.5, title, rotation=90, va="center", ha="right", fontsize=9,
                        transform=axes[r][0].transAxes)
    if classes:
        handles = [Patch(color=c["color"], label=c["name"]) for c in classes]
        fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"score: {label}   (* = selected)", fontsize=9)
    _save(fig, path)
