"""CVAT upload throughput against the test server: 100 frames of 1024x1024 with 3-class masks.

Prints frames/s, the share of time spent encoding masks vs in HTTP, and a peer measured in the same
run: building the same shapes the stock way (type-checked cvat_sdk request models), which is what
this stage avoids. Run: .venv/bin/python benchmarks/cvat_bench.py [--frames 100] [--size 1024]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cvat_sdk.api_client import models  # noqa: E402
from cvat_server.server import CvatTestServer  # noqa: E402
from cvat_server.synth import CLASS_COLORS, CLASS_NAMES, cvat_config  # noqa: E402

from agir.cvat.shapes import mask_shapes  # noqa: E402
from agir.cvat.upload import _shape_models, run_upload_stage  # noqa: E402
from agir.images import write_image  # noqa: E402
from agir.masks import make_classes, read_mask, write_classes, write_mask  # noqa: E402
from agir.runs import write_jsonl  # noqa: E402


def make_run(run: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = make_classes(CLASS_NAMES, CLASS_COLORS)
    infer = run / "infer"
    lines = []
    for i in range(n):
        rid = f"bench{i:04d}"
        mask = np.zeros((size, size), np.uint8)
        for _ in range(12):  # plants of three species
            c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.ellipse(mask, c, (int(rng.integers(20, 120)), int(rng.integers(20, 120))), float(rng.integers(0, 180)), 0, 360, int(rng.integers(1, 4)), -1)
        soil = rng.integers(60, 120, (size // 8, size // 8, 3), dtype=np.uint8)
        img = cv2.resize(soil, (size, size), interpolation=cv2.INTER_LINEAR)
        img[mask > 0] = (40, 140, 50)
        write_image(infer / "images" / f"{rid}.jpg", img, 90)
        write_mask(infer / "masks" / f"{rid}.png", mask, classes)
        lines.append({"id": rid, "status": "ok"})
    write_classes(infer / "masks", classes)
    write_jsonl(infer / "manifest.jsonl", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    logging.getLogger("agir").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        make_run(run, args.frames, args.size)
        server = CvatTestServer().start()
        try:
            os.environ.update(CVAT_HOST=server.url, CVAT_USERNAME=server.username, CVAT_PASSWORD=server.password)
            cfg = cvat_config(tmp, cvat_upload={"max_frames_per_task": 50, "segment_size": 10, "chunk_size": 20})
            sys.stdout = open(os.devnull, "w")  # task URLs
            try:
                m = run_upload_stage(cfg, run)
            finally:
                sys.stdout.close()
                sys.stdout = sys.__stdout__
        finally:
            server.stop()

        # peer: the same shapes as type-checked SDK models, on a sample of frames
        sample = sorted((run / "infer" / "masks").glob("*.png"))[:10]
        ids = {1: 1, 2: 2, 3: 3}
        t0 = time.perf_counter()
        ours = [_shape_models(mask_shapes(read_mask(p), 0, ids)) for p in sample]
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in sample:
            for s in mask_shapes(read_mask(p), 0, ids):
                models.LabeledShapeRequest(type=models.ShapeType("mask"), frame=0, label_id=s["label_id"], points=s["points"], occluded=False, z_order=0, source="auto", attributes=[])
        t_peer = time.perf_counter() - t0

    seconds = m["seconds"]
    print(f"cvat upload: {m['frames']} frames of {args.size}x{args.size}, {m['shapes']} mask shapes, {m['tasks']} tasks, {m['bytes'] / 2**20:.1f} MiB")
    print(f"cvat upload: {m['frames_per_s']:.1f} frames/s ({seconds:.2f} s; target >= 10 frames/s)")
    print(
        f"cvat upload: time share: mask encoding {m['encode_seconds'] / seconds:.1%}, "
        f"HTTP {m['http_seconds'] / seconds:.1%} ({m['requests']} requests), other {1 - (m['encode_seconds'] + m['http_seconds']) / seconds:.1%}"
    )
    print(
        f"cvat upload: shape building per frame: ours {1000 * t_ours / len(sample):.1f} ms vs type-checked SDK models "
        f"{1000 * t_peer / len(sample):.1f} ms (ratio {t_peer / max(t_ours, 1e-9):.1f}x); {sum(len(x) for x in ours)} shapes"
    )


if __name__ == "__main__":
    main()
