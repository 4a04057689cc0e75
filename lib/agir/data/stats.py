"""Dataset statistics: per-channel mean/std over valid (non-ignore) pixels and class pixel frequencies.

Partial results are exact integer sums (count, sum and sum of squares of 0-255 values per
channel), so worker processes summarise their tiles, the parent adds them up, and the mean and
variance come out exactly, in any order, without floating-point cancellation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from agir.masks import IGNORE


def pixel_moments(image: np.ndarray, mask: np.ndarray) -> dict:
    """{'n', 'sum'[C], 'sumsq'[C]} of an RGB uint8 tile (0-255 integers) over pixels whose mask is not ignore."""
    valid = mask != IGNORE
    channels = image.shape[2] if image.ndim == 3 else 1
    flat = image.reshape(-1, channels)
    px = flat if valid.all() else flat[valid.ravel()]
    wide = px.astype(np.int64)
    return {
        "n": int(px.shape[0]),
        "sum": [int(v) for v in wide.sum(axis=0)],
        "sumsq": [int(v) for v in np.einsum("ij,ij->j", wide, wide)],
    }


def merge_moments(parts: Iterable[Mapping]) -> dict:
    n, total, total_sq = 0, None, None
    for p in parts:
        if not p or p["n"] == 0:
            continue
        if total is None:
            total, total_sq = [0] * len(p["sum"]), [0] * len(p["sum"])
        n += p["n"]
        total = [a + b for a, b in zip(total, p["sum"])]
        total_sq = [a + b for a, b in zip(total_sq, p["sumsq"])]
    return {"n": n, "sum": total or [], "sumsq": total_sq or []}


def mean_std(moments: Mapping) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std on the 0-1 scale (exact integer arithmetic until the division)."""
    n = moments.get("n", 0)
    if not n:
        return [], []
    mean = [s / n / 255.0 for s in moments["sum"]]
    # n^2 * var = n * sum(x^2) - (sum x)^2, exactly, in Python integers
    std = [math.sqrt((n * q - s * s) / (n * n)) / 255.0 for s, q in zip(moments["sum"], moments["sumsq"])]
    return mean, std


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> list[int]:
    """Pixels per dataset index 0..K, then ignore as the last entry."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return [int(c) for c in counts[: num_classes + 1]] + [int(counts[IGNORE])]


def dataset_stats(moments: Mapping, counts: Sequence[int], classes: Sequence[Mapping]) -> dict:
    """stats.json content: mean/std (0-1, per channel), class pixel counts and frequencies (of valid pixels)."""
    mean, std = mean_std(moments)
    names = ["background"] + [c["name"] for c in classes]
    valid = sum(counts[: len(names)])
    return {
        "split": "train",
        "pixels": int(moments.get("n", 0)),
        "mean": mean,
        "std": std,
        "class_pixel_counts": {name: int(counts[i]) for i, name in enumerate(names)},
        "ignore_pixels": int(counts[len(names)]) if len(counts) > len(names) else 0,
        "class_pixel_frequencies": {name: (counts[i] / valid if valid else 0.0) for i, name in enumerate(names)},
    }
