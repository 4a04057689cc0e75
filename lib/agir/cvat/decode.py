"""CVAT annotations -> class-index masks: API shapes (RLE masks, polygons, rectangles, ellipses) and
the export archives people download by hand (Segmentation mask 1.1, CamVid 1.0, COCO 1.0).

Shapes are painted in CVAT's drawing order: ascending z_order, then creation order (id), so what a
person sees on top in CVAT wins in the mask.
"""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from cvat_sdk.masks import decode_mask

from agir.errors import AgirError
from agir.images import read_image
from agir.masks import BACKGROUND, IGNORE, color_mask_to_index, hex_to_rgb, rgb_to_hex

ARCHIVE_FORMATS = ("Segmentation mask 1.1", "CamVid 1.0", "COCO 1.0")
PAINTED_TYPES = {"mask", "polygon", "rectangle", "ellipse"}


def fill_polygon(canvas: np.ndarray, points: Sequence[float], value: int) -> None:
    pts = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int32)
    if len(pts) >= 3:
        cv2.fillPoly(canvas, [pts], int(value))


def paint_shape(canvas: np.ndarray, shape: Mapping, value: int) -> bool:
    """Paint one shape onto `canvas` (H×W uint8); False when its type carries no area."""
    h, w = canvas.shape
    kind = shape.get("type")
    pts = shape.get("points") or []
    if kind == "mask":
        bitmap = decode_mask([int(round(p)) for p in pts], image_width=w, image_height=h)
        canvas[bitmap] = value
    elif kind == "polygon":
        fill_polygon(canvas, pts, value)
    elif kind == "rectangle":
        if shape.get("rotation"):
            # rotated boxes: rasterise the rotated corners as a polygon
            x1, y1, x2, y2 = pts[:4]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            box = cv2.boxPoints(((cx, cy), (x2 - x1, y2 - y1), float(shape["rotation"])))
            fill_polygon(canvas, box.ravel().tolist(), value)
        else:
            x1, y1, x2, y2 = (int(round(v)) for v in pts[:4])
            canvas[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = value
    elif kind == "ellipse":
        cx, cy, rx, ry = pts[:4]
        axes = (int(round(abs(rx - cx))), int(round(abs(cy - ry))))
        cv2.ellipse(canvas, (int(round(cx)), int(round(cy))), axes, float(shape.get("rotation") or 0), 0, 360, int(value), -1)
    else:
        return False
    return True


def drawing_order(shapes: Iterable[Mapping]) -> list[Mapping]:
    return sorted(shapes, key=lambda s: (int(s.get("z_order") or 0), int(s.get("id") or 0)))


def rasterise(shapes: Iterable[Mapping], width: int, height: int, index_by_label_id: Mapping[int, int]) -> np.ndarray:
    """One frame's shapes -> class-index mask; labels missing from the map paint IGNORE."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    for s in drawing_order(shapes):
        if s.get("outside"):
            continue
        paint_shape(canvas, s, index_by_label_id.get(int(s["label_id"]), IGNORE))
    return canvas


def shapes_by_frame(annotations: Mapping) -> dict[int, list[dict]]:
    """Group an API annotations body (shapes and track keyframes) by frame number."""
    out: dict[int, list[dict]] = {}
    for s in annotations.get("shapes") or []:
        out.setdefault(int(s["frame"]), []).append(s)
    for t in annotations.get("tracks") or []:
        # image tasks rarely hold tracks; their keyframe shapes are taken as drawn
        for s in t.get("shapes") or []:
            out.setdefault(int(s["frame"]), []).append({**s, "label_id": t["label_id"], "id": t.get("id", 0)})
    return out


# ---------------------------------------------------------------- archives


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip, refusing absolute paths, `..` components and links (path traversal)."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise AgirError(f"{archive}: not a zip archive; export again from CVAT") from None
    with zf:
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            mode = info.external_attr >> 16
            if (
                name.startswith(("/", "\\"))
                or (len(name) > 1 and name[1] == ":")
                or ".." in parts
                or stat.S_ISLNK(mode)
                or not (root / name).resolve().is_relative_to(root)
            ):
                raise AgirError(f"{archive}: member {name!r} escapes the extraction folder; refusing this archive")
        zf.extractall(root)
    return root


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


def _read_labelmap(path: Path) -> list[dict]:
    classes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, color = line.split(":")[:2]
        if name == "background":
            continue
        rgb = [int(v) for v in color.split(",")]
        classes.append({"index": len(classes) + 1, "name": name, "color": rgb_to_hex(rgb)})
    return classes


def _read_camvid_colors(path: Path) -> list[dict]:
    classes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        name = " ".join(parts[3:])
        if name.lower() == "background":
            continue
        rgb = [int(v) for v in parts[:3]]
        classes.append({"index": len(classes) + 1, "name": name, "color": rgb_to_hex(rgb)})
    return classes


def _colour_masks(files: Iterable[Path], classes: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(files):
        out[f.stem] = color_mask_to_index(read_image(f), classes)
    return out


def _check_colours_unique(classes: list[dict], where: Path) -> None:
    seen: dict[tuple, str] = {}
    for c in classes:
        rgb = hex_to_rgb(c["color"])
        if rgb == (0, 0, 0) or rgb in seen:
            raise AgirError(
                f"{where}: label {c['name']!r} shares colour {c['color']} with "
                f"{seen.get(rgb, 'background')!r}; give labels distinct colours in CVAT or use cvat_download.format: api"
            )
        seen[rgb] = c["name"]


def decode_segmentation_mask(root: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    labelmap = next(root.rglob("labelmap.txt"), None)
    if labelmap is None:
        raise AgirError(f"{root}: no labelmap.txt; is this a 'Segmentation mask 1.1' export?")
    classes = _read_labelmap(labelmap)
    _check_colours_unique(classes, labelmap)
    files = [p for p in root.rglob("*.png") if p.parent.name == "SegmentationClass"]
    return _colour_masks(files, classes), classes


def decode_camvid(root: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    colors = next(root.rglob("label_colors.txt"), None)
    if colors is None:
        raise AgirError(f"{root}: no label_colors.txt; is this a 'CamVid 1.0' export?")
    classes = _read_camvid_colors(colors)
    _check_colours_unique(classes, colors)
    files = [p for p in root.rglob("*.png") if p.parent.name.endswith("annot")]
    return _colour_masks(files, classes), classes


def rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (the LEB128-like form pycocotools writes)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = 1
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_rle_to_bitmap(rle: Mapping, height: int, width: int) -> np.ndarray:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts)
    h, w = (int(v) for v in rle.get("size", (height, width)))
    values = (np.arange(len(counts)) % 2).astype(bool)
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise AgirError(f"COCO RLE covers {flat.size} pixels, expected {h}×{w}; the export is damaged")
    return flat.reshape((w, h)).T  # column-major


def decode_coco(root: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    files = sorted(root.rglob("instances_*.json"))
    if not files:
        raise AgirError(f"{root}: no annotations/instances_*.json; is this a 'COCO 1.0' export?")
    masks: dict[str, np.ndarray] = {}
    classes: list[dict] = []
    for f in files:
        doc = json.loads(f.read_text(encoding="utf-8"))
        cat_index = {}
        for cat in doc.get("categories", []):
            names = [c["name"] for c in classes]
            if cat["name"] not in names:
                classes.append({"index": len(classes) + 1, "name": cat["name"], "color": None})
                names.append(cat["name"])
            cat_index[cat["id"]] = names.index(cat["name"]) + 1
        images = {img["id"]: img for img in doc.get("images", [])}
        for img in images.values():
            masks[_stem(img["file_name"])] = np.zeros((int(img["height"]), int(img["width"])), dtype=np.uint8)
        for ann in doc.get("annotations", []):
            img = images.get(ann["image_id"])
            if img is None:
                continue
            canvas = masks[_stem(img["file_name"])]
            value = cat_index.get(ann["category_id"], IGNORE)
            seg = ann.get("segmentation")
            if isinstance(seg, Mapping):
                canvas[coco_rle_to_bitmap(seg, *canvas.shape)] = value
            elif isinstance(seg, list):
                for poly in seg:
                    fill_polygon(canvas, poly, value)
            elif ann.get("bbox"):
                x, y, w, h = ann["bbox"]
                paint_shape(canvas, {"type": "rectangle", "points": [x, y, x + w, y + h]}, value)
    from agir.masks import color_for_name

    for c in classes:
        c["color"] = color_for_name(c["name"])
    return masks, classes


DECODERS = {
    "Segmentation mask 1.1": decode_segmentation_mask,
    "CamVid 1.0": decode_camvid,
    "COCO 1.0": decode_coco,
}


def decode_archive(archive: str | Path, fmt: str, workdir: str | Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Extract (safely) and decode an export -> ({frame stem: class-index mask}, classes of that index space)."""
    if fmt not in DECODERS:
        raise AgirError(f"cvat_download.format {fmt!r} unsupported; use api or one of {', '.join(ARCHIVE_FORMATS)}")
    root = safe_extract(archive, workdir)
    return DECODERS[fmt](root)


__all__ = [
    "ARCHIVE_FORMATS",
    "BACKGROUND",
    "decode_archive",
    "rasterise",
    "safe_extract",
    "shapes_by_frame",
]
