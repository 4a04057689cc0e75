"""Class-index mask -> CVAT shapes (pre-annotations): native RLE masks or polygons.

A shape here is a plain dict in the server's LabeledShapeRequest form; `upload` turns lists of them
into SDK request models. Empty classes produce no shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
from cvat_sdk.masks import encode_mask

from agir.masks import BACKGROUND, IGNORE


def bbox_exclusive(bitmap: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x1, y1, x2, y2) of the True pixels — the exclusive box `encode_mask` expects; None if empty."""
    rows = np.flatnonzero(bitmap.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(bitmap.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _mask_shape(bitmap: np.ndarray, box: tuple[int, int, int, int], frame: int, label_id: int) -> dict:
    points = encode_mask(bitmap, bbox=list(box))
    return {"type": "mask", "frame": frame, "label_id": label_id, "points": points}


def mask_shapes(
    mask: np.ndarray,
    frame: int,
    label_ids: Mapping[int, int],
    *,
    shape: str = "mask",
    instances: bool = False,
    polygon_tolerance: float = 1.5,
) -> list[dict]:
    """Shapes for every class present in `mask` (class index -> CVAT label id in `label_ids`)."""
    out: list[dict] = []
    # bincount, not np.unique: no sort of a megapixel array
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    for idx in present.tolist():
        if idx in (BACKGROUND, IGNORE) or idx not in label_ids:
            continue
        bitmap = mask == idx
        lid = int(label_ids[idx])
        if shape == "polygon":
            out.extend(_polygons(bitmap, frame, lid, polygon_tolerance))
        elif instances:
            # connected components on the class's own bbox crop: labels are cheap on small crops
            box = bbox_exclusive(bitmap)
            x1, y1, x2, y2 = box
            n, comp, stats, _ = cv2.connectedComponentsWithStats(bitmap[y1:y2, x1:x2].astype(np.uint8), connectivity=8)
            for c in range(1, n):
                cx, cy, cw, ch = (int(v) for v in stats[c, :4])
                full = np.zeros_like(bitmap)
                sub = comp[cy : cy + ch, cx : cx + cw] == c
                full[y1 + cy : y1 + cy + ch, x1 + cx : x1 + cx + cw] = sub
                out.append(_mask_shape(full, (x1 + cx, y1 + cy, x1 + cx + cw, y1 + cy + ch), frame, lid))
        else:
            box = bbox_exclusive(bitmap)
            if box is not None:
                out.append(_mask_shape(bitmap, box, frame, lid))
    return out


def _polygons(bitmap: np.ndarray, frame: int, label_id: int, tolerance: float) -> list[dict]:
    # outer contours only: CVAT polygons have no holes, so holes inside a plant are filled
    contours, _ = cv2.findContours(bitmap.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for cnt in contours:
        if tolerance > 0:
            cnt = cv2.approxPolyDP(cnt, tolerance, True)
        pts = cnt.reshape(-1, 2)
        if len(pts) < 3:
            continue
        # vertices are boundary pixel coordinates; decode.fill_polygon fills them inclusively
        flat = pts.astype(np.float64).ravel().tolist()
        out.append({"type": "polygon", "frame": frame, "label_id": label_id, "points": flat})
    return out
