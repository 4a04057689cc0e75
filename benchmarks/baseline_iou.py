"""Quality of the round-1 vegetation-index baseline on real SemiField photos.

For each `{species}.jpg` in ../shared/data/semif_examples, the repository's mask is resized to the
image with nearest-neighbour sampling (any non-black pixel is plant; the JPEG-stored mask is
thresholded), the baseline runs with the stage's default settings (config/config.yaml), and the
IoU of the plant class is printed per image, then the mean.

    .venv/bin/python benchmarks/baseline_iou.py [EXAMPLES_DIR] [-o seg_inference.baseline.index=exg_exr ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from agir.config import load_config
from agir.images import read_image
from agir.infer.baseline import plant_mask
from agir.infer.postprocess import postprocess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".." / "shared" / "data" / "semif_examples"
JPEG_MASK_LEVEL = 40  # compression noise around black stays below this


def truth_mask(path: Path, height: int, width: int) -> np.ndarray:
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**34))
    m = cv2.imread(str(path), cv2.IMREAD_COLOR)
    m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    level = JPEG_MASK_LEVEL if path.suffix.lower() in (".jpg", ".jpeg") else 0
    return m.max(axis=2) > level


def evaluate(folder: Path, overrides: list[str] | tuple = (), verbose: bool = False) -> dict[str, float]:
    cfg = load_config(REPO / "config" / "config.yaml", list(overrides))
    b = cfg["seg_inference"]["baseline"]
    post = cfg["seg_inference"]["post_process"]
    scores = {}
    for img_path in sorted(Path(folder).glob("*.jpg")):
        if img_path.stem.endswith("_mask"):
            continue
        masks = sorted(Path(folder).glob(f"{img_path.stem}_mask.*"))
        if not masks:
            continue
        rgb = read_image(img_path)
        t0 = time.perf_counter()
        pred, thr = plant_mask(rgb, b["index"], b["threshold"], b["open_radius"], b["close_radius"], b["max_side"])
        pred, _ = postprocess(pred, post["min_area"], post["fill_holes"])
        secs = time.perf_counter() - t0
        truth = truth_mask(masks[0], *rgb.shape[:2])
        p = pred.astype(bool)
        iou = float((p & truth).sum() / max((p | truth).sum(), 1))
        scores[img_path.stem] = iou
        if verbose:
            print(f"{img_path.stem:18s} {rgb.shape[1]}x{rgb.shape[0]}  threshold={thr:.4f}  IoU={iou:.4f}  ({secs:.2f} s)")
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT_DIR))
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted.key=value config override")
    args = ap.parse_args(argv)
    scores = evaluate(Path(args.folder), args.override, verbose=True)
    if not scores:
        print(f"no image/mask pairs in {args.folder}", file=sys.stderr)
        return 1
    print(f"mean IoU over {len(scores)} images: {np.mean(list(scores.values())):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
