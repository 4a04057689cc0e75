"""Choosing the pre-labeler of a round: never send annotators worse pre-labels than the index gives.

A small model trained on few photos can pre-label worse than the vegetation-index baseline
(issue 11 §4). Before a round pre-labels with a model, `choose_prelabeler` scores the candidates —
the baseline and the project's trained checkpoints — on labelled images none of them trained on
(the newest earlier round's val/test images, minus any image in any candidate's train split) with
the same predictor and baseline code inference uses, and writes `{run}/infer/prelabeler.json`:

    {"chosen": "baseline" | <ckpt path>, "chosen_name", "margin", "reason", "eval_images": [...],
     "candidates": [{"name", "path", "plant_iou", "miou", "images"}, ...]}

`margin` is the chosen candidate's plant IoU minus the runner-up's. Ties go to the baseline: a
model has to measure better to be used.

`combine_prelabels` is the hybrid pre-labeler: the model's class where it is confident, the
vegetation index elsewhere (benchmarks/real_photos_loo.py measures it on real photos).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agir.errors import AgirError
from agir.logs import get_logger
from agir.masks import BACKGROUND, IGNORE, read_classes, read_mask
from agir.runs import read_json_or, write_json

log = get_logger("prelabeler")

BASELINE = "baseline"


def combine_prelabels(model_probs: np.ndarray, baseline_mask: np.ndarray, threshold: float) -> np.ndarray:
    """Class-index mask: the model's argmax where its top probability >= threshold, else the baseline.

    `model_probs` is (C, H, W): softmax with channel 0 = background (C = K+1), or one sigmoid channel
    (C = 1, plant probability). `baseline_mask` is (H, W) plant 0/1 (or class indices, passed through).
    Where the baseline decides and the model has several classes, a baseline plant pixel takes the
    model's most likely foreground class, so species labels still come from the model.
    """
    probs = np.asarray(model_probs, dtype=np.float32)
    base = np.asarray(baseline_mask)
    if probs.ndim != 3 or probs.shape[1:] != base.shape:
        raise AgirError(
            f"combine_prelabels: probabilities {probs.shape} and baseline mask {base.shape} do not match; "
            "expected (C, H, W) and (H, W)"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise AgirError(f"combine_prelabels: threshold {threshold} must be in [0, 1]")
    if probs.shape[0] == 1:
        p = probs[0]
        model_mask = (p >= 0.5).astype(np.uint8)
        confidence = np.maximum(p, 1.0 - p)
        fallback = (base > 0).astype(np.uint8)
    else:
        model_mask = probs.argmax(0).astype(np.uint8)
        confidence = probs.max(0)
        if probs.shape[0] == 2:
            fallback = (base > 0).astype(np.uint8)
        else:
            best_fg = (probs[1:].argmax(0) + 1).astype(np.uint8)
            fallback = np.where(base > 0, best_fg, BACKGROUND).astype(np.uint8)
    return np.where(confidence >= float(threshold), model_mask, fallback).astype(np.uint8)


# Confidence above which the hybrid pre-labeler trusts the model (see combine_prelabels).
COMBINE_THRESHOLD = 0.9
EVAL_SPLITS = ("val", "test")


def _round_of(ckpt: str | Path) -> Path:
    """`{round}/model/best.pth` -> `{round}`."""
    return Path(ckpt).resolve().parent.parent


def _read_index(round_dir: Path) -> pd.DataFrame | None:
    path = round_dir / "dataset" / "index.csv"
    if not path.is_file():
        return None
    try:
        index = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        log.warning("%s: unreadable dataset index; its round is left out of the pre-labeler comparison", path)
        return None
    return index if {"split", "image", "mask"} <= set(index.columns) else None


def _image_key(row: Mapping[str, Any]) -> str:
    for key in ("image_id", "source_image", "sample_id"):
        value = row.get(key)
        if isinstance(value, str) and value:
            return value
    return str(row.get("image"))


def trained_images(round_dir: Path) -> set[str]:
    """Images a round's model trained on: its dataset's train split (index.csv, else metrics.json)."""
    index = _read_index(round_dir)
    if index is not None:
        return {_image_key(r) for r in index[index["split"] == "train"].to_dict("records")}
    split_of = read_json_or(round_dir / "dataset" / "metrics.json", {}).get("split_of_image") or {}
    return {str(k) for k, v in split_of.items() if v == "train"}


def held_out_samples(
    candidates: Sequence[str | Path], max_samples: int | None = 200, run: Path | None = None
) -> tuple[Path | None, list[dict]]:
    """(dataset folder, samples) to compare on: val/test of the newest earlier round's dataset (the
    candidates' rounds and, given `run`, its sibling rounds), minus every image any candidate trained
    on. Newest = most recently written index.csv; `run`'s own dataset is never used (not earlier)."""
    here = Path(run).resolve() if run is not None else None
    pool = [_round_of(c) for c in candidates]
    if here is not None and here.parent.is_dir():
        pool += sorted(d.resolve() for d in here.parent.iterdir() if d.is_dir())
    rounds = []
    for r in pool:
        if r != here and (r / "dataset" / "index.csv").is_file() and r not in rounds:
            rounds.append(r)
    if not rounds:
        return None, []
    newest = max(rounds, key=lambda r: ((r / "dataset" / "index.csv").stat().st_mtime_ns, r.name))
    index = _read_index(newest)
    if index is None:
        return newest / "dataset", []
    seen: set[str] = set()
    for c in candidates:
        seen |= trained_images(_round_of(c))
    rows = [r for r in index[index["split"].isin(EVAL_SPLITS)].to_dict("records") if _image_key(r) not in seen]
    rows.sort(key=lambda r: str(r.get("sample_id", r["image"])))
    if max_samples and len(rows) > max_samples:
        # an even spread over the sorted list keeps every image's tiles represented
        pick = np.linspace(0, len(rows) - 1, int(max_samples)).round().astype(int)
        rows = [rows[i] for i in sorted(set(pick.tolist()))]
    return newest / "dataset", rows


