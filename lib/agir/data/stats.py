"""Dataset statistics: per-channel mean/std over valid (non-ignore) pixels and class pixel frequencies.

Partial results are (n, mean, M2) triples per channel, merged with Chan et al.'s parallel
formula, so worker processes summarise their tiles and the parent combines them exactly without
the cancellation error of sum-of-squares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from agir.masks import IGNORE


def pixel_moments(image: np.ndarray, mask: np.ndarray) -> dict:
    """{'n', 'mean'[C], 'm2'[C]} of an RGB uint8 tile on a 0-1 scale over pixels whose mask is not ignore."""
    valid = mask != IGNORE
    px = image[valid].astype(np.float64) / 255.0
    n = int(px.shape[0])
    channels = image.shape[2] if image.ndim == 3 else 1
    if n == 0:
        return {"n": 0, "mean": [0.0] * channels, "m2": [0.0] * channels}
    px = px.reshape(n, channels)
    mean = px.mean(axis=0)
    m2 = ((px - mean) ** 2).sum(axis=0)
    return {"n": n, "mean": mean.tolist(), "m2": m2.tolist()}


def merge_moments(parts: Iterable[Mapping]) -> dict:
    n, mean, m2 = 0, None, None
    for p in parts:
        if not p or p["n"] == 0:
            continue
        pm, pm2 = np.asarray(p["mean"], dtype=np.float64), np.asarray(p["m2"], dtype=np.float64)
        if n == 0:
            n, mean, m2 = p["n"], pm, pm2
            continue
        total = n + p["n"]
        delta = pm - mean
        mean = mean + delta * p["n"] / total
        m2 = m2 + pm2 + delta**2 * n * p["n"] / total
        n = total
    if n == 0:
        return {"n": 0, "mean": [], "m2": []}
    return {"n": n, "mean": mean.tolist(), "m2": m2.tolist()}


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> list[int]:
    """Pixels per dataset index 0..K, then ignore as the last entry."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return [int(c) for c in counts[: num_classes + 1]] + [int(counts[IGNORE])]


def dataset_stats(moments: Mapping, counts: Sequence[int], classes: Sequence[Mapping]) -> dict:
    """stats.json content: mean/std (0-1, per channel), class pixel counts and frequencies (of valid pixels)."""
    n = moments.get("n", 0)
    std = [math.sqrt(v / n) for v in moments["m2"]] if n else []
    names = ["background"] + [c["name"] for c in classes]
    valid = sum(counts[: len(names)])
    return {
        "split": "train",
        "pixels": int(n),
        "mean": [float(v) for v in moments.get("mean", [])] if n else [],
        "std": std,
        "class_pixel_counts": {name: int(counts[i]) for i, name in enumerate(names)},
        "ignore_pixels": int(counts[len(names)]) if len(counts) > len(names) else 0,
        "class_pixel_frequencies": {name: (counts[i] / valid if valid else 0.0) for i, name in enumerate(names)},
    }
