"""Reading dataset/: validation of the folder, per-sample checks, padding collate, class weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from agir.errors import AgirError
from agir.images import write_image
from agir.masks import IGNORE, read_mask, write_mask
from agir.runs import read_json, write_json
from agir.train.datamodule import (
    SegDataModule,
    SegDataset,
    inverse_frequency_weights,
    load_dataset_info,
    pad_collate,
)

from .conftest import make_dataset


def test_reads_splits_classes_and_stats(tmp_path):
    ds = make_dataset(tmp_path, {"train": 3, "val": 2, "test": 1})
    info = load_dataset_info(ds)
    assert info.counts() == {"train": 3, "val": 2, "test": 1}
    assert info.class_names == ["barley", "maize"] and info.num_outputs == 3
    sample = SegDataset(info, "val")[1]
    x, y, i = sample
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64)
    assert y.dtype == torch.int64 and i == 1
    np.testing.assert_array_equal(y.numpy(), read_mask(ds / "val/masks/val_001.png"))
    # normalised with the dataset stats: train pixels average ~0
    xs = torch.stack([SegDataset(info, "train")[k][0] for k in range(3)])
    ys = torch.stack([SegDataset(info, "train")[k][1] for k in range(3)])
    valid = (ys != IGNORE).unsqueeze(1).expand_as(xs)
    assert abs(float(xs[valid].mean())) < 0.05


def test_fingerprint_follows_content(tmp_path):
    ds = make_dataset(tmp_path, {"train": 2, "val": 1, "test": 1})
    before = load_dataset_info(ds).fingerprint()
    assert load_dataset_info(ds).fingerprint() == before
    idx = pd.read_csv(ds / "index.csv")
    idx.loc[0, "split"] = "val"
    idx.to_csv(ds / "index.csv", index=False)
    assert load_dataset_info(ds).fingerprint() != before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ds: (ds / "index.csv").unlink(), "run the preprocess stage"),
        (lambda ds: (ds / "stats.json").unlink(), "statistics missing"),
        (lambda ds: (ds / "classes.json").unlink(), "classes.json missing"),
        (lambda ds: pd.read_csv(ds / "index.csv").drop(columns=["mask"]).to_csv(ds / "index.csv", index=False),
         r"columns \['mask'\] missing"),
        (lambda ds: pd.read_csv(ds / "index.csv").assign(split="holdout").to_csv(ds / "index.csv", index=False),
         "split values"),
        (lambda ds: write_json(ds / "stats.json", {"mean": [0.5, 0.5], "std": [0.1, 0.1]}), "3 channel values"),
        (lambda ds: write_json(ds / "stats.json", {"mean": [0.5] * 3, "std": [0.1, 0.0, 0.1]}), "<= 0"),
        (lambda ds: write_json(ds / "classes.json", [{"index": 2, "name": "maize", "color": "#00ff00"}]),
         "1..K without gaps"),
    ],
)
def test_broken_dataset_folder_is_one_clear_error(tmp_path, damage, message):
    ds = make_dataset(tmp_path, {"train": 2, "val": 1, "test": 1})
    damage(ds)
    with pytest.raises(AgirError, match=message):
        load_dataset_info(ds)


def test_bad_samples_name_the_file(tmp_path):
    ds = make_dataset(tmp_path, {"train": 2, "val": 1, "test": 1})
    info = load_dataset_info(ds)
    m = read_mask(ds / "train/masks/train_000.png").copy()
    m[0, 0] = 7  # no class 7 in a two-class dataset
    write_mask(ds / "train/masks/train_000.png", m)
    with pytest.raises(AgirError, match=r"train_000.png: mask values \[7\]"):
        SegDataset(info, "train")[0]
    write_image(ds / "train/images/train_001.png", np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(AgirError, match="train_001.png: mask is 64x64 but its image is 64x32"):
        SegDataset(info, "train")[1]


def test_pad_collate_pads_to_divisor_with_ignore():
    a = (torch.ones(3, 40, 50), torch.zeros(40, 50, dtype=torch.int64), 0)
    b = (torch.ones(3, 64, 30), torch.ones(64, 30, dtype=torch.int64), 1)
    x, y, ids = pad_collate([a, b])
    assert x.shape == (2, 3, 64, 64) and y.shape == (2, 64, 64)
    assert ids.tolist() == [0, 1]
    assert (y[0, 40:] == IGNORE).all() and (y[0, :, 50:] == IGNORE).all() and (y[0, :40, :50] == 0).all()
    assert (x[0, :, 40:] == 0).all() and (x[0, :, :40, :50] == 1).all()


def test_inverse_frequency_weights(tmp_path):
    ds = make_dataset(tmp_path, {"train": 2, "val": 1, "test": 1})
    stats = read_json(ds / "stats.json")
    stats["class_pixel_frequencies"] = {"background": 0.8, "barley": 0.15, "maize": 0.05}
    write_json(ds / "stats.json", stats)
    w = inverse_frequency_weights(load_dataset_info(ds))
    assert len(w) == 3 and abs(np.mean(w) - 1) < 1e-9
    assert w[0] < w[1] < w[2]
    assert w[2] / w[0] == pytest.approx(16.0)
    del stats["class_pixel_frequencies"]
    write_json(ds / "stats.json", stats)
    with pytest.raises(AgirError, match="class_weights=false"):
        inverse_frequency_weights(load_dataset_info(ds))


def test_datamodule_loaders(tmp_path):
    ds = make_dataset(tmp_path, {"train": 5, "val": 3, "test": 2}, size=72)
    cfg = {"batch_size": 2, "num_workers": 0, "crop_size": 48, "augment": {"enabled": True}}
    dm = SegDataModule(load_dataset_info(ds), cfg)
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 64, 64)  # 48 crop padded to a multiple of 32 with ignore
    assert (y[:, 48:] == IGNORE).all()
    assert len(dm.train_dataloader()) == 2  # partial last batch dropped in training
    x, y, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (1, 3, 96, 96)  # whole 72 px tiles, padded
