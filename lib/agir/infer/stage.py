"""The segmentation inference stage: query records (or a folder of photos) -> pre-label masks in infer/.

Outputs (DESIGN.md §3): `infer/images/{id}.jpg` (the exact pixels the model saw), `infer/masks/{id}.png`
(class indices + palette) with `classes.json`, optional `infer/overlays/{id}.jpg`,
`infer/manifest.jsonl` (one line per output) and `infer/metrics.json`. When a model ran, each
manifest line carries `"uncertainty"`: per-image statistics from the same forward pass
(`agir.select.uncertainty`), which active selection ranks by.

Purposes: `prelabel` (the default) writes under `infer/`; `score` scores a pool for active selection
cheaply: each input is first downscaled so its longer side is <= `select.score_max_side` (INTER_AREA)
and the same layout is written under `select/pool/`. `only_ids` restricts a run to the listed
record/image/item ids (e.g. the selected ones, pre-labelled at full resolution).

Items are planned in `agir.infer.items`; what labels them is in `agir.infer.backends`.

Resume: every finished item appends its manifest line to a journal (fsynced) after its files are
written; a rerun skips items whose journal line is `ok`, whose fingerprint (model + settings +
the item's inputs) matches and whose files exist. They appear in the manifest as `ok` with
`"resumed": true` (keeping their stored uncertainty). `force` redoes everything.

Status values: `ok` (outputs written), `failed` (reason says why; the rest of the run goes on).

Classes: `classes` (the round's class set, `{run}/classes.json`, or its list) is the class list of
`infer/masks/`; a model's classes are mapped into it by name, and records of species the model does not
know are labelled with their own species on the model's plant shape (`agir.infer.backends`). Without it
(rounds built before class sets) the list is the checkpoint's, or the records' species for the baseline.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agir import records as recs
from agir.classes import class_list, read_round_classes
from agir.errors import AgirError
from agir.images import write_image
from agir.infer.backends import Backend, ModelBackend, make_backend
from agir.infer.items import Item, Prepared, crop_box, plan_items, prepare  # noqa: F401  (crop_box: public here too)
from agir.infer.postprocess import postprocess
from agir.logs import get_logger
from agir.masks import BINARY_CLASS, color_for_name, make_classes, overlay, write_classes, write_mask
from agir.runs import append_jsonl, dumps_json, read_json, read_jsonl, write_json, write_jsonl

log = get_logger("infer")

PURPOSES = {"prelabel": "infer", "score": "select/pool"}  # purpose -> output folder inside the run


def _out_rel(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise AgirError(f"infer: purpose={purpose!r}; use one of {', '.join(PURPOSES)}")
    return PURPOSES[purpose]


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(dumps_json(obj, indent=None).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- the stage

def _paths(run: Path, shard_index: int | None, purpose: str = "prelabel") -> dict[str, Path]:
    infer = run / _out_rel(purpose)
    base = infer if shard_index is None else infer / "shards" / str(shard_index)
    return {
        "infer": infer,
        "images": infer / "images",
        "masks": infer / "masks",
        "overlays": infer / "overlays",
        "manifest": base / "manifest.jsonl",
        "metrics": base / "metrics.json",
        "journal": base / "journal.jsonl",
        "classes": base / "classes.json" if shard_index is not None else infer / "masks" / "classes.json",
    }


def _previous_lines(infer: Path) -> dict[str, dict]:
    """Journal lines of earlier attempts (this layout or any shard layout), the newest per id."""
    journals = [infer / "journal.jsonl", *sorted(infer.glob("shards/*/journal.jsonl"))]
    done: dict[str, dict] = {}
    for j in journals:
        for line in read_jsonl(j, missing_ok=True):
            if "id" not in line:
                continue
            # the newest line describes the files on disk, whichever journal (layout) wrote it
            if line["id"] not in done or line.get("finished", 0) >= done[line["id"]].get("finished", 0):
                done[line["id"]] = line
    return done


def _outputs_exist(run: Path, line: Mapping) -> bool:
    return all((run / line[k]).is_file() for k in ("image", "mask", "overlay") if line.get(k))


def _class_list(cfg: Mapping, records: Sequence[Mapping] | None, backend: Backend) -> list[dict]:
    colors = recs.class_colors_for(records) if records else {}
    if isinstance(backend, ModelBackend):
        names = backend.classes
    elif records is None:
        names = [BINARY_CLASS]
    else:
        names = recs.class_names_for(records, cfg)
    if names == [BINARY_CLASS]:
        colors = {BINARY_CLASS: colors.get(BINARY_CLASS) or color_for_name(BINARY_CLASS)}
    return make_classes(names, {n: colors.get(n) or color_for_name(n) for n in names})


def round_class_list(classes: str | os.PathLike | Sequence[Mapping] | None) -> list[dict] | None:
    """The round's class entries from a classes.json path or a list; None stays None."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        return class_list(read_round_classes(classes))
    return [{"index": int(c["index"]), "name": str(c["name"]), "color": str(c.get("color") or color_for_name(str(c["name"])))}
            for c in classes]


