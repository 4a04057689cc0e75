"""Reduced-resolution scoring for active selection: rank agreement and speed-up against full resolution.

On the demo pool (`agir.demo.generate_demo_data`), a small segmentation model (trained here in a
few minutes on the first `--train` demo images, or `--ckpt best.pth`) scores the rest
— the pool — with the production path: `TiledPredictor.predict(rgb, stats=UncertaintyAccumulator)`.
Each pool image is scored at full resolution (the peer) and after an INTER_AREA downscale to each
`--sides` value (what `select.score_max_side` does). Printed per side:

- `spearman_<side>_<statistic>`: Spearman rank correlation of the reduced-resolution scores with the
  full-resolution scores over the pool (1 = the same ranking, so the same images get selected);
- `top<k>_overlap_<side>`: fraction of the full-resolution top-k (by entropy_plant) also in the reduced top-k;
- `speedup_<side>`: full-resolution scoring time / reduced-resolution scoring time (same run, same model).

    .venv/bin/python benchmarks/select_score_bench.py [--images 16] [--train 4] [--sides 512 256] [--ckpt PATH]
        [--steps 80] [--crop 128] [--device cpu] [--threads N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.stats import spearmanr

from agir.checkpoint import load_checkpoint, model_from_checkpoint
from agir.demo import generate_demo_data
from agir.demo.generate import SEMIF_DIR
from agir.images import read_image
from agir.infer.predictor import TiledPredictor, resolve_device
from agir.masks import read_classes, read_mask
from agir.select.uncertainty import STAT_KEYS, UncertaintyAccumulator

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
STATS = [k for k in STAT_KEYS if k != "plant_fraction"] + ["plant_fraction"]


def demo_pairs(root: Path) -> tuple[list[tuple[Path, Path | None]], list[dict]]:
    """(image, semantic mask or None) for every demo image, and the masks' classes.json."""
    pairs, classes = [], []
    for img in sorted(root.glob(f"storage/*/{SEMIF_DIR}/*/images/*.jpg")):  # SemiF frames (Field has no masks)
        mask = img.parent.parent / "meta_masks" / "semantic_masks" / f"{img.stem}.png"
        pairs.append((img, mask if mask.is_file() else None))
        if mask.is_file() and not classes:
            classes = read_classes(mask.parent)
    return pairs, classes


def train_small(pairs, classes, steps: int, device: torch.device, crop: int = 256, seed: int = 0,
                encoder: str = "resnet18", batch: int = 2):
    """A small Unet (3 encoder stages, narrow decoder) trained from scratch on random crops; class values -> 1..K.

    Small so that the benchmark runs in minutes on a CPU; the ranking question does not need a good model,
    only one whose uncertainty varies between images.
    """
    import segmentation_models_pytorch as smp

    lut = np.zeros(256, np.int64)
    for k, c in enumerate(classes, start=1):
        lut[int(c["index"])] = k
    data = [(read_image(i), lut[read_mask(m)]) for i, m in pairs if m is not None]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = smp.Unet(encoder, encoder_weights=None, encoder_depth=3, decoder_channels=(64, 32, 16),
                     classes=len(classes) + 1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            rgb, lab = data[rng.integers(len(data))]
            y0 = rng.integers(0, rgb.shape[0] - crop + 1)
            x0 = rng.integers(0, rgb.shape[1] - crop + 1)
            xs.append(rgb[y0 : y0 + crop, x0 : x0 + crop])
            ys.append(lab[y0 : y0 + crop, x0 : x0 + crop])
        x = torch.from_numpy(np.stack(xs)).to(device).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(np.stack(ys)).to(device)
        loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"# train step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    return model.eval(), [c["name"] for c in classes]


def score(predictor: TiledPredictor, names: list[str], rgb: np.ndarray, side: int | None) -> tuple[dict, float]:
    t0 = time.perf_counter()
    if side:  # the resize is part of reduced-resolution scoring's cost
        h, w = rgb.shape[:2]
        f = side / max(h, w)
        if f < 1:
            rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    acc = UncertaintyAccumulator(names)
    predictor.predict(rgb, stats=acc)
    return acc.result(), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="demo SemiF images: the first --train train, the rest are the pool")
    ap.add_argument("--train", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--encoder", default="resnet18", help="encoder of the model trained here")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1066)
    ap.add_argument("--sides", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--ckpt", default=None, help="best.pth to score with instead of training one")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", default=None, help="folder for the demo data (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        t0 = time.perf_counter()
        generate_demo_data(root, images=args.images, seed=0, width=args.width, height=args.height)
        print(f"# demo data: {args.images} images {args.width}x{args.height} in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        pairs, classes = demo_pairs(root)
        n_train = min(args.train, len(pairs) - 2)
        train, pool = pairs[:n_train], pairs[n_train:]
        if args.ckpt:
            ck = load_checkpoint(Path(args.ckpt))
            model, names = model_from_checkpoint(ck, device), list(ck["classes"])
            mean, std, head = ck["normalization"]["mean"], ck["normalization"]["std"], ck.get("head", "softmax")
        else:
            model, names = train_small(train, classes, args.steps, device, crop=args.crop, encoder=args.encoder)
            mean, std, head = MEAN, STD, "softmax"
        predictor = TiledPredictor(model, head=head, mean=mean, std=std, tile_size=args.tile, overlap=0.25,
                                   batch_size=1 if device.type == "cpu" else 8, device=device)
        images = [read_image(i) for i, _ in pool]
        score(predictor, names, images[0], None)  # warm-up
        full, full_s = zip(*(score(predictor, names, rgb, None) for rgb in images))
        out: dict = {"pool": len(images), "classes": len(names), "full_s": round(sum(full_s), 2)}
        for side in args.sides:
            red, red_s = zip(*(score(predictor, names, rgb, side) for rgb in images))
            out[f"speedup_{side}"] = round(sum(full_s) / sum(red_s), 2)
            for stat in STATS:
                a = [r[stat] for r in full]
                b = [r[stat] for r in red]
                rho = spearmanr(a, b).statistic if np.std(a) > 0 and np.std(b) > 0 else float("nan")
                out[f"spearman_{side}_{stat}"] = round(float(rho), 3)
            k = min(args.top, len(images))
            ta = set(np.argsort([-r["entropy_plant"] for r in full], kind="stable")[:k])
            tb = set(np.argsort([-r["entropy_plant"] for r in red], kind="stable")[:k])
            out[f"top{k}_overlap_{side}"] = round(len(ta & tb) / k, 2)
            out[f"reduced_s_{side}"] = round(sum(red_s), 2)
        out["entropy_plant_full_range"] = [round(min(r["entropy_plant"] for r in full), 3),
                                           round(max(r["entropy_plant"] for r in full), 3)]
    for key, val in out.items():
        print(f"{key}: {json.dumps(val)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
