"""What a person corrects: effort of turning a pre-label into the truth, and a hint-following annotator.

Effort of one image (issue 17 §4), pre-label vs truth over labelled (non-ignore) pixels:
- `changed_px`: pixels whose label differs (what the CVAT download records as changed);
- `class_px`: of those, pixels that are plant in both but of another species (a relabel: counted
  again, on top of the changed pixel, because the person has to pick the right class as well);
- `clicks`: connected components (8-neighbour) of the wrong pixels: one correction action each.
`effort = changed_px + class_px + clicks`.

The hinted annotator (§5) corrects only inside the "review here" boxes that
`agir.select.uncertainty.review_regions` finds on the model's top1-top2 margin (contract C3) and
leaves the pre-label elsewhere.
"""

from __future__ import annotations

import numpy as np

from agir.masks import IGNORE

KEYS = ("changed_px", "class_px", "clicks", "effort")


def effort(prelabel: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    import cv2

    valid = truth != IGNORE
    wrong = (prelabel != truth) & valid
    relabel = wrong & (prelabel > 0) & (truth > 0)
    n, _ = cv2.connectedComponents(wrong.astype(np.uint8), connectivity=8)
    out = {"changed_px": int(wrong.sum()), "class_px": int(relabel.sum()), "clicks": int(n - 1)}
    out["effort"] = out["changed_px"] + out["class_px"] + out["clicks"]
    return out


def changed_fraction(prelabel: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of (non-ignore) pixels where the pre-label differs from the truth."""
    valid = truth != IGNORE
    n = int(valid.sum())
    return float((prelabel[valid] != truth[valid]).sum() / n) if n else 0.0


def top2_margin(probs) -> np.ndarray:
    """Top-1 minus top-2 probability per pixel of a (C, H, W) map (a tensor or an array)."""
    p = np.asarray(probs.numpy() if hasattr(probs, "numpy") else probs, dtype=np.float32)
    if p.shape[0] < 2:
        return np.abs(2 * p[0] - 1)
    part = np.partition(p, p.shape[0] - 2, axis=0)
    return part[-1] - part[-2]


def hinted_correction(prelabel: np.ndarray, truth: np.ndarray, boxes) -> np.ndarray:
    """The label a person leaves who fixes everything inside `boxes` ([x0, y0, x1, y1]) and nothing else."""
    out = prelabel.copy()
    for x0, y0, x1, y1 in boxes:
        region = truth[y0:y1, x0:x1]
        keep = region == IGNORE
        out[y0:y1, x0:x1] = np.where(keep, out[y0:y1, x0:x1], region)
    return out


def hinted(prelabel: np.ndarray, truth: np.ndarray, probs, threshold: float, max_regions: int) -> dict:
    """Boxes, the hinted label and its effort (pixels/components the hinted person changes)."""
    from agir.select.uncertainty import review_regions

    boxes = review_regions(top2_margin(probs), threshold=threshold, max_regions=max_regions, min_area=16, scale=1.0)
    fixed = hinted_correction(prelabel, truth, boxes)
    e = effort(prelabel, np.where(truth == IGNORE, IGNORE, fixed).astype(np.uint8))
    box_px = int(sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes))
    return {"boxes": boxes, "label": fixed, "effort": e, "box_fraction": box_px / max(1, truth.size)}
