"""How much people changed the pre-labels: the per-round number that says whether the model improves.

For a frame, `changed_fraction` is the share of pixels whose class differs between the uploaded
pre-label and the refined mask. For a label, `changed_fraction` is 1 - IoU of that label's pixels
before and after (0 = untouched, 1 = completely redrawn); pixels counted as ignore (255) in either
mask are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from agir.masks import IGNORE


def frame_change(pre: np.ndarray, post: np.ndarray, names: Mapping[int, str]) -> dict:
    """Changed pixels of one frame; `pre` already remapped into `post`'s index space."""
    if pre.shape != post.shape:
        return {"changed_fraction": None, "reason": f"pre-label size {pre.shape} != refined {post.shape}"}
    valid = (pre != IGNORE) & (post != IGNORE)
    n = int(valid.sum())
    changed = int(((pre != post) & valid).sum())
    per_label = {}
    for idx, name in names.items():
        a = (pre == idx) & valid
        b = (post == idx) & valid
        union = int((a | b).sum())
        if union == 0:
            continue
        inter = int((a & b).sum())
        per_label[name] = {"pre_pixels": int(a.sum()), "post_pixels": int(b.sum()), "changed_pixels": union - inter, "union": union}
    return {"changed_fraction": changed / n if n else 0.0, "changed_pixels": changed, "pixels": n, "labels": per_label}


def summarise_changes(frames: Iterable[Mapping]) -> dict:
    """Aggregate per-frame results: mean frame fraction, pixel-weighted overall and per-label (1 - IoU)."""
    frames = [f for f in frames if f.get("changed_fraction") is not None]
    if not frames:
        return {"frames_compared": 0}
    labels: dict[str, dict] = {}
    for f in frames:
        for name, s in f["labels"].items():
            acc = labels.setdefault(name, {"changed_pixels": 0, "union": 0, "pre_pixels": 0, "post_pixels": 0})
            for k in acc:
                acc[k] += s[k]
    per_label = {
        name: {**acc, "changed_fraction": acc["changed_pixels"] / acc["union"] if acc["union"] else 0.0}
        for name, acc in sorted(labels.items())
    }
    total = sum(f["pixels"] for f in frames)
    return {
        "frames_compared": len(frames),
        "frames_changed": sum(1 for f in frames if f["changed_pixels"] > 0),
        "changed_fraction_mean": float(np.mean([f["changed_fraction"] for f in frames])),
        "changed_fraction_pixels": sum(f["changed_pixels"] for f in frames) / total if total else 0.0,
        "labels": per_label,
    }


def label_pixels(mask: np.ndarray, names: Mapping[int, str]) -> dict[str, int]:
    counts = np.bincount(mask.ravel(), minlength=256)
    return {name: int(counts[idx]) for idx, name in names.items() if counts[idx]}