class _Score:
    """Accumulates plant IoU (foreground vs background) and per-class IoU over images."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        n = len(self.names) + 1
        self.cm = np.zeros((n, n), np.int64)
        self.images = 0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        n = self.cm.shape[0]
        valid = truth != IGNORE
        t = truth[valid].astype(np.int64)
        p = np.clip(pred[valid].astype(np.int64), 0, n - 1)
        t = np.where(t < n, t, 0)
        self.cm += np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        self.images += 1

    def result(self, multiclass_pred: bool) -> dict[str, Any]:
        cm = self.cm
        fg_tp = cm[1:, 1:].sum()
        fg_union = cm[1:, :].sum() + cm[:, 1:].sum() - fg_tp
        plant = float(fg_tp / fg_union) if fg_union else None
        miou = None
        if multiclass_pred or len(self.names) == 1:
            tp = np.diag(cm).astype(float)
            denom = cm.sum(0) + cm.sum(1) - tp
            ious = [tp[i] / denom[i] for i in range(1, len(tp)) if denom[i] > 0]
            miou = float(np.mean(ious)) if ious else None
        return {"plant_iou": None if plant is None else round(plant, 4),
                "miou": None if miou is None else round(miou, 4), "images": self.images}


def _baseline_settings(cfg: Mapping) -> dict[str, Any]:
    b = dict(((cfg.get("seg_inference") or {}).get("baseline")) or {})
    return {"index": b.get("index", "exg"), "threshold": b.get("threshold", "otsu"),
            "open_radius": int(b.get("open_radius", 1)), "close_radius": int(b.get("close_radius", 1)),
            "max_side": int(b.get("max_side", 2048))}


def _predictor(cfg: Mapping, ckpt: Mapping[str, Any]):
    from agir.checkpoint import model_from_checkpoint
    from agir.infer.predictor import TiledPredictor, resolve_device

    sc = cfg.get("seg_inference") or {}
    tile = sc.get("tile") or {}
    ck_in = ckpt.get("input") or {}
    size = tile.get("size") or ck_in.get("tile_size") or 512
    overlap = tile.get("overlap")
    overlap = ck_in.get("overlap") if overlap is None else overlap
    batch = sc.get("batch_size")
    dev = resolve_device(sc.get("device", "auto"))
    return TiledPredictor(
        model_from_checkpoint(ckpt, dev), head=ckpt["head"], mean=ckpt["normalization"]["mean"],
        std=ckpt["normalization"]["std"], tile_size=int(size), overlap=0.25 if overlap is None else float(overlap),
        batch_size=batch if (isinstance(batch, int) and batch > 0) or batch == "auto" else "auto", blend=sc.get("blend", "gaussian"),
        device=dev, threshold=float((sc.get("post_process") or {}).get("threshold", 0.5)),
    )


def _candidate_name(path: Path) -> str:
    r = _round_of(path)
    return f"{r.name}/{path.parent.name}/{path.name}"


def _rank_key(c: Mapping[str, Any]) -> tuple:
    # ties go to the baseline (a model has to measure better), then to the simpler pre-labeler
    return (c["plant_iou"] if c["plant_iou"] is not None else -1.0, c["kind"] == "baseline", c["kind"] == "model")


def choose_prelabeler(
    cfg: Mapping,
    run: Path,
    candidates: list[str],
    *,
    max_samples: int | None = 200,
    combine_threshold: float = COMBINE_THRESHOLD,
    allow_combined: bool = False,
) -> dict:
    """Compare the baseline and each candidate checkpoint on held-out labelled images; write and return
    `{run}/infer/prelabeler.json` (see the module docstring).

    Combined pre-labelers (`<model>+index`: the model where its top probability >= combine_threshold,
    the index elsewhere) are always measured and reported; they can be chosen only with allow_combined.
    A candidate that cannot be loaded is reported with its error and never chosen.
    """
    from agir.checkpoint import load_checkpoint
    from agir.images import read_image
    from agir.infer.baseline import plant_mask

    started = time.perf_counter()
    run = Path(run)
    paths = [Path(c) for c in candidates]
    dataset, samples = held_out_samples(paths, max_samples, run) if paths else (None, [])
    classes = read_classes(dataset / "classes.json") if dataset and (dataset / "classes.json").exists() else []
    classes = sorted(classes, key=lambda c: int(c["index"]))
    names = [c["name"] for c in classes]
    index_of = {c["name"]: int(c["index"]) for c in classes}
    base = {"name": BASELINE, "path": None, "kind": "baseline", "plant_iou": None, "miou": None, "images": 0}
    result: dict[str, Any] = {"chosen": BASELINE, "chosen_name": BASELINE, "margin": None,
                              "candidates": [base], "eval_images": [], "dataset": str(dataset) if dataset else None}
    if not paths or not samples:
        why = ("no candidate models (no earlier round has model/best.pth)" if not paths else
               "no labelled images that no candidate trained on (the newest earlier round's dataset has no "
               "val/test images outside every candidate's train split)")
        for p in paths:
            result["candidates"].append({"name": _candidate_name(p), "path": str(p), "kind": "model",
                                         "plant_iou": None, "miou": None, "images": 0})
        result["reason"] = f"vegetation-index baseline: {why}"
        return _finish(run, result, started)

    truths, images = [], []
    for s in samples:
        truths.append(read_mask(dataset / s["mask"]))
        images.append(s["image"])
    result["eval_images"] = sorted({_image_key(s) for s in samples})
    bset = _baseline_settings(cfg)
    base_score = _Score(names)
    base_masks = []
    for img_rel, truth in zip(images, truths):
        plant, _ = plant_mask(read_image(dataset / img_rel), **bset)
        base_masks.append(plant)
        base_score.add(plant, truth)  # plant pixels count as class 1: only plant IoU is meaningful
    base.update(base_score.result(multiclass_pred=False))
    for path in paths:
        entry: dict[str, Any] = {"name": _candidate_name(path), "path": str(path), "kind": "model",
                                 "plant_iou": None, "miou": None, "images": 0}
        combo: dict[str, Any] = {"name": f"{entry['name']}+index", "path": str(path), "kind": "combined",
                                 "threshold": combine_threshold, "plant_iou": None, "miou": None, "images": 0}
        try:
            ckpt = load_checkpoint(path)
            predictor = _predictor(cfg, ckpt)
        except AgirError as exc:
            entry["error"] = str(exc)
            log.warning("pre-labeler candidate %s left out: %s", path, exc)
            result["candidates"].append(entry)
            continue
        # the model's class k -> the dataset's index of the same name (unknown names stay plant-like)
        lut = np.array([0] + [index_of.get(n, min(i + 1, 254)) for i, n in enumerate(ckpt["classes"])], np.uint8)
        m_score, c_score = _Score(names), _Score(names)
        for img_rel, truth, bmask in zip(images, truths, base_masks):
            mask, info = predictor.predict(read_image(dataset / img_rel), return_probs=True)
            m_score.add(lut[mask], truth)
            c_score.add(lut[combine_prelabels(info["probs"], bmask, combine_threshold)], truth)
        multi = len(ckpt["classes"]) > 1 or len(names) == 1
        entry.update(m_score.result(multiclass_pred=multi))
        combo.update(c_score.result(multiclass_pred=multi))
        result["candidates"] += [entry, combo]
    eligible = [c for c in result["candidates"]
                if c["plant_iou"] is not None and (allow_combined or c["kind"] != "combined")]
    ranked = sorted(eligible, key=_rank_key, reverse=True)
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    result["chosen"] = BASELINE if best["kind"] == "baseline" else best["path"]
    result["chosen_name"] = best["name"]
    result["chosen_kind"] = best["kind"]
    result["margin"] = round(best["plant_iou"] - runner["plant_iou"], 4) if runner else None
    n_img = len(result["eval_images"])
    if best["kind"] == "baseline":
        result["reason"] = (f"no model beat the vegetation-index baseline (plant IoU {best['plant_iou']}) on "
                            f"{len(samples)} held-out sample(s) from {n_img} image(s)")
    else:
        result["reason"] = (f"{best['name']} has the best plant IoU ({best['plant_iou']}, baseline "
                            f"{base['plant_iou']}) on {len(samples)} held-out sample(s) from {n_img} image(s)")
    combos = [c for c in result["candidates"] if c["kind"] == "combined" and c["plant_iou"] is not None]
    if combos and not allow_combined:
        top = max(combos, key=lambda c: c["plant_iou"])
        if top["plant_iou"] > best["plant_iou"]:
            result["combined_would_win"] = {"name": top["name"], "plant_iou": top["plant_iou"],
                                            "gain": round(top["plant_iou"] - best["plant_iou"], 4)}
    return _finish(run, result, started)


def _finish(run: Path, result: dict, started: float) -> dict:
    result["seconds"] = round(time.perf_counter() - started, 2)
    write_json(run / "infer" / "prelabeler.json", result)
    margin = result.get("margin")
    log.info("pre-labeler: %s (%s)%s", result["chosen_name"], result["reason"],
             "" if margin is None else f", margin {margin:+.4f} plant IoU over the runner-up")
    return result


def resolve_auto_checkpoint(run: Path) -> str | None:
    """`seg_inference.model.ckpt_path: auto` -> the chosen checkpoint path, or None for the baseline."""
    data = read_json_or(Path(run) / "infer" / "prelabeler.json", None)
    if not isinstance(data, Mapping) or "chosen" not in data:
        raise AgirError(f"{Path(run) / 'infer' / 'prelabeler.json'}: missing; run the pre-labeler choice first")
    return None if data["chosen"] == BASELINE else str(data["chosen"])


__all__ = ["choose_prelabeler", "combine_prelabels", "held_out_samples", "resolve_auto_checkpoint", "BASELINE"]
