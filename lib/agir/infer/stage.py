"""The segmentation inference stage: query records (or a folder of photos) -> pre-label masks in infer/.

Outputs (DESIGN.md §3): `infer/images/{id}.jpg` (the exact pixels the model saw), `infer/masks/{id}.png`
(class indices + palette) with `classes.json`, optional `infer/overlays/{id}.jpg`,
`infer/manifest.jsonl` (one line per output) and `infer/metrics.json`.

Units of work ("items"): in `full_image` mode one per image_id (all its cutouts in the query
together), in `cutout` mode one per record (its bbox plus a margin, clamped to the frame), or one
per file with `seg_inference.source.images`.

Backends: a checkpoint (`seg_inference.model.ckpt_path`; classes, architecture, normalisation and
default tile settings come from it) or, in round 1, the vegetation-index baseline, which labels
plant pixels inside each record's bbox with that record's class.

Resume: every finished item appends its manifest line to a journal (fsynced) after its files are
written; a rerun skips items whose journal line is `ok`, whose fingerprint (model + settings +
the item's inputs) matches and whose files exist. They appear in the manifest as `ok` with
`"resumed": true`. `force` redoes everything.

Status values: `ok` (outputs written), `failed` (reason says why; the rest of the run goes on).
"""

from __future__ import annotations

import glob as globmod
import hashlib
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agir import records as recs
from agir.errors import AgirError
from agir.images import read_image, write_image
from agir.infer.baseline import paint_boxes, plant_mask
from agir.infer.postprocess import postprocess
from agir.logs import get_logger
from agir.masks import BINARY_CLASS, IGNORE, color_for_name, make_classes, overlay, write_classes, write_mask
from agir.runs import append_jsonl, dumps_json, read_json, read_jsonl, write_json, write_jsonl

log = get_logger("infer")

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass
class Item:
    """One output of the stage."""

    index: int
    id: str
    source: Path | None
    image_id: str | None
    record_ids: list[str]
    # (bbox_xywh in full-resolution pixels or None = whole frame, class name) per record
    boxes: list[tuple[tuple[int, int, int, int] | None, str]] = field(default_factory=list)
    target: int | None = None  # cutout mode: which entry of boxes is the cutout's own record
    fullres: tuple[int, int] | None = None  # (width, height) the bboxes are expressed in
    error: str | None = None  # known before reading (e.g. unresolvable path)

    def key(self) -> dict:
        return {
            "source": str(self.source),
            "record_ids": self.record_ids,
            "boxes": [[list(b) if b else None, c] for b, c in self.boxes],
            "target": self.target,
            "fullres": list(self.fullres) if self.fullres else None,
        }


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "item"


def _fullres(rec: Mapping) -> tuple[int, int] | None:
    try:
        w, h = int(float(rec.get("fullres_width"))), int(float(rec.get("fullres_height")))
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


# ---------------------------------------------------------------------------- items

