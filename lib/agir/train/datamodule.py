"""Reading a preprocessed `dataset/` folder (DESIGN.md §3) for training.

Layout read here (written by the preprocess stage):
- `index.csv`: one row per sample with at least `sample_id, split, image, mask` (paths relative to
  `dataset/`); other columns (source record, round, tile geometry, class counts) are carried along.
- `classes.json`: the dataset class list (indices 1..K; 0 = background, 255 = ignore).
- `stats.json`: `mean`, `std` per channel on the 0-1 scale (train split, valid pixels) and
  `class_pixel_frequencies` {name: fraction}.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as TF
from torch.utils.data import DataLoader, Dataset

from agir.errors import AgirError
from agir.images import read_image
from agir.masks import IGNORE, read_classes, read_mask
from agir.runs import read_json
from agir.train.augment import PairTransform, build_train_transform, normalize, to_tv

REQUIRED_COLUMNS = ("sample_id", "split", "image", "mask")
SPLITS = ("train", "val", "test")
# smp encoders downsample by 32; batches are padded up to a multiple of it.
SIZE_DIVISOR = 32


@dataclass
class DatasetInfo:
    """What training needs to know about a dataset folder, read once and validated."""

    root: Path
    index: pd.DataFrame
    classes: list[dict]
    mean: list[float]
    std: list[float]
    frequencies: dict[str, float]
    stats: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    @property
    def num_outputs(self) -> int:
        return len(self.classes) + 1  # + background at channel 0

    def split(self, name: str) -> pd.DataFrame:
        return self.index[self.index["split"] == name].reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        return {s: int((self.index["split"] == s).sum()) for s in SPLITS}

    def fingerprint(self) -> str:
        """Changes whenever the samples, their splits, the classes or the stats change."""
        h = hashlib.sha256()
        for name in ("index.csv", "classes.json", "stats.json"):
            h.update((self.root / name).read_bytes())
        return h.hexdigest()[:16]


def load_dataset_info(root: str | Path) -> DatasetInfo:
    """Read and check `dataset/`; a missing or malformed piece is one AgirError saying what to do."""
    root = Path(root)
    hint = "run the preprocess stage first (agir-cvtoolkit preprocess)"
    index_path = root / "index.csv"
    if not index_path.exists():
        raise AgirError(f"{index_path}: dataset index missing; {hint}")
    try:
        index = pd.read_csv(index_path, dtype={"sample_id": str, "split": str, "image": str, "mask": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AgirError(f"{index_path}: unreadable CSV ({exc}); {hint}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in index.columns]
    if missing:
        raise AgirError(f"{index_path}: columns {missing} missing (need {list(REQUIRED_COLUMNS)}); {hint}")
    bad = sorted(set(index["split"].dropna()) - set(SPLITS))
    if bad or index["split"].isna().any():
        raise AgirError(f"{index_path}: split values {bad or ['<empty>']} not in {list(SPLITS)}; {hint}")
    classes = read_classes(root)
    if not classes:
        raise AgirError(f"{root / 'classes.json'}: no classes; the dataset needs at least one plant class")
    classes = sorted(classes, key=lambda c: int(c["index"]))
    if [int(c["index"]) for c in classes] != list(range(1, len(classes) + 1)):
        raise AgirError(f"{root / 'classes.json'}: indices must be 1..K without gaps; {hint}")
    stats_path = root / "stats.json"
    if not stats_path.exists():
        raise AgirError(f"{stats_path}: dataset statistics missing; {hint}")
    stats = read_json(stats_path)
    mean, std = stats.get("mean"), stats.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        raise AgirError(f"{stats_path}: need 'mean' and 'std' lists of 3 channel values (0-1 scale); {hint}")
    if any(float(s) <= 0 for s in std):
        raise AgirError(f"{stats_path}: std {std} has a value <= 0; the train split looks empty or constant")
    return DatasetInfo(
        root=root,
        index=index,
        classes=classes,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        frequencies={str(k): float(v) for k, v in (stats.get("class_pixel_frequencies") or {}).items()},
        stats=stats,
    )


def inverse_frequency_weights(info: DatasetInfo, floor: float = 1e-4, max_ratio: float = 50.0) -> list[float]:
    """Cross-entropy weights for channels 0..K from `class_pixel_frequencies`, mean 1.

    Background's frequency is its own entry when present, else 1 - sum(classes). Frequencies are
    floored and the weight spread capped so a class seen in a handful of pixels cannot dominate.
    """
    if not info.frequencies:
        raise AgirError(
            f"{info.root / 'stats.json'}: class_pixel_frequencies missing; set train.class_weights=false "
            "or rebuild the dataset"
        )
    fg = [info.frequencies.get(name, 0.0) for name in info.class_names]
    bg = info.frequencies.get("background", max(0.0, 1.0 - sum(fg)))
    freqs = np.maximum(np.array([bg, *fg], dtype=np.float64), floor)
    w = 1.0 / freqs
    w = np.minimum(w, w.min() * max_ratio)
    return (w / w.mean()).tolist()


class SegDataset(Dataset):
    """One split of a dataset folder: returns (normalised image CHW float32, mask HW int64, sample index)."""

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        transform: PairTransform | None = None,
    ):
        self.info = info
        self.split_name = split
        self.rows = info.split(split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def paths(self, i: int) -> tuple[Path, Path]:
        row = self.rows.iloc[i]
        return self.info.root / row["image"], self.info.root / row["mask"]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw RGB uint8 image and uint8 mask of sample i, checked against each other and the classes."""
        img_path, mask_path = self.paths(i)
        image = read_image(img_path)
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise AgirError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; rebuild the dataset (preprocess)"
            )
        k = len(self.info.classes)
        bad = np.unique(mask[(mask > k) & (mask != IGNORE)])
        if bad.size:
            raise AgirError(
                f"{mask_path}: mask values {bad.tolist()} are not in classes.json (1..{k}) nor {IGNORE}; "
                "rebuild the dataset (preprocess)"
            )
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self.load(i)
        img_t, mask_t = to_tv(image, mask)
        if self.transform is not None:
            img_t, mask_t = self.transform(img_t, mask_t)
        x = normalize(img_t, self.info.mean, self.info.std)
        y = mask_t.as_subclass(torch.Tensor).to(torch.int64)
        return x, y, i


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]], divisor: int = SIZE_DIVISOR):
    """Stack samples of possibly different sizes: pad to the batch's largest size rounded up to `divisor`.

    Padded image pixels are 0 (the dataset mean after normalisation) and padded mask pixels IGNORE,
    so padding never enters the loss or the metrics.
    """
    h = max(int(x.shape[-2]) for x, _, _ in batch)
    w = max(int(x.shape[-1]) for x, _, _ in batch)
    h, w = math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor
    xs, ys, ids = [], [], []
    for x, y, i in batch:
        ph, pw = h - x.shape[-2], w - x.shape[-1]
        if ph or pw:
            x = TF.pad(x, (0, pw, 0, ph), value=0.0)
            y = TF.pad(y, (0, pw, 0, ph), value=IGNORE)
        xs.append(x)
        ys.append(y)
        ids.append(i)
    return torch.stack(xs), torch.stack(ys), torch.as_tensor(ids)


class SegDataModule(L.LightningDataModule):
    """Train (augmented random crops), val and test (whole samples) loaders over one dataset folder."""

    def __init__(self, info: DatasetInfo, train_cfg: Mapping[str, Any], val_split: str = "val"):
        super().__init__()
        self.info = info
        self.cfg = dict(train_cfg)
        self.val_split = val_split
        self.batch_size = int(self.cfg.get("batch_size", 8))
        self.num_workers = int(self.cfg.get("num_workers", 0))
        self.train_ds = SegDataset(info, "train", build_train_transform(self.cfg.get("augment"), self.cfg.get("crop_size")))
        self.val_ds = SegDataset(info, val_split)
        self.test_ds = SegDataset(info, "test")

    def _loader(self, ds: SegDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            # a partial last batch of 1 breaks BatchNorm in training
            drop_last=shuffle and len(ds) > batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=pad_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        # whole tiles are larger than training crops; smaller batches keep memory flat
        return self._loader(self.val_ds, False, max(1, self.batch_size // 2))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_ds, False, max(1, self.batch_size // 2))


__all__ = [
    "DatasetInfo",
    "SegDataModule",
    "SegDataset",
    "inverse_frequency_weights",
    "load_dataset_info",
    "pad_collate",
]