def run_infer_stage(
    cfg: Mapping[str, Any],
    run: str | os.PathLike,
    shard_index: int | None = None,
    shard_count: int = 1,
    force: bool = False,
    *,
    purpose: str = "prelabel",
    only_ids: Iterable[str] | None = None,
    classes: str | os.PathLike | Sequence[Mapping] | None = None,
) -> dict:
    """Segment every item of the run (or of one shard) and write infer/ outputs; returns the metrics.

    `purpose="score"` reduces each input to `select.score_max_side` and writes under select/pool/;
    `only_ids` keeps only the items with one of these record/image/item ids; `classes`: the round's
    class set (path or list), see the module docstring.
    """
    started = time.perf_counter()
    run = Path(run)
    sc = cfg["seg_inference"]
    out_rel = _out_rel(purpose)
    select = cfg.get("select") or {}  # older configs have no select section
    max_side = select.get("score_max_side") if purpose == "score" else None
    if max_side is not None:
        if isinstance(max_side, bool) or not isinstance(max_side, (int, float)) or int(max_side) < 16:
            raise AgirError(f"select.score_max_side={max_side!r}: use an integer >= 16 (pixels), "
                            "or null to score at full resolution")
        max_side = int(max_side)
    force = bool(force or sc.get("force"))
    if shard_index is not None and not (0 <= shard_index < shard_count):
        raise AgirError(f"shard index {shard_index} outside 0..{shard_count - 1}")
    if shard_index is not None and shard_count == 1:
        shard_index = None  # one shard is the whole run: write the final files directly
    paths = _paths(run, shard_index, purpose)
    mode = (sc.get("source") or {}).get("image_mode", "full_image")
    if (sc.get("source") or {}).get("images"):
        mode = "full_image"
    margin = float((sc.get("source") or {}).get("margin", 0.1))
    post = sc.get("post_process") or {}
    write_overlays = bool(sc.get("overlays", True))
    quality = int(sc.get("jpeg_quality", 95))

    items, records = plan_items(cfg, run, only_ids)
    backend = make_backend(cfg, records)
    round_classes = round_class_list(classes)
    classes = round_classes or _class_list(cfg, records, backend)
    class_index = {c["name"]: int(c["index"]) for c in classes}
    if isinstance(backend, ModelBackend):
        if round_classes is None:
            class_index = None  # a round without a class set: the model's own classes and indices, as before
        else:
            backend.use_classes(classes, binary=(cfg.get("classes") or {}).get("mode", "species") == "binary")
    settings_fp = _fingerprint({
        **backend.fingerprint_info(),
        "image_mode": mode,
        "margin": margin,
        "min_area": int(post.get("min_area", 0)),
        "fill_holes": bool(post.get("fill_holes", False)),
        "classes": classes,
        "jpeg_quality": quality,
        "overlays": write_overlays,
        # only when reduced, so pre-label fingerprints (and resumes) of earlier runs stay valid
        **({"max_side": max_side} if max_side else {}),
    })
    mine = items if shard_index is None else items[shard_index::shard_count]

    previous = {} if force else _previous_lines(paths["infer"])
    if force and paths["journal"].exists():
        paths["journal"].unlink()
    todo, lines = [], {}
    for it in mine:
        fp = _fingerprint({"settings": settings_fp, "item": it.key()})
        old = previous.get(it.id)
        if old and old.get("status") == "ok" and old.get("fingerprint") == fp and _outputs_exist(run, old):
            lines[it.index] = {**old, "index": it.index, "resumed": True}
        else:
            todo.append((it, fp))
    log.info("infer (%s): %d item(s) in this job, %d resumed from an earlier run, %d to do (backend %s on %s)",
             purpose, len(mine), len(lines), len(todo), backend.name, backend.device)
    for folder in ("images", "masks") + (("overlays",) if write_overlays else ()):
        paths[folder].mkdir(parents=True, exist_ok=True)
    if shard_index is None:
        write_classes(paths["masks"], classes)
    else:
        write_json(paths["classes"], classes)  # the gather step checks every shard agrees
    journal_lock = threading.Lock()

    def journal(line: dict) -> None:
        line["finished"] = time.time()
        with journal_lock:  # the writer thread and the main thread both record lines
            append_jsonl(paths["journal"], line)

    totals = {"read_s": 0.0, "model_s": 0.0, "post_s": 0.0, "write_s": 0.0, "tiles": 0, "megapixels": 0.0}

    def write_outputs(it: Item, fp: str, prep: Prepared, mask: np.ndarray, base: dict) -> dict:
        t0 = time.perf_counter()
        rel = {"image": f"{out_rel}/images/{it.id}.jpg", "mask": f"{out_rel}/masks/{it.id}.png"}
        if write_overlays:
            rel["overlay"] = f"{out_rel}/overlays/{it.id}.jpg"
        write_image(run / rel["image"], prep.rgb, quality)
        if write_overlays:
            write_image(run / rel["overlay"], overlay(prep.rgb, mask, classes), 85)
        write_mask(run / rel["mask"], mask, classes)  # last: its presence + the journal line mean done
        base["timings"]["write_s"] = round(time.perf_counter() - t0, 4)
        line = {**base, **rel, "status": "ok", "fingerprint": fp}
        journal(line)
        return line

    def fail_line(it: Item, fp: str, reason: str, timings: dict | None = None) -> dict:
        line = {**_base_line(it), "status": "failed", "reason": reason, "timings": timings or {}, "fingerprint": fp}
        journal(line)
        return line

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer-write")
    reads: deque[tuple[Item, str, Future]] = deque()
    writes: deque[tuple[Item, Future]] = deque()
    queue = deque(todo)
    prefetch = 2

    def top_up() -> None:
        while queue and len(reads) < prefetch:
            it, fp = queue.popleft()
            reads.append((it, fp, reader.submit(prepare, it, mode, margin, class_index, max_side)))

    def drain(limit: int) -> None:
        while len(writes) > limit:
            it, fut = writes.popleft()
            try:
                line = fut.result()
            except Exception as exc:  # a write failure is this item's, not the run's
                log.warning("infer: %s: could not write outputs: %s", it.id, exc)
                line = fail_line(it, "", f"writing outputs failed: {exc}")
            lines[it.index] = line

    bar = tqdm(total=len(mine), initial=len(lines), unit="rec", desc="infer", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 10.0)
    try:
        top_up()
        while reads:
            it, fp, fut = reads.popleft()
            top_up()  # keep the reader busy decoding the next image while the model runs
            try:
                prep = fut.result()
            except Exception as exc:
                reason = str(exc) if isinstance(exc, AgirError) else f"{type(exc).__name__}: {exc}"
                log.warning("infer: %s failed: %s", it.id, reason)
                lines[it.index] = fail_line(it, fp, reason)
                bar.update(1)
                continue
            try:
                t0 = time.perf_counter()
                mask, info = backend.predict(prep.rgb, prep.boxes, prep.top)
                t1 = time.perf_counter()
                mask, removed = postprocess(mask, int(post.get("min_area", 0)), bool(post.get("fill_holes", False)))
                t2 = time.perf_counter()
            except Exception as exc:
                reason = str(exc) if isinstance(exc, AgirError) else f"{type(exc).__name__}: {exc}"
                log.warning("infer: %s failed: %s", it.id, reason)
                lines[it.index] = fail_line(it, fp, reason, {"read_s": round(prep.read_s, 4)})
                bar.update(1)
                continue
            totals["read_s"] += prep.read_s
            totals["model_s"] += t1 - t0
            totals["post_s"] += t2 - t1
            totals["tiles"] += int(info.get("tiles", 0))
            totals["megapixels"] += prep.rgb.shape[0] * prep.rgb.shape[1] / 1e6
            base = {
                **_base_line(it),
                "crop": list(prep.crop),
                "source_size": list(prep.size),
                "size": [int(prep.rgb.shape[1]), int(prep.rgb.shape[0])],
                "reason": "; ".join(prep.notes) or None,
                "tiles": int(info.get("tiles", 0)),
                "removed_components": removed,
                "timings": {"read_s": round(prep.read_s, 4), "model_s": round(t1 - t0, 4), "post_s": round(t2 - t1, 4)},
            }
            if prep.scale != 1.0:
                base["scale"] = round(prep.scale, 6)
            if "threshold" in info:
                base["index_threshold"] = info["threshold"]
            if info.get("uncertainty") is not None:
                base["uncertainty"] = info["uncertainty"]
            if info.get("review_regions") is not None:
                base["review_regions"] = info["review_regions"]
            writes.append((it, writer.submit(write_outputs, it, fp, prep, mask, base)))
            del prep, mask
            drain(1)  # bound memory: at most one finished frame waits for the disk
            bar.update(1)
        drain(0)
    finally:
        bar.close()
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)

    manifest = [lines[it.index] for it in mine if it.index in lines]
    for line in manifest:
        if line.get("status") == "ok" and "write_s" in line.get("timings", {}) and not line.get("resumed"):
            totals["write_s"] += line["timings"]["write_s"]
    wall = time.perf_counter() - started
    metrics = _metrics(manifest, totals, wall, backend, classes, settings_fp, mode, shard_index, shard_count,
                       len(records) if records is not None else None)
    metrics["purpose"] = purpose
    metrics["max_side"] = max_side
    metrics["only_ids"] = None if only_ids is None else len(items)
    write_jsonl(paths["manifest"], manifest)
    write_json(paths["metrics"], metrics)
    log.info("infer: %d ok (%d resumed), %d failed in %.1f s", metrics["ok"], metrics["resumed"], metrics["failed"], wall)
    return metrics


