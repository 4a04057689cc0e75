"""GPU check (run where CUDA exists): the train stage on the GPU with bf16 mixed precision, then the
self-describing best.pth reloaded on CUDA and on the CPU, predicting the same masks through the tiled
predictor (CUDA with autocast). Prints one line per check and exits non-zero on a failed check.

    python benchmarks/gpu_check.py [--precision bf16-mixed] [--epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "tests" / "train")]

from conftest import make_dataset  # noqa: E402  (tests/train: the tiny synthetic dataset builder)

from agir.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from agir.images import read_image  # noqa: E402
from agir.infer.predictor import TiledPredictor  # noqa: E402
from agir.runs import read_json  # noqa: E402
from agir.train.stage import run_train_stage  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cpu-dry-run", action="store_true", help="check this script itself on a CPU-only machine")
    args = ap.parse_args()
    gpu = "cpu" if args.cpu_dry_run else "cuda"
    if args.cpu_dry_run:
        args.precision = "32-true"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check")
        return 2
    print(f"gpu_check: {torch.cuda.get_device_name(0) if gpu == 'cuda' else 'CPU dry run'}, torch {torch.__version__}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / "gpu" / "round_001"
        make_dataset(run, per_split={"train": 48, "val": 8, "test": 8}, size=128)
        cfg = {
            "project": {"name": "gpu", "subname": "round_001"},
            "io": {"out_root": str(Path(tmp) / "runs")},
            "train": {"arch": "Unet", "encoder": "resnet34", "epochs": args.epochs, "batch_size": 16,
                      "crop_size": 128, "accelerator": "gpu" if gpu == "cuda" else "cpu", "devices": 1, "precision": args.precision,
                      "num_workers": 2, "lr": 0.003},
        }
        started = time.time()
        metrics = run_train_stage(cfg, run)
        print(f"gpu_check: train on GPU ({args.precision}) {time.time() - started:.1f} s, "
              f"test mIoU {read_json(run / 'model' / 'metrics.json').get('test', {}).get('miou')}")
        ckpt = load_checkpoint(run / "model" / "best.pth")
        img = read_image(sorted((run / "dataset" / "test" / "images").iterdir())[0])
        img = np.tile(img, (4, 4, 1))  # 512 x 512: several tiles
        preds = {}
        for device in (gpu, "cpu"):
            model = model_from_checkpoint(ckpt, device)
            pred = TiledPredictor(model, head=ckpt.get("head", "softmax"), mean=ckpt["normalization"]["mean"],
                                  std=ckpt["normalization"]["std"], tile_size=128, overlap=0.25, batch_size=8,
                                  device=device, amp=True)
            preds[device], _ = pred.predict(img)
        agree = float((preds[gpu] == preds["cpu"]).mean())
        print(f"gpu_check: best.pth reloaded; CUDA (autocast) vs CPU prediction agreement {agree:.4f}")
        ok &= agree >= 0.99
        ok &= bool(metrics) and (run / "model" / "best.pth").exists()
        if gpu == "cuda":
            print(f"gpu_check: peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print("gpu_check: OK" if ok else "gpu_check: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
