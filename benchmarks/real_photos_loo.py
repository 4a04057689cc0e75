"""Leave-one-out on the real SemiField photos: does a small trained model pre-label better than the index?

For each of the photos in `../shared/data/semif_examples` (one per species), train on the others and
score plant IoU on the held-out photo for:
- `baseline`  the vegetation-index pre-labeler inference uses (agir.infer.baseline, config defaults);
- `model_<variant>`  a model trained by agir's train stage with (a) the demo's settings
  (scripts/demo.py) and (b) the improved settings below, predicted with agir's TiledPredictor;
- `combined_<variant>`  agir.prelabeler.combine_prelabels: the model where its top probability >=
  `--threshold` (fixed before the run, not tuned on the held-out photos), the index elsewhere.

The dataset is built the way preprocess does (native-resolution tiles of 384 px, tiles with >= 1 %
plant plus ~10 % of the plant-free ones; every 6th kept tile is validation). Both variants get the
same number of optimiser steps, so the comparison is about settings, not compute. The ratio printed
is each pre-labeler's mean plant IoU over the baseline's, measured in the same run.

    .venv/bin/python benchmarks/real_photos_loo.py [--epochs 8 --steps 20] [--photos barley,maize]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from agir.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from agir.images import read_image, write_image  # noqa: E402
from agir.infer.baseline import plant_mask  # noqa: E402
from agir.infer.predictor import TiledPredictor  # noqa: E402
from agir.masks import write_classes, write_mask  # noqa: E402
from agir.prelabeler import combine_prelabels  # noqa: E402
from agir.runs import write_json  # noqa: E402
from agir.tiling import tile_grid  # noqa: E402
from agir.train.stage import run_train_stage  # noqa: E402

EXAMPLES = ROOT.parent / "shared" / "data" / "semif_examples"
TILE = 384

# (a) scripts/demo.py's train settings (its val cadence too; epochs and steps come from the command line).
DEMO = {
    "arch": "Linknet", "encoder": "timm-mobilenetv3_small_minimal_100", "crop_size": 224, "batch_size": 8,
    "lr": 0.003, "val_every_n_epochs": 5, "max_val_batches": 10,
    "num_workers": 0,  # the demo uses 1; a loader process only competes for the 2 shared cores here
}
# (b) improved for few real photos: whole native-scale tiles as crops (more context per sample, at the
# cost of a smaller batch so each step costs the same), stronger colour jitter (species differ in
# hue and lighting more than 6 photos show), a wider scale range (plant sizes differ by species).
IMPROVED = {
    **DEMO, "crop_size": 320, "batch_size": 4,
    "augment": {"enabled": True, "flip": True, "rotate90": True, "scale": [0.6, 1.5], "color_jitter": 0.4},
}
VARIANTS = {"demo": DEMO, "improved": IMPROVED}


def load_pairs(folder: Path, names: list[str] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for img_file in sorted(folder.glob("*.jpg")):
        if img_file.stem.endswith("_mask") or (names and img_file.stem not in names):
            continue
        masks = sorted(p for p in folder.glob(f"{img_file.stem}_mask.*") if p.suffix.lower() in (".png", ".jpg"))
        if not masks:
            continue
        rgb = read_image(img_file)
        h, w = rgb.shape[:2]
        bgr = cv2.imread(str(masks[0]), cv2.IMREAD_COLOR)
        # the README: resize with nearest neighbour; JPEG masks carry noise, so threshold brightness
        plant = (cv2.resize(bgr, (w, h), interpolation=cv2.INTER_NEAREST).max(axis=2) > 60).astype(np.uint8)
        out[img_file.stem] = (rgb, plant)
    return out


def plant_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def build_dataset(root: Path, photos: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> int:
    """Preprocess-like dataset folder of native 384 px tiles (binary 'plant')."""
    rng = np.random.default_rng(seed)
    rows, pix, fg = [], [], 0
    for name, (rgb, plant) in photos.items():
        for k, t in enumerate(tile_grid(*plant.shape, TILE, 0.0)):
            m = plant[t.y0:t.y1, t.x0:t.x1]
            if m.mean() < 0.01 and rng.random() > 0.1:
                continue  # preprocess defaults: min_foreground 0.01, keep_background_fraction 0.1
            sid = f"{name}_{k:03d}"
            img = rgb[t.y0:t.y1, t.x0:t.x1]
            write_image(root / "train" / "images" / f"{sid}.jpg", img)
            write_mask(root / "train" / "masks" / f"{sid}.png", m)
            rows.append({"sample_id": sid, "split": "train", "image": f"train/images/{sid}.jpg",
                         "mask": f"train/masks/{sid}.png", "source_image": name})
            pix.append(img.reshape(-1, 3)[::7].astype(np.float64) / 255.0)
            fg += int(m.sum())
    for i, r in enumerate(rows):
        if i % 6 == 5:  # validation only picks the best epoch; the held-out photo is never seen
            r["split"] = "val"
    import pandas as pd

    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    write_classes(root, [{"index": 1, "name": "plant", "color": "#00c000"}])
    allpix = np.concatenate(pix)
    total = sum(int(np.prod(p[1].shape)) for p in photos.values())
    write_json(root / "stats.json", {
        "mean": allpix.mean(0).tolist(), "std": allpix.std(0).tolist(),
        "class_pixel_frequencies": {"background": 1 - fg / total, "plant": fg / total},
        "geometry": {"mode": "tile", "size": TILE, "overlap": 0.0},
    })
    return len(rows)


def predict(ckpt_path: Path, rgb: np.ndarray) -> np.ndarray:
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, "cpu")
    pred = TiledPredictor(model, head=ckpt["head"], mean=ckpt["normalization"]["mean"],
                          std=ckpt["normalization"]["std"], tile_size=TILE, overlap=0.25, batch_size=8,
                          device="cpu", channels_last=False)
    _, info = pred.predict(rgb, return_probs=True)
    return info["probs"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, default=EXAMPLES)
    ap.add_argument("--photos", default="", help="comma-separated subset of held-out photos (default: all)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch")
    ap.add_argument("--threshold", type=float, default=0.9, help="combined pre-labeler: model confidence")
    ap.add_argument("--variants", default="demo,improved")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy shared machine)")
    ap.add_argument("--out", type=Path, default=None, help="write per-photo results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    photos = load_pairs(args.examples, None)
    if len(photos) < 2:
        print(f"{args.examples}: need at least 2 <species>.jpg + mask pairs, found {len(photos)}")
        return 2
    held = [p for p in args.photos.split(",") if p] or list(photos)
    variants = [v for v in args.variants.split(",") if v]
    thresholds = sorted({0.6, 0.75, 0.9, args.threshold})
    print(f"photos: {list(photos)}; held out in turn: {held}; variants {variants}; "
          f"{args.epochs} epochs x {args.steps} steps; combined threshold {args.threshold}", flush=True)
    results: dict[str, dict[str, float]] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="agir_loo_") as tmp:
        for name in held:
            t0 = time.time()
            rgb, truth = photos[name]
            train = {k: v for k, v in photos.items() if k != name}
            base, _ = plant_mask(rgb)  # config defaults: exg, otsu, open 1, close 1
            row = {"baseline": plant_iou(base, truth)}
            for variant in variants:
                run = Path(tmp) / name / variant
                n = build_dataset(run / "dataset", train, seed=0)
                cfg = {"train": {**VARIANTS[variant], "epochs": args.epochs, "max_steps_per_epoch": args.steps,
                                 "early_stopping_patience": 1000}}
                run_train_stage(cfg, run, resume=False, progress=False)
                probs = predict(run / "model" / "best.pth", rgb)
                row[f"model_{variant}"] = plant_iou(probs.argmax(0), truth)
                for t in thresholds:
                    row[f"combined_{variant}@{t}"] = plant_iou(combine_prelabels(probs, base, t), truth)
                row[f"samples_{variant}"] = n
            results[name] = row
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            print(f"{name}: {json.dumps(shown)} ({time.time() - t0:.0f}s)", flush=True)
            running = {k: round(float(np.mean([r[k] for r in results.values()])), 4)
                       for k in row if not k.startswith("samples_")}
            print(f"  running means over {len(results)} held-out photo(s): {json.dumps(running)}", flush=True)

    keys = [k for k in next(iter(results.values())) if not k.startswith("samples_")]
    means = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
    print("\nper-photo plant IoU (held out):")
    print("photo".ljust(18) + "".join(k[:22].rjust(24) for k in keys))
    for name, r in results.items():
        print(name.ljust(18) + "".join(f"{r[k]:24.4f}" for k in keys))
    print("mean".ljust(18) + "".join(f"{means[k]:24.4f}" for k in keys))
    print()
    print(f"loo_mean_plant_iou_baseline {means['baseline']:.4f}")
    for v in variants:
        print(f"loo_mean_plant_iou_model_{v} {means[f'model_{v}']:.4f} "
              f"(ratio to baseline {means[f'model_{v}'] / means['baseline']:.3f})")
    for v in variants:
        c = means[f"combined_{v}@{args.threshold}"]
        print(f"loo_mean_plant_iou_combined_{v} {c:.4f} (model where max prob >= {args.threshold}, index elsewhere; "
              f"ratio to baseline {c / means['baseline']:.3f})")
    best_v = variants[-1]
    print(f"loo_mean_plant_iou_combined {means[f'combined_{best_v}@{args.threshold}']:.4f} ({best_v})")
    print(f"total {time.time() - started:.0f}s")
    if args.out:
        write_json(args.out, {"results": results, "means": means, "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
