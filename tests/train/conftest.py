"""Tiny synthetic `dataset/` folders in the layout the preprocess stage writes (DESIGN.md §3)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from agir.images import write_image
from agir.masks import IGNORE, make_classes, write_classes, write_mask
from agir.runs import write_json

CLASS_NAMES = ["barley", "maize"]


def make_dataset(
    root: Path,
    per_split: dict[str, int] | None = None,
    size: int = 64,
    names: list[str] | None = None,
    seed: int = 0,
    ignore_border: int = 4,
) -> Path:
    """Write `root/dataset/` with soil-brown backgrounds and green/yellow discs (one class each).

    Class 1 discs are bright green, class 2 discs yellow-ish, so a small network can learn them
    in a few steps; a border of IGNORE imitates tile padding.
    """
    names = names or CLASS_NAMES
    per_split = per_split or {"train": 8, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    ds = root / "dataset"
    classes = make_classes(names)
    write_classes(ds, classes)
    rows = []
    counts = np.zeros(len(names) + 1, dtype=np.int64)
    pix = []
    yy, xx = np.mgrid[:size, :size]
    colours = [(40, 200, 40), (220, 210, 40), (200, 60, 200)]
    for split, n in per_split.items():
        for i in range(n):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = (120, 90, 60)
            img = np.clip(img + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for k in range(1, len(names) + 1):
                cy, cx = rng.integers(size // 5, size - size // 5, 2)
                r = rng.integers(size // 8, size // 4)
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                mask[disc] = k
                img[disc] = colours[(k - 1) % len(colours)]
            if ignore_border:
                mask[:, -ignore_border:] = IGNORE
                img[:, -ignore_border:] = 0
            sid = f"{split}_{i:03d}"
            write_image(ds / split / "images" / f"{sid}.png", img)
            write_mask(ds / split / "masks" / f"{sid}.png", mask, classes)
            rows.append({"sample_id": sid, "split": split, "image": f"{split}/images/{sid}.png",
                         "mask": f"{split}/masks/{sid}.png", "image_id": f"img{split}{i}", "round": "round_001"})
            if split == "train":
                valid = mask != IGNORE
                pix.append(img[valid].reshape(-1, 3) / 255.0)
                counts += np.bincount(mask[valid].ravel(), minlength=len(names) + 1)[: len(names) + 1]
    with open(ds / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    allpix = np.concatenate(pix) if pix else np.full((1, 3), 0.5)
    freqs = counts / max(1, counts.sum())
    write_json(ds / "stats.json", {
        "mean": allpix.mean(0).tolist(),
        "std": (allpix.std(0) + 1e-3).tolist(),
        "class_pixel_frequencies": dict(zip(["background", *names], freqs.tolist())),
        "geometry": {"mode": "tile", "size": size, "overlap": 0.25},
    })
    return ds


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny convolutions gain nothing from threads, and on a busy 2-core box OpenMP spin-waiting
    between threads makes them 5x slower; one thread keeps these tests fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo" / "round_001"
    make_dataset(run)
    return run


def tiny_cfg(**overrides) -> dict:
    train = {
        # the smallest smp pairing (0.9M parameters) keeps each CPU training step and checkpoint tiny
        "arch": "Linknet", "encoder": "timm-mobilenetv3_small_minimal_100", "epochs": 2, "batch_size": 4, "crop_size": 64,
        "accelerator": "cpu", "devices": 1, "num_workers": 0, "warmup_epochs": 0.5, "lr": 3e-3,
        "early_stopping_patience": 5,
    }
    train.update(overrides)
    return {"project": {"name": "demo", "subname": "round_001"}, "io": {"out_root": "runs"}, "train": train}
