"""Planning the inference stage's units of work ("items") and reading each one's pixels.

In `full_image` mode there is one item per image_id (all its cutouts in the query together), in
`cutout` mode one per record (its bbox plus a margin, clamped to the frame), or one per file with
`seg_inference.source.images`. Item ids name the output files, so they come from `agir.names.file_stem`,
which never maps two different ids to one name.
"""

from __future__ import annotations

import glob as globmod
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from agir import records as recs
from agir.errors import AgirError
from agir.images import read_image
from agir.masks import BINARY_CLASS, IGNORE
from agir.names import file_stem

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

    def names(self) -> set[str]:
        """Every id this item answers to: its own, its image's and its records' (for `only_ids`)."""
        return {self.id, *self.record_ids, *([self.image_id] if self.image_id else [])}


def _fullres(rec: Mapping) -> tuple[int, int] | None:
    try:
        w, h = int(float(rec.get("fullres_width"))), int(float(rec.get("fullres_height")))
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


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
        base = file_stem(Path(f).stem)
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
        # each record's box and class parsed once: every cutout of an image lists the image's other boxes
        parsed = {id(r): (recs.bbox_xywh(r), recs.class_for_record(r, cfg)) for r in records}
        for rec in records:
            rid = _record_id(rec, cfg)
            iid = recs.image_id(rec, cfg)
            others = [r for r in by_image.get(iid, []) if r is not rec]
            boxes = [parsed[id(r)] for r in others if parsed[id(r)][0]]
            boxes.append(parsed[id(rec)])
            item = Item(len(items), file_stem(rid), None, iid, [rid], boxes=boxes, target=len(boxes) - 1,
                        fullres=_fullres(rec))
            if parsed[id(rec)][0] is None:
                item.error = (f"record {rid}: bbox_xywh missing or invalid; cutout mode needs one "
                              "(or use image_mode=full_image)")
            _resolve_source(item, rec, cfg)
            items.append(item)
    elif mode == "full_image":
        for iid, group in recs.group_by_image(records, cfg).items():
            rids = [_record_id(r, cfg) for r in group]
            boxes = [(recs.bbox_xywh(r), recs.class_for_record(r, cfg)) for r in group]
            item = Item(len(items), file_stem(iid), None, iid, rids, boxes=boxes, fullres=_fullres(group[0]))
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


def plan_items(cfg: Mapping, run: Path, only_ids: Iterable[str] | None = None) -> tuple[list[Item], list[Mapping] | None]:
    """Every item of this run in a stable order (shards take every N-th), and the records if any.

    With `only_ids`, only items whose id, image id or one of whose record ids is listed are kept
    (indices stay those of the full plan, so manifests of a subset still sort like the full run).
    """
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
    if only_ids is not None:
        wanted = {str(i) for i in ([only_ids] if isinstance(only_ids, str) else only_ids)}
        items = [it for it in items if it.names() & wanted]
    return items, records


def crop_box(bbox: tuple[int, int, int, int], margin: float, width: int, height: int) -> Box | None:
    """bbox_xywh grown by `margin` x its size on every side, clamped to the frame; None if outside."""
    x, y, w, h = bbox
    mx, my = margin * w, margin * h
    x0, y0 = max(0, int(np.floor(x - mx))), max(0, int(np.floor(y - my)))
    x1, y1 = min(width, int(np.ceil(x + w + mx))), min(height, int(np.ceil(y + h + my)))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def scale_box(bbox: tuple[int, int, int, int], sx: float, sy: float) -> Box:
    """bbox_xywh scaled by (sx, sy) -> (x0, y0, x1, y1)."""
    x, y, w, h = bbox
    return int(round(x * sx)), int(round(y * sy)), int(round((x + w) * sx)), int(round((y + h) * sy))


def _scale_xyxy(b: Box, s: float) -> Box:
    return int(round(b[0] * s)), int(round(b[1] * s)), int(round(b[2] * s)), int(round(b[3] * s))


def reduced_size(width: int, height: int, max_side: int | None) -> tuple[tuple[int, int], float]:
    """((w, h), scale) so the longer side is <= max_side (never enlarged; None/0 = unchanged)."""
    if not max_side or max(width, height) <= int(max_side):
        return (width, height), 1.0
    s = int(max_side) / max(width, height)
    return (max(1, round(width * s)), max(1, round(height * s))), s


@dataclass
class Prepared:
    rgb: np.ndarray  # the pixels the model sees (crop or full frame, reduced when scoring)
    crop: Box  # in the source image's pixels
    size: tuple[int, int]  # source (width, height)
    boxes: list[tuple[Box | None, int]]  # in the pixels of `rgb`, class index
    top: tuple[Box | None, int] | None
    read_s: float
    notes: list[str]
    scale: float = 1.0  # rgb pixels per crop pixel (< 1 when reduced for scoring)


def prepare(item: Item, mode: str, margin: float, class_index: Mapping[str, int] | None,
            max_side: int | None = None) -> Prepared:
    """Read the image, work out the crop and the per-record boxes in crop pixels (reader thread).

    With `max_side`, the crop is downscaled (INTER_AREA) so its longer side is at most that.
    """
    t0 = time.perf_counter()
    if item.error:
        raise AgirError(item.error)
    full = read_image(item.source)
    h, w = full.shape[:2]
    # bboxes are in full-resolution pixels; a smaller (e.g. downscaled) file gets them scaled
    sx, sy = (w / item.fullres[0], h / item.fullres[1]) if item.fullres else (1.0, 1.0)
    scaled = [(None if b is None else scale_box(b, sx, sy), c) for b, c in item.boxes]
    crop: Box = (0, 0, w, h)
    if mode == "cutout" and item.target is not None:
        x0, y0, x1, y1 = scaled[item.target][0]
        bbox = (x0, y0, x1 - x0, y1 - y0)
        got = crop_box(bbox, margin, w, h)
        if got is None:
            raise AgirError(
                f"{item.id}: bbox {list(item.boxes[item.target][0])} lies outside the {w}x{h} image {item.source}")
        crop = got
    cx0, cy0, cx1, cy1 = crop
    rgb = full if crop == (0, 0, w, h) else np.ascontiguousarray(full[cy0:cy1, cx0:cx1])
    del full
    (rw, rh), scale = reduced_size(cx1 - cx0, cy1 - cy0, max_side)
    if scale != 1.0:
        rgb = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_AREA)
    notes: list[str] = []
    boxes: list[tuple[Box | None, int]] = []
    for b, name in scaled if class_index is not None else []:
        idx = class_index.get(name)
        if idx is None:
            notes.append(f"class {name!r} not in the class list (classes.names): its pixels are ignore (255)")
            idx = IGNORE
        local = None if b is None else (b[0] - cx0, b[1] - cy0, b[2] - cx0, b[3] - cy0)
        if local is not None and scale != 1.0:
            local = _scale_xyxy(local, scale)
        boxes.append((local, idx))
    top = None
    if mode == "cutout" and item.target is not None and boxes:
        top = boxes.pop(item.target)
    return Prepared(rgb, crop, (w, h), boxes, top, time.perf_counter() - t0, sorted(set(notes)), scale)
