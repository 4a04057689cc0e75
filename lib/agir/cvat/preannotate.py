"""Pre-annotations: class-index masks encoded as CVAT shapes (agir.cvat.shapes) and sent to a task in chunks,
plus, with `cvat_upload.review_hints`, one rectangle of the label `review` per "review here" region of a frame."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cvat_sdk.api_client import models

from agir.cvat.client import CvatSession
from agir.cvat.shapes import mask_shapes
from agir.logs import get_logger
from agir.masks import read_mask

log = get_logger("cvat.upload")


def shape_models(shapes: list[dict]) -> list:
    # _check_type=False: the points lists are ours (ints/floats) and the per-element type check
    # of the generated models costs ~15 ms per RLE shape
    return [
        models.LabeledShapeRequest(
            type=models.ShapeType(s["type"]),
            frame=s["frame"],
            label_id=s["label_id"],
            points=s["points"],
            occluded=False,
            z_order=int(s.get("z_order", 0)),
            source="auto",
            attributes=[],
            _check_type=False,
        )
        for s in shapes
    ]


def review_shapes(regions: Sequence[Any], frame: int, label_id: int, width: int, height: int) -> tuple[list[dict], int]:
    """Rectangles for "review here" boxes `[x0, y0, x1, y1]` (pixels of the uploaded image, x1/y1 exclusive, which
    is CVAT's bottom-right corner); clipped to the frame. Returns (shapes, number of unusable boxes skipped)."""
    out, bad = [], 0
    for r in regions:
        try:
            x0, y0, x1, y1 = (int(round(float(v))) for v in r[:4])
        except (TypeError, ValueError):
            bad += 1
            continue
        x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
        y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
        if x1 <= x0 or y1 <= y0:
            bad += 1
            continue
        # above the pre-labels, so they stay visible in CVAT
        out.append({"type": "rectangle", "frame": frame, "label_id": int(label_id), "points": [float(x0), float(y0), float(x1), float(y1)], "z_order": 1})
    return out, bad


def upload_annotations(
    session: CvatSession,
    cfg: Mapping[str, Any],
    task_id: int,
    frames: list[dict],
    label_by_index: Mapping[int, int],
    timing: dict,
    review_label: int | None = None,
) -> dict:
    """Encode pre-labels and send them in chunks: PUT (replace) first, then PATCH create.

    `review_label`: the label id of `review` when review hints are on; each frame's `review_regions` become its
    rectangles. `shapes` in the result counts every shape sent, `review_boxes` the rectangles among them.
    """
    up = cfg.get("cvat_upload") or {}
    chunk = int(up.get("chunk_size", 20))
    api = session.api
    stats = {"shapes": 0, "bytes": 0, "review_boxes": 0}
    first = True
    skipped = 0
    for start in range(0, len(frames), chunk):
        t0 = time.perf_counter()
        shapes: list[dict] = []
        for i, f in enumerate(frames[start : start + chunk], start=start):
            mask = read_mask(f["mask"])
            shapes.extend(
                mask_shapes(
                    mask,
                    i,
                    label_by_index,
                    shape=up.get("shape", "mask"),
                    instances=bool(up.get("instances", False)),
                    polygon_tolerance=float(up.get("polygon_tolerance", 1.5)),
                )
            )
            if review_label is not None and f.get("review_regions"):
                boxes, bad = review_shapes(f["review_regions"], i, review_label, mask.shape[1], mask.shape[0])
                shapes.extend(boxes)
                stats["review_boxes"] += len(boxes)
                skipped += bad
        body = shape_models(shapes)
        timing["encode_seconds"] += time.perf_counter() - t0
        stats["shapes"] += len(shapes)
        stats["bytes"] += sum(len(json.dumps(s["points"])) + 120 for s in shapes)  # JSON body (+ per-shape fields)
        if first:
            data = models.LabeledDataRequest(version=0, shapes=body, tags=[], tracks=[], _check_type=False)
            session.call(f"set annotations of task {task_id}", api.tasks_api.update_annotations, task_id, labeled_data_request=data)
            first = False
        elif body:
            data = models.PatchedLabeledDataRequest(version=0, shapes=body, tags=[], tracks=[], _check_type=False)
            session.call(
                f"add annotations to task {task_id}",
                api.tasks_api.partial_update_annotations,
                "create",
                task_id,
                patched_labeled_data_request=data,
            )
    if skipped:
        log.warning("task %s: %d review region(s) in infer/manifest.jsonl were empty or malformed; skipped", task_id, skipped)
    return stats

