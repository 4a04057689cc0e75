"""Tiny synthetic inference outputs (infer/manifest.jsonl, images, masks, classes.json) for CVAT tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agir.images import write_image
from agir.masks import make_classes, write_classes, write_mask
from agir.runs import write_jsonl

CLASS_NAMES = ["barley", "cereal rye", "hairy vetch"]
CLASS_COLORS = {"barley": "#d66edd", "cereal rye": "#2a9d8f", "hairy vetch": "#e9c46a"}


def synth_mask(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, k + 1))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(2, min(h, w) // 12), max(3, min(h, w) // 4)))
        cv2.circle(mask, (cx, cy), r, cls, -1)
    return mask


def make_infer_outputs(
    run: Path,
    n: int = 12,
    size: tuple[int, int] = (64, 80),
    names: list[str] | None = None,
    seed: int = 0,
    failed: int = 0,
    prefix: str = "rec",
    review_regions: bool = False,
) -> dict[str, np.ndarray]:
    """Write `n` ok records (+ `failed` failed ones) under run/infer; return {id: mask}. Ids are `{prefix}{i:04d}`.

    `review_regions`: each manifest line gets two "review here" boxes [x0, y0, x1, y1] (the second one reaches
    past the bottom-right corner, which upload clips), as inference writes them (contract C3)."""
    rng = np.random.default_rng(seed)
    names = names or CLASS_NAMES
    classes = make_classes(names, CLASS_COLORS)
    infer = Path(run) / "infer"
    h, w = size
    masks, lines = {}, []
    for i in range(n):
        rid = f"{prefix}{i:04d}"
        mask = synth_mask(rng, h, w, len(names))
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        write_image(infer / "images" / f"{rid}.jpg", img, 90)
        write_mask(infer / "masks" / f"{rid}.png", mask, classes)
        masks[rid] = mask
        line = {"id": rid, "image": f"infer/images/{rid}.jpg", "mask": f"infer/masks/{rid}.png", "status": "ok"}
        if review_regions:
            line["review_regions"] = [[2 + i, 3, 20 + i, 25], [w - 10, h - 8, w + 5, h + 5]]
        lines.append(line)
    for i in range(failed):
        lines.append({"id": f"bad{i}", "image": None, "mask": None, "status": "failed", "reason": "unreadable image"})
    write_classes(infer / "masks", classes)
    write_jsonl(infer / "manifest.jsonl", lines)
    return masks


def cvat_config(tmp_path: Path, **sections) -> dict:
    """A config dict with the sections the CVAT stages read (tests fill in the rest)."""
    cfg = {
        "project": {"name": "demo", "subname": "round_001"},
        "io": {"out_root": str(tmp_path / "runs")},
        "classes": {"mode": "species", "names": None},
        "cvat": {
            "host": None,
            "keys_file": str(tmp_path / "no-keys.yaml"),
            "organization": None,
            "project_id": None,
            "project_name": "agir-test",
            "timeout_seconds": 10,
            "retries": 6,
            "backoff_seconds": 0.01,
            "poll_seconds": 0.05,
        },
        "cvat_upload": {
            "max_frames_per_task": 5,
            "segment_size": 3,
            "task_name_template": "{project}/{subname}/part-{n:03d}",
            "image_quality": 90,
            "shape": "mask",
            "instances": False,
            "chunk_size": 4,
            "polygon_tolerance": 0.0,
            "task_options": {},
            "data_options": {},
        },
        "cvat_download": {
            "task_ids": None,
            "project_id": None,
            "required_status": "completed",
            "wait": False,
            "poll_seconds": 0.05,
            "timeout_minutes": 1,
            "format": "api",
            "refresh": False,
        },
    }
    for key, values in sections.items():
        cfg[key].update(values)
    return cfg
