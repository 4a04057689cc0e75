"""Dataset statistics over valid pixels of the train split only."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from agir.data import run_preprocess_stage
from agir.data.stats import dataset_stats, mean_std, merge_moments, pixel_moments
from agir.images import read_image
from agir.masks import make_classes, read_mask
from agir.runs import read_json


def test_moments_ignore_ignored_pixels_and_merge_exactly():
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(4):
        img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        mask = rng.choice(np.array([0, 1, 255], np.uint8), (16, 16))
        img[mask == 255] = 255  # padding-like extremes must not move the statistics
        tiles.append((img, mask))
    merged = merge_moments(pixel_moments(i, m) for i, m in tiles)
    valid = np.concatenate([i[m != 255] for i, m in tiles]).astype(np.float64) / 255
    assert merged["n"] == len(valid)
    mean, std = mean_std(merged)
    assert np.allclose(mean, valid.mean(0)) and np.allclose(std, valid.std(0))
    halves = merge_moments([merge_moments(pixel_moments(i, m) for i, m in tiles[:2]),
                            merge_moments(pixel_moments(i, m) for i, m in tiles[2:])])
    assert halves == merged  # exact: merging order does not matter
    stats = dataset_stats(merged, [10, 30, 5], make_classes(["plant"]))
    assert np.allclose(stats["std"], valid.std(0))
    assert stats["class_pixel_frequencies"] == {"background": 0.25, "plant": 0.75}
    assert stats["ignore_pixels"] == 5


def test_stage_stats_use_train_split_valid_pixels(kit):
    cfg = kit.cfg(**{"preprocess.tile.size": 32})
    records: list = []
    for i in range(8):  # 20x20 images in 32 px tiles: most of every tile is ignore padding
        kit.add_db_image(cfg, records, f"IMG_{i}", 20, 20, [(3, 0, 0, 5 + i, 10)], ["barley"], seed=i)
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    run_preprocess_stage(cfg, run)
    stats = read_json(run / "dataset" / "stats.json")
    with open(run / "dataset" / "index.csv") as fh:
        train = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    assert train
    px = np.concatenate([
        read_image(run / "dataset" / r["image"])[read_mask(run / "dataset" / r["mask"]) != 255] for r in train
    ]).astype(np.float64) / 255
    assert stats["pixels"] == len(px) == 400 * len(train)
    assert stats["mean"] == pytest.approx(px.mean(0).tolist(), abs=1e-9)
    assert stats["std"] == pytest.approx(px.std(0).tolist(), abs=1e-9)
    plant = sum(int(r["px_barley"]) for r in train)
    assert stats["class_pixel_counts"] == {"background": len(px) - plant, "barley": plant}
    assert stats["class_pixel_frequencies"]["barley"] == pytest.approx(plant / len(px))
    assert set(stats) >= {"mean", "std", "class_pixel_frequencies"}