def _base_line(it: Item) -> dict:
    return {
        "id": it.id,
        "index": it.index,
        "record_ids": it.record_ids,
        "image_id": it.image_id,
        "source": None if it.source is None else str(it.source),
    }


def _metrics(manifest: Sequence[Mapping], totals: Mapping, wall: float, backend: Backend, classes: list,
             settings_fp: str, mode: str, shard_index: int | None, shard_count: int, n_records: int | None) -> dict:
    processed = [m for m in manifest if m.get("status") == "ok" and not m.get("resumed")]
    n = len(processed)
    busy = max(wall, 1e-9)
    return {
        "stage": "infer",
        "backend": backend.name,
        "model": getattr(backend, "ckpt_info", None),
        "settings": backend.settings,
        "settings_fingerprint": settings_fp,
        "device": backend.device,
        "image_mode": mode,
        "classes": [c["name"] for c in classes],
        "records": n_records,
        "outputs": len(manifest),
        "ok": sum(1 for m in manifest if m.get("status") == "ok"),
        "failed": sum(1 for m in manifest if m.get("status") == "failed"),
        "skipped": sum(1 for m in manifest if m.get("status") == "skipped"),
        "resumed": sum(1 for m in manifest if m.get("resumed")),
        "processed": n,
        "tiles": int(totals["tiles"]),
        "megapixels": round(float(totals["megapixels"]), 3),
        "wall_s": round(wall, 3),
        "images_per_s": round(n / busy, 4),
        "tiles_per_s": round(totals["tiles"] / busy, 4),
        "mp_per_s": round(totals["megapixels"] / busy, 4),
        # reading and writing run in their own threads, overlapping the model: the parts can sum to more than wall_s
        "time_s": {k: round(float(totals[k]), 3) for k in ("read_s", "model_s", "post_s", "write_s")},
        "shard": None if shard_index is None else {"index": shard_index, "count": shard_count},
    }


