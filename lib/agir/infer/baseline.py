"""Round-1 pre-labels without a model: a vegetation index, a threshold and a morphological clean-up.

Indices are computed on RGB scaled to [0, 1] (not chromatic coordinates: on the SemiField bench
photos the unnormalised Excess Green separates plants from soil, pots and shadow much better,
mean IoU 0.92 vs 0.86; see benchmarks/baseline_iou.py):

- `exg`      ExG = 2G - R - B
- `exg_exr`  ExG - ExR, with ExR = 1.4R - G

The threshold is Otsu's (estimated on a copy downscaled to `max_side`, which is what makes it
cheap on 60 MP frames) or a fixed index value. The index and the mask are computed at full
resolution in row strips so memory stays a few bytes per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from agir.errors import AgirError

INDICES = ("exg", "exg_exr")
STRIP_ROWS = 1024


def vegetation_index(rgb: np.ndarray, kind: str = "exg") -> np.ndarray:
    """float32 index map of an RGB uint8 image."""
    if kind not in INDICES:
        raise AgirError(f"seg_inference.baseline.index={kind!r}: use one of {', '.join(INDICES)}")
    f = rgb.astype(np.float32) * (1.0 / 255.0)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    exg = 2.0 * g - r - b
    if kind == "exg":
        return exg
    return exg - (1.4 * r - g)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a float array (histogram over its 0.5-99.5 percentile range)."""
    v = values[np.isfinite(values)].ravel()
    if v.size == 0:
        return 0.0
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi - lo < 1e-6:
        return float(hi)  # flat image: nothing stands out, so nothing is plant
    q = np.clip((v - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(lo + t / 255.0 * (hi - lo))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def plant_mask(
    rgb: np.ndarray,
    index: str = "exg",
    threshold: str | float = "otsu",
    open_radius: int = 1,
    close_radius: int = 1,
    max_side: int = 2048,
) -> tuple[np.ndarray, float]:
    """(uint8 0/1 plant mask, threshold used) for an RGB uint8 image."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise AgirError(f"baseline needs an RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    if isinstance(threshold, str):
        if threshold.strip().lower() != "otsu":
            raise AgirError(f"seg_inference.baseline.threshold={threshold!r}: use 'otsu' or a number such as 0.1")
        scale = min(1.0, float(max_side) / max(h, w))
        small = rgb if scale >= 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        thr = otsu_threshold(vegetation_index(small, index))
    else:
        thr = float(threshold)
    mask = np.empty((h, w), dtype=np.uint8)
    for y in range(0, h, STRIP_ROWS):
        mask[y : y + STRIP_ROWS] = vegetation_index(rgb[y : y + STRIP_ROWS], index) > thr
    if open_radius > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(open_radius))
    if close_radius > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(close_radius))
    return mask, thr


def _paint_order(boxes: Sequence, top, h: int, w: int):
    """(x0, y0, x1, y1, cls) clipped to the frame: largest box first, so the smaller box wins, and `top` last.

    A box of None is the whole frame; empty boxes are skipped.
    """

    def area(item: tuple) -> int:
        box = item[0]
        return h * w + 1 if box is None else (box[2] - box[0]) * (box[3] - box[1])

    for box, cls in sorted(boxes, key=area, reverse=True) + ([top] if top is not None else []):
        x0, y0, x1, y1 = (0, 0, w, h) if box is None else box
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 > x0 and y1 > y0:
            yield x0, y0, x1, y1, cls


def paint_boxes(
    plant: np.ndarray,
    boxes: Sequence[tuple[tuple[int, int, int, int] | None, int]],
    top: tuple[tuple[int, int, int, int] | None, int] | None = None,
) -> np.ndarray:
    """Class-index mask: plant pixels inside each box get that box's class index.

    `boxes` are (x0, y0, x1, y1) in the image's pixels (None = the whole image) with a class index.
    Where boxes overlap, the smaller box wins: a small box inside a large one is almost always a
    separate small plant (a weed under a crop's canopy), while the large box's plant owns the rest.
    Plant pixels outside every box stay background: the database only vouches for its boxes.
    `top` (the cutout's own record in cutout mode) is painted last, over every other box.
    """
    h, w = plant.shape
    out = np.zeros((h, w), dtype=np.uint8)
    for x0, y0, x1, y1, cls in _paint_order(boxes, top, h, w):
        sub = plant[y0:y1, x0:x1].astype(bool)
        out[y0:y1, x0:x1][sub] = cls
    return out


def label_unknown_species(
    model_mask: np.ndarray,
    shape: np.ndarray,
    boxes: Sequence[tuple[tuple[int, int, int, int] | None, int]],
    top: tuple[tuple[int, int, int, int] | None, int] | None,
    known: set[int] | frozenset[int],
) -> np.ndarray:
    """A model's class-index mask where the records of species the model does not know get their own label.

    Inside the box of a record whose class index is not in `known`, the model's plant shape (`shape`, 0/1)
    takes that record's class and everything else becomes background: a known species' label never lands
    on another species' plants. Inside a known species' box the model's own prediction stands. Boxes are
    visited as in `paint_boxes` (largest first, the smaller box wins, `top` last); outside every box the
    model's prediction stands.
    """
    h, w = model_mask.shape
    out = model_mask.copy()
    for x0, y0, x1, y1, cls in _paint_order(boxes, top, h, w):
        if cls in known:
            out[y0:y1, x0:x1] = model_mask[y0:y1, x0:x1]
        else:
            out[y0:y1, x0:x1] = np.where(shape[y0:y1, x0:x1].astype(bool), np.uint8(cls), np.uint8(0))
    return out
