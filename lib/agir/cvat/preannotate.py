"""Pre-annotations: class-index masks encoded as CVAT shapes (agir.cvat.shapes) and sent to a task in chunks."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from cvat_sdk.api_client import models

from agir.cvat.client import CvatSession
from agir.cvat.shapes import mask_shapes
from agir.masks import read_mask


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
            z_order=0,
            source="auto",
            attributes=[],
            _check_type=False,
        )
        for s in shapes
    ]


def upload_annotations(
    session: CvatSession,
    cfg: Mapping[str, Any],
    task_id: int,
    frames: list[dict],
    label_by_index: Mapping[int, int],
    timing: dict,
) -> dict:
    """Encode pre-labels and send them in chunks: PUT (replace) first, then PATCH create."""
    up = cfg.get("cvat_upload") or {}
    chunk = int(up.get("chunk_size", 20))
    api = session.api
    stats = {"shapes": 0, "bytes": 0}
    first = True
    for start in range(0, len(frames), chunk):
        t0 = time.perf_counter()
        shapes: list[dict] = []
        for i, f in enumerate(frames[start : start + chunk], start=start):
            shapes.extend(
                mask_shapes(
                    read_mask(f["mask"]),
                    i,
                    label_by_index,
                    shape=up.get("shape", "mask"),
                    instances=bool(up.get("instances", False)),
                    polygon_tolerance=float(up.get("polygon_tolerance", 1.5)),
                )
            )
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
    return stats

