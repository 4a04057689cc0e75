"""Per-image uncertainty statistics from a segmentation model's class-probability map.

The inference predictor produces probabilities in horizontal bands of rows; `UncertaintyAccumulator`
takes each band as it is finished and keeps only running sums, so no full-resolution (C, H, W) map has
to be held for scoring. All work is torch reductions on the band's own device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agir.errors import AgirError

# statistics written per image (besides class_area and pixels); the selection strategies rank by these
STAT_KEYS = (
    "entropy_mean",
    "entropy_plant",
    "margin_mean",
    "margin_plant",
    "least_confidence",
    "uncertain_fraction",
    "plant_fraction",
)
# for these a LOW value means uncertain (the strategies negate them to rank most-uncertain first)
LOW_IS_UNCERTAIN = frozenset({"margin_mean", "margin_plant"})


def _top2(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max, max - second max, argmax as uint8) over channels by running comparisons.

    One pass over the channels; on CPU this is several times faster than argmax/topk along dim 0.
    Ties go to the lower channel, like argmax and the predictor's mask.
    """
    best = flat[0].clone()
    second = torch.full_like(best, -1.0)
    idx = torch.zeros(best.shape, dtype=torch.uint8, device=flat.device)
    for c in range(1, flat.shape[0]):
        x = flat[c]
        torch.maximum(second, torch.minimum(best, x), out=second)
        idx.masked_fill_(x > best, c)
        torch.maximum(best, x, out=best)
    return best, best - second, idx


class UncertaintyAccumulator:
    """Accumulate entropy / margin / confidence sums over bands of a (C, H, W) probability map.

    Channel 0 is background, channels 1..C-1 are `class_names` (so C = len(class_names) + 1). A single
    channel band with one class name is a sigmoid head's foreground probability p and is read as the
    two-class map [1 - p, p].
    """

    def __init__(self, class_names: Sequence[str], uncertain_margin: float = 0.2) -> None:
        self.class_names = [str(n) for n in class_names]
        if not self.class_names:
            raise AgirError("UncertaintyAccumulator: class_names is empty; pass the model's class list")
        if not 0.0 <= float(uncertain_margin) <= 1.0:
            raise AgirError(f"select.uncertain_margin={uncertain_margin}: must be in [0, 1]")
        self.uncertain_margin = float(uncertain_margin)
        self.num_channels = len(self.class_names) + 1
        self._log_c = math.log(self.num_channels)
        self.reset()

    def reset(self) -> None:
        self.pixels = 0
        self.plant_pixels = 0
        self._entropy = 0.0
        self._entropy_plant = 0.0
        self._margin = 0.0
        self._margin_plant = 0.0
        self._maxprob = 0.0
        self._uncertain = 0
        self._counts = np.zeros(self.num_channels, dtype=np.int64)

    def _as_tensor(self, probs: Any) -> torch.Tensor:
        t = probs if isinstance(probs, torch.Tensor) else torch.from_numpy(np.asarray(probs))
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise AgirError(f"uncertainty: expected a (C, h, W) probability band, got shape {tuple(t.shape)}")
        t = t.float()
        if t.shape[0] == 1 and self.num_channels == 2:
            t = torch.cat([1.0 - t, t], dim=0)
        if t.shape[0] != self.num_channels:
            raise AgirError(
                f"uncertainty: band has {t.shape[0]} channels but {len(self.class_names)} classes + background "
                f"= {self.num_channels} were declared; pass the model's class list"
            )
        return t

    @torch.no_grad()
    def add(self, probs: Any) -> None:
        """Add one band of normalised per-pixel class probabilities (torch.Tensor or np.ndarray)."""
        p = self._as_tensor(probs)
        if p.shape[1] == 0 or p.shape[2] == 0:
            return
        # float64 sums where the device has them (MPS has none); pairwise float32 sums are fine there
        acc = torch.float32 if p.device.type == "mps" else torch.float64
        flat = p.reshape(p.shape[0], -1)
        n = flat.shape[1]
        plogp = torch.special.xlogy(flat, flat.clamp_min(0.0))  # 0 log 0 = 0
        entropy = (-plogp.sum(dim=0) / self._log_c).clamp_(0.0, 1.0)
        best, margin, arg = _top2(flat)
        plant = arg != 0
        n_plant = int(plant.sum())
        self.pixels += n
        self.plant_pixels += n_plant
        self._entropy += float(entropy.sum(dtype=acc))
        self._margin += float(margin.sum(dtype=acc))
        self._maxprob += float(best.sum(dtype=acc))
        self._uncertain += int((margin < self.uncertain_margin).sum())
        if n_plant:
            self._entropy_plant += float((entropy * plant).sum(dtype=acc))
            self._margin_plant += float((margin * plant).sum(dtype=acc))
        self._counts += torch.bincount(arg, minlength=self.num_channels).cpu().numpy()[: self.num_channels]

    def result(self) -> dict:
        """The image's statistics (all fractions in [0, 1]); zeros for an empty frame."""
        n = max(self.pixels, 1)
        npl = self.plant_pixels
        return {
            "entropy_mean": self._entropy / n,
            "entropy_plant": self._entropy_plant / npl if npl else 0.0,
            "margin_mean": self._margin / n,
            "margin_plant": self._margin_plant / npl if npl else 0.0,
            "least_confidence": 1.0 - self._maxprob / n if self.pixels else 0.0,
            "uncertain_fraction": self._uncertain / n,
            "plant_fraction": npl / n,
            "class_area": {name: int(self._counts[i + 1]) / n for i, name in enumerate(self.class_names)},
            "pixels": int(self.pixels),
        }


def image_uncertainty(
    probs: Any, class_names: Sequence[str], uncertain_margin: float = 0.2, band_rows: int | None = None
) -> dict:
    """Statistics of a whole (C, H, W) probability map; `band_rows` bounds the temporary memory."""
    acc = UncertaintyAccumulator(class_names, uncertain_margin)
    h = probs.shape[-2]
    step = int(band_rows) if band_rows else h
    for y in range(0, max(h, 1), max(step, 1)):
        acc.add(probs[..., y : y + step, :])
    return acc.result()


def flatten_uncertainty(stats: dict, prefix: str = "") -> dict:
    """One flat row: the scalar statistics plus `area_<name>` per class (the scores table's columns)."""
    row = {f"{prefix}{k}": float(stats[k]) for k in STAT_KEYS if k in stats}
    for name, frac in (stats.get("class_area") or {}).items():
        row[f"{prefix}area_{name}"] = float(frac)
    if "pixels" in stats:
        row[f"{prefix}pixels"] = int(stats["pixels"])
    return row