def merge_infer_shards(cfg: Mapping[str, Any], run: str | os.PathLike, shard_count: int,
                       purpose: str = "prelabel") -> dict:
    """Gather step: shards' manifests/metrics -> infer/manifest.jsonl, infer/metrics.json, masks/classes.json.

    With purpose="score" the same under select/pool/.
    """
    run = Path(run)
    infer = run / _out_rel(purpose)
    manifest: list[dict] = []
    shard_metrics: list[dict] = []
    classes = None
    for k in range(int(shard_count)):
        folder = infer / "shards" / str(k)
        for name in ("manifest.jsonl", "metrics.json", "classes.json"):
            if not (folder / name).exists():
                raise AgirError(f"{folder / name} missing: shard {k} of {shard_count} has not finished; run its job first")
        these = read_json(folder / "classes.json")
        if classes is None:
            classes = these
        elif these != classes:
            raise AgirError(f"{folder / 'classes.json'}: shard {k} used other classes than shard 0; rerun the shards with one config")
        manifest.extend(read_jsonl(folder / "manifest.jsonl"))
        shard_metrics.append(read_json(folder / "metrics.json"))
    manifest.sort(key=lambda m: m.get("index", 0))
    first = shard_metrics[0] if shard_metrics else {}
    counts = ("outputs", "ok", "failed", "skipped", "resumed", "processed", "tiles")
    metrics = {k: first.get(k) for k in ("stage", "backend", "model", "settings", "settings_fingerprint", "device",
                                          "image_mode", "classes", "records", "purpose", "max_side",
                                          "only_ids")}
    metrics.update({k: sum(int(m.get(k) or 0) for m in shard_metrics) for k in counts})
    metrics["megapixels"] = round(sum(float(m.get("megapixels") or 0) for m in shard_metrics), 3)
    metrics["time_s"] = {k: round(sum(float((m.get("time_s") or {}).get(k, 0)) for m in shard_metrics), 3)
                         for k in ("read_s", "model_s", "post_s", "write_s")}
    # shards run side by side: the job's wall time is the slowest shard, throughput is over that
    wall = max((float(m.get("wall_s") or 0) for m in shard_metrics), default=0.0)
    metrics["wall_s"] = round(wall, 3)
    busy = max(wall, 1e-9)
    metrics["images_per_s"] = round(metrics["processed"] / busy, 4)
    metrics["tiles_per_s"] = round(metrics["tiles"] / busy, 4)
    metrics["mp_per_s"] = round(metrics["megapixels"] / busy, 4)
    metrics["shards"] = [{"index": k, "ok": m.get("ok"), "failed": m.get("failed"), "wall_s": m.get("wall_s")}
                         for k, m in enumerate(shard_metrics)]
    write_classes(infer / "masks", classes or [])
    write_jsonl(infer / "manifest.jsonl", manifest)
    write_json(infer / "metrics.json", metrics)
    log.info("infer: merged %d shard(s): %d ok, %d failed", shard_count, metrics["ok"], metrics["failed"])
    return metrics
