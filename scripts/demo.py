"""`make demo`: the whole loop on the embedded demo database, without a CVAT server.

Round 1: query -> infer (vegetation-index baseline) -> preprocess (database masks) -> train.
Round 2: infer with round 1's model. Then the Snakemake report of both rounds, and the pre-label
quality of each round against the database's masks (round 2 should beat round 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Settings that keep the demo within ~15 minutes on a 2-core CPU: plant-vs-background labels, a
# small fast network, 384 px tiles. Everything else is config/config.yaml.
DEMO_SETTINGS = [
    "classes.mode=binary",
    "preprocess.tile.size=384",
    "train.arch=Linknet",
    "train.encoder=timm-mobilenetv3_small_minimal_100",
    "train.crop_size=224",
    "train.batch_size=8",
    "train.lr=0.003",
    "train.epochs=20",
    "train.max_steps_per_epoch=20",
    "train.val_every_n_epochs=5",
    "train.max_val_batches=10",
    "train.num_workers=1",
    "seg_inference.batch_size=8",
]


def sh(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--project", default="demo")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "agir.cli"]
    snake = [sys.executable, "-m", "snakemake", "--cores", str(args.cores)]
    started = time.time()
    runs = ROOT / "outputs" / "runs" / args.project
    r1, r2 = runs / "round_001", runs / "round_002"
    base = ["-o", f"project.name={args.project}"]
    for item in DEMO_SETTINGS:
        base += ["-o", item]

    # Round 1: everything up to a trained model (the demo database is generated when missing).
    sh(cli + ["run", "--cores", str(args.cores)] + base + ["-o", "project.subname=round_001"])
    # Round 2: pre-label with round 1's model (`previous`: the round before's model/best.pth, through the DAG).
    sh(cli + ["run", "--cores", str(args.cores)] + base + [
        "-o", "project.subname=round_002", "-o", "project.until=infer",
        "-o", "seg_inference.model.ckpt_path=previous",
    ])
    for rnd in (r1, r2):
        # any round's output is a target; its saved settings come with it
        sh(snake + [str((rnd / "report" / "summary.json").relative_to(ROOT)),
                    "--report", str((rnd / "report.html").relative_to(ROOT))])

    q1 = json.loads((r1 / "infer" / "quality.json").read_text())
    q2 = json.loads((r2 / "infer" / "quality.json").read_text())
    model = json.loads((r1 / "model" / "metrics.json").read_text())
    # Compare on the same images, and only on those round 1's model never trained on (its val/test
    # split images): round 1's vegetation-index pre-labels vs round 2's model pre-labels.
    unseen = {p["image_id"] for p in q2["per_image"] if p["seen_in_training"] is False}
    base = {p["image_id"]: p for p in q1["per_image"] if p["image_id"] in unseen}
    mod = {p["image_id"]: p for p in q2["per_image"] if p["image_id"] in base}

    def mean(rows: dict, key: str) -> float:
        return sum(r[key] for r in rows.values()) / max(1, len(rows))

    print("\n=== agir demo ===")
    print(f"round 1 pre-labels (vegetation index), all {q1['images_evaluated']} images: "
          f"plant IoU {q1['binary_iou_mean']}, class mIoU {q1['class_miou']}")
    print(f"round 2 pre-labels (round 1 model), all {q2['images_evaluated']} images: "
          f"plant IoU {q2['binary_iou_mean']}, class mIoU {q2['class_miou']}")
    print(f"on the {len(mod)} images the model never trained on: "
          f"plant IoU {mean(base, 'binary_iou'):.4f} -> {mean(mod, 'binary_iou'):.4f}, "
          f"class IoU {mean(base, 'class_iou'):.4f} -> {mean(mod, 'class_iou'):.4f}")
    test = model.get("test") or {}
    print(f"round 1 model test mIoU (held-out tiles): {test.get('mIoU')}")
    print(f"reports: {r1 / 'report.html'}  {r2 / 'report.html'}")
    print(f"total time: {time.time() - started:.0f} s")
    better = bool(mod) and mean(mod, "class_iou") > mean(base, "class_iou")
    print("round 2 beats round 1's baseline" if better else "WARNING: round 2 did not beat round 1's baseline")
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())
