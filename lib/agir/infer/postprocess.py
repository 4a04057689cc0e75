"""Mask clean-up after prediction: small-component removal and hole filling (class-index masks)."""

from __future__ import annotations

import cv2
import numpy as np

from agir.masks import BACKGROUND, IGNORE


def present_classes(mask: np.ndarray) -> list[int]:
    """Class indices present in a mask, background and ignore excluded (bincount: no sort of the frame)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return [int(c) for c in np.flatnonzero(counts) if c not in (BACKGROUND, IGNORE)]


def remove_small_components(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """Set plant regions smaller than `min_area` px to background; returns (mask, regions removed).

    Components are taken per class (8-connected), so a small patch of one species touching a large
    plant of another is still judged on its own size.
    """
    if min_area <= 0:
        return mask, 0
    removed = 0
    for cls in present_classes(mask):
        binary = (mask == cls).view(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_32S)
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
        if small.size:
            lut = np.zeros(n, dtype=bool)
            lut[small] = True
            mask[lut[labels]] = BACKGROUND
            removed += int(small.size)
        del labels
    return mask, removed


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background holes enclosed by one class with that class (holes touching the frame stay)."""
    h, w = mask.shape
    for cls in present_classes(mask):
        region = (mask == cls).view(np.uint8) * 255
        # Flood the outside from a 1-px border; whatever the flood cannot reach is enclosed.
        padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
        padded[1:-1, 1:-1] = region
        ff = np.zeros((h + 4, w + 4), dtype=np.uint8)
        cv2.floodFill(padded, ff, (0, 0), 255)
        enclosed = padded[1:-1, 1:-1] == 0
        mask[enclosed & (mask == BACKGROUND)] = cls
    return mask


def postprocess(mask: np.ndarray, min_area: int = 0, fill: bool = False) -> tuple[np.ndarray, int]:
    """fill holes (optional) then drop small components; returns (mask, components removed)."""
    if fill:
        mask = fill_holes(mask)
    return remove_small_components(mask, int(min_area))