def items_from_images(spec: str | Sequence[str]) -> list[Item]:
    """`seg_inference.source.images`: a glob (or a list of files/globs), sorted, ids from file stems."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    files: list[str] = []
    for pat in patterns:
        pat = os.path.expanduser(str(pat))
        hits = sorted(globmod.glob(pat, recursive=True)) if any(ch in pat for ch in "*?[") else [pat]
        files.extend(hits)
    if not files:
        raise AgirError(f"seg_inference.source.images={spec!r} matches no files; give a glob like 'photos/*.jpg'")
    items, seen = [], set()
    for f in files:
        base = _safe_id(Path(f).stem)
        ident, n = base, 1
        while ident in seen:  # same stem in two folders: keep both
            n += 1
            ident = f"{base}-{n}"
        seen.add(ident)
        items.append(Item(len(items), ident, Path(f), None, [], boxes=[(None, BINARY_CLASS)]))
    return items


def items_from_records(records: Sequence[Mapping], cfg: Mapping, mode: str) -> list[Item]:
    items: list[Item] = []
    if mode == "cutout":
        by_image = recs.group_by_image(records, cfg)
        for rec in records:
            rid = _record_id(rec, cfg)
            iid = recs.image_id(rec, cfg)
            others = [r for r in by_image.get(iid, []) if r is not rec]
            boxes = [(recs.bbox_xywh(r), recs.class_for_record(r, cfg)) for r in others if recs.bbox_xywh(r)]
            boxes.append((recs.bbox_xywh(rec), recs.class_for_record(rec, cfg)))
            item = Item(len(items), _safe_id(rid), None, iid, [rid], boxes=boxes, target=len(boxes) - 1,
                        fullres=_fullres(rec))
            if recs.bbox_xywh(rec) is None:
                item.error = f"record {rid}: bbox_xywh missing or invalid; cutout mode needs one (or use image_mode=full_image)"
            _resolve_source(item, rec, cfg)
            items.append(item)
    elif mode == "full_image":
        for iid, group in recs.group_by_image(records, cfg).items():
            rids = [_record_id(r, cfg) for r in group]
            boxes = [(recs.bbox_xywh(r), recs.class_for_record(r, cfg)) for r in group]
            item = Item(len(items), _safe_id(iid), None, iid, rids, boxes=boxes, fullres=_fullres(group[0]))
            _resolve_source(item, group[0], cfg)
            items.append(item)
    else:
        raise AgirError(f"seg_inference.source.image_mode={mode!r}: use cutout or full_image")
    return items


def _record_id(rec: Mapping, cfg: Mapping) -> str:
    try:
        return recs.record_id(rec, cfg)
    except AgirError:
        return recs.image_id(rec, cfg) if not recs.is_missing(rec.get("image_id")) else "unknown"


def _resolve_source(item: Item, rec: Mapping, cfg: Mapping) -> None:
    try:
        item.source = recs.image_path(rec, cfg)
    except AgirError as exc:
        item.error = item.error or str(exc)


def crop_box(bbox: tuple[int, int, int, int], margin: float, width: int, height: int) -> Box | None:
    """bbox_xywh grown by `margin` x its size on every side, clamped to the frame; None if outside."""
    x, y, w, h = bbox
    mx, my = margin * w, margin * h
    x0, y0 = max(0, int(np.floor(x - mx))), max(0, int(np.floor(y - my)))
    x1, y1 = min(width, int(np.ceil(x + w + mx))), min(height, int(np.ceil(y + h + my)))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _scale_box(bbox: tuple[int, int, int, int], sx: float, sy: float) -> Box:
    x, y, w, h = bbox
    return int(round(x * sx)), int(round(y * sy)), int(round((x + w) * sx)), int(round((y + h) * sy))


# ---------------------------------------------------------------------------- backends

class Backend:
    name = "baseline"
    device = "cpu"

    def __init__(self, settings: Mapping, post: Mapping):
        self.settings = dict(settings)
        self.post = dict(post)

    def fingerprint_info(self) -> dict:
        return {"backend": self.name, "baseline": self.settings}

    def predict(self, rgb: np.ndarray, boxes: list, top: Any) -> tuple[np.ndarray, dict]:
        b = self.settings
        plant, thr = plant_mask(
            rgb,
            index=b.get("index", "exg"),
            threshold=b.get("threshold", "otsu"),
            open_radius=int(b.get("open_radius", 1)),
            close_radius=int(b.get("close_radius", 1)),
            max_side=int(b.get("max_side", 2048)),
        )
        return paint_boxes(plant, boxes, top), {"tiles": 0, "threshold": round(thr, 5)}


class ModelBackend(Backend):
    name = "model"

    def __init__(self, sc: Mapping, post: Mapping):

        from agir.checkpoint import checkpoint_fingerprint, load_checkpoint, model_from_checkpoint
        from agir.infer.predictor import TiledPredictor, resolve_device

        path = Path(sc["model"]["ckpt_path"])
        ckpt = load_checkpoint(path)
        dev = resolve_device(sc.get("device", "auto"))
        self.device = str(dev)
        tile = sc.get("tile") or {}
        ck_in = ckpt.get("input") or {}
        size = tile.get("size") or ck_in.get("tile_size") or 512
        overlap = tile.get("overlap")
        overlap = ck_in.get("overlap") if overlap is None else overlap
        overlap = 0.25 if overlap is None else overlap
        self.classes = list(ckpt["classes"])
        self.ckpt_info = {
            "path": str(path),
            "fingerprint": checkpoint_fingerprint(path),
            "arch": ckpt["arch"],
            "encoder": ckpt["encoder"],
            "head": ckpt["head"],
            "classes": self.classes,
        }
        self.settings = {"tile_size": int(size), "overlap": float(overlap), "blend": sc.get("blend", "gaussian"),
                         "threshold": float(post.get("threshold", 0.5))}
        self.post = dict(post)
        norm = ckpt["normalization"]
        model = model_from_checkpoint(ckpt, dev)
        del ckpt
        self.predictor = TiledPredictor(
            model,
            head=self.ckpt_info["head"],
            mean=norm["mean"],
            std=norm["std"],
            tile_size=int(size),
            overlap=float(overlap),
            batch_size=int(sc.get("batch_size", 4)),
            blend=self.settings["blend"],
            device=dev,
            threshold=self.settings["threshold"],
        )
        # no global torch.set_grad_enabled(False): the predictor runs under inference_mode, and a
        # process-wide switch would leak into whatever runs next (training, tests)

    def fingerprint_info(self) -> dict:
        return {"backend": self.name, "model": self.ckpt_info["fingerprint"], **self.settings}

    def predict(self, rgb: np.ndarray, boxes: list, top: Any) -> tuple[np.ndarray, dict]:
        mask, info = self.predictor.predict(rgb)
        return mask, {"tiles": info["tiles"]}


# ---------------------------------------------------------------------------- per item

@dataclass
class Prepared:
    rgb: np.ndarray  # the pixels the model sees (crop or full frame)
    crop: Box  # in the source image's pixels
    size: tuple[int, int]  # source (width, height)
    boxes: list[tuple[Box | None, int]]  # in crop pixels, class index
    top: tuple[Box | None, int] | None
    read_s: float
    notes: list[str]


def prepare(item: Item, mode: str, margin: float, class_index: Mapping[str, int] | None) -> Prepared:
    """Read the image and work out the crop and the per-record boxes in crop pixels (reader thread)."""
    t0 = time.perf_counter()
    if item.error:
        raise AgirError(item.error)
    full = read_image(item.source)
    h, w = full.shape[:2]
    # bboxes are in full-resolution pixels; a smaller (e.g. downscaled) file gets them scaled
    sx, sy = (w / item.fullres[0], h / item.fullres[1]) if item.fullres else (1.0, 1.0)
    scaled = [(None if b is None else _scale_box(b, sx, sy), c) for b, c in item.boxes]
    crop: Box = (0, 0, w, h)
    if mode == "cutout" and item.target is not None:
        x0, y0, x1, y1 = scaled[item.target][0]
        bbox = (x0, y0, x1 - x0, y1 - y0)
        got = crop_box(bbox, margin, w, h)
        if got is None:
            raise AgirError(f"{item.id}: bbox {list(item.boxes[item.target][0])} lies outside the {w}x{h} image {item.source}")
        crop = got
    cx0, cy0, cx1, cy1 = crop
    rgb = full if crop == (0, 0, w, h) else np.ascontiguousarray(full[cy0:cy1, cx0:cx1])
    del full
    notes: list[str] = []
    boxes: list[tuple[Box | None, int]] = []
    for b, name in scaled if class_index is not None else []:
        idx = class_index.get(name)
        if idx is None:
            notes.append(f"class {name!r} not in the class list (classes.names): its pixels are ignore (255)")
            idx = IGNORE
        boxes.append((None if b is None else (b[0] - cx0, b[1] - cy0, b[2] - cx0, b[3] - cy0), idx))
    top = None
    if mode == "cutout" and item.target is not None and boxes:
        top = boxes.pop(item.target)
    return Prepared(rgb, crop, (w, h), boxes, top, time.perf_counter() - t0, sorted(set(notes)))


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(dumps_json(obj, indent=None).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- the stage

def _paths(run: Path, shard_index: int | None) -> dict[str, Path]:
    infer = run / "infer"
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


def _previous_lines(run: Path) -> dict[str, dict]:
    """Journal lines of earlier attempts (this layout or any shard layout), the newest per id."""
    infer = run / "infer"
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


def _make_backend(sc: Mapping) -> Backend:
    post = sc.get("post_process") or {}
    if (sc.get("model") or {}).get("ckpt_path"):
        return ModelBackend(sc, post)
    return Backend(sc.get("baseline") or {}, post)


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


def plan_items(cfg: Mapping, run: Path) -> tuple[list[Item], list[Mapping] | None]:
    """Every item of this run in a stable order (shards take every N-th), and the records if any."""
    sc = cfg["seg_inference"]
    source = sc.get("source") or {}
    if source.get("images"):
        items, records = items_from_images(source["images"]), None
    else:
        records = recs.load_query_records(run)
        if sc.get("max_records"):
            records = records[: int(sc["max_records"])]
        items = items_from_records(records, cfg, source.get("image_mode", "full_image"))
    if sc.get("max_records") and source.get("images"):
        items = items[: int(sc["max_records"])]
    return items, records


def run_infer_stage(
    cfg: Mapping[str, Any],
    run: str | os.PathLike,
    shard_index: int | None = None,
    shard_count: int = 1,
    force: bool = False,
) -> dict:
    """Segment every item of the run (or of one shard) and write infer/ outputs; returns the metrics."""
    started = time.perf_counter()
    run = Path(run)
    sc = cfg["seg_inference"]
    force = bool(force or sc.get("force"))
    if shard_index is not None and not (0 <= shard_index < shard_count):
        raise AgirError(f"shard index {shard_index} outside 0..{shard_count - 1}")
    if shard_index is not None and shard_count == 1:
        shard_index = None  # one shard is the whole run: write the final files directly
    paths = _paths(run, shard_index)
    mode = (sc.get("source") or {}).get("image_mode", "full_image")
    if (sc.get("source") or {}).get("images"):
        mode = "full_image"
    margin = float((sc.get("source") or {}).get("margin", 0.1))
    post = sc.get("post_process") or {}
    write_overlays = bool(sc.get("overlays", True))
    quality = int(sc.get("jpeg_quality", 95))

    items, records = plan_items(cfg, run)
    backend = _make_backend(sc)
    classes = _class_list(cfg, records, backend)
    # the model labels pixels itself; only the baseline paints record boxes with class indices
    class_index = None if isinstance(backend, ModelBackend) else {c["name"]: int(c["index"]) for c in classes}
    settings_fp = _fingerprint({
        **backend.fingerprint_info(),
        "image_mode": mode,
        "margin": margin,
        "min_area": int(post.get("min_area", 0)),
        "fill_holes": bool(post.get("fill_holes", False)),
        "classes": classes,
        "jpeg_quality": quality,
        "overlays": write_overlays,
    })
    mine = items if shard_index is None else items[shard_index::shard_count]

    previous = {} if force else _previous_lines(run)
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
    log.info("infer: %d item(s) in this job, %d resumed from an earlier run, %d to do (backend %s on %s)",
             len(mine), len(lines), len(todo), backend.name, backend.device)
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
        rel = {"image": f"infer/images/{it.id}.jpg", "mask": f"infer/masks/{it.id}.png"}
        if write_overlays:
            rel["overlay"] = f"infer/overlays/{it.id}.jpg"
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
            reads.append((it, fp, reader.submit(prepare, it, mode, margin, class_index)))

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
            if "threshold" in info:
                base["index_threshold"] = info["threshold"]
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


def merge_infer_shards(cfg: Mapping[str, Any], run: str | os.PathLike, shard_count: int) -> dict:
    """Gather step: shards' manifests/metrics -> infer/manifest.jsonl, infer/metrics.json, masks/classes.json."""
    run = Path(run)
    infer = run / "infer"
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
                                          "image_mode", "classes", "records")}
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
