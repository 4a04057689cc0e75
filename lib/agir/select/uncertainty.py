"""Per-image uncertainty statistics from a segmentation model's class-probability map.

The inference predictor produces probabilities in horizontal bands of rows; `UncertaintyAccumulator`
takes each band as it is finished and keeps only running sums, so no full-resolution (C, H, W) map has
to be held for scoring. All work is torch reductions on the band's own device.

Besides the scalar statistics it keeps, per class, the entropy mass the model attributes to that class
(`class_uncertainty`: sum over pixels of p_class * entropy, over all pixels; a rare species that is only
the runner-up on uncertain pixels still gets mass), and a block-averaged top1-top2 margin map (cells of
about 1/`region_side` of the width) from which `review_regions` finds the boxes a person should look at
first (contract C3: inference writes them per manifest line as `review_regions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agir.errors import AgirError

REGION_SIDE = 256  # the margin map's cells: about width / REGION_SIDE pixels square,
MIN_CELL = 8  # but at least this: averaged over a cell, a plant's thin uncertain outline is not a region

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

    def __init__(self, class_names: Sequence[str], uncertain_margin: float = 0.2,
                 region_side: int | None = REGION_SIDE, min_cell: int = MIN_CELL) -> None:
        self.class_names = [str(n) for n in class_names]
        if not self.class_names:
            raise AgirError("UncertaintyAccumulator: class_names is empty; pass the model's class list")
        if not 0.0 <= float(uncertain_margin) <= 1.0:
            raise AgirError(f"select.uncertain_margin={uncertain_margin}: must be in [0, 1]")
        self.uncertain_margin = float(uncertain_margin)
        self.num_channels = len(self.class_names) + 1
        self._log_c = math.log(self.num_channels)
        self.region_side = None if region_side is None else max(1, int(region_side))
        self.min_cell = max(1, int(min_cell))
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
        self._class_unc = np.zeros(self.num_channels, dtype=np.float64)
        self.rows = 0
        self.width = 0
        self.cell = 0
        self._mrows: list[np.ndarray] = []  # per map row: sum of margins over its cell's pixels

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
        # one (C, N) x (N,) product: cheap next to the entropy pass above
        self._class_unc += (flat @ entropy).double().cpu().numpy()
        if self.region_side is not None:
            self._add_margin_rows(margin.view(p.shape[1], p.shape[2]))

    def _add_margin_rows(self, margin: torch.Tensor) -> None:
        """Block-sum a (rows, W) margin band into the map; cells straddling bands are completed later."""
        h, w = margin.shape
        if not self.cell:
            self.width = w
            self.cell = max(self.min_cell, math.ceil(w / self.region_side))
        elif w != self.width:
            raise AgirError(f"uncertainty: band width {w} differs from the first band's {self.width}")
        s = self.cell
        full = (w // s) * s
        cols = margin[:, :full].reshape(h, w // s, s).sum(dim=2, dtype=torch.float64)
        if full < w:
            cols = torch.cat([cols, margin[:, full:].sum(dim=1, keepdim=True, dtype=torch.float64)], dim=1)
        y0 = self.rows
        r0 = y0 // s
        idx = torch.div(torch.arange(y0, y0 + h, device=cols.device), s, rounding_mode="floor") - r0
        local = torch.zeros((int(idx[-1]) + 1, cols.shape[1]), dtype=torch.float64, device=cols.device)
        local.index_add_(0, idx, cols)
        local = local.cpu().numpy()
        start = 0
        if r0 < len(self._mrows):  # the previous band's last cell row continues here
            self._mrows[r0] = self._mrows[r0] + local[0]
            start = 1
        self._mrows.extend(local[start:])
        self.rows += h

    def margin_map(self) -> np.ndarray | None:
        """Mean top1-top2 margin per cell (rows x cols, float32); None before any band or when disabled."""
        if not self._mrows:
            return None
        s = self.cell
        sums = np.stack(self._mrows)
        rh = np.minimum(s, self.rows - np.arange(sums.shape[0]) * s)
        cw = np.minimum(s, self.width - np.arange(sums.shape[1]) * s)
        return (sums / np.outer(rh, cw)).astype(np.float32)

    def review_regions(self, threshold: float | None = None, max_regions: int = 5,
                       min_area: int = 16) -> list[list[int]]:
        """`review_regions` on this image's margin map, in full-image pixels (clipped to the image).

        `threshold` defaults to the accumulator's `uncertain_margin`; `min_area` counts map cells.
        """
        m = self.margin_map()
        if m is None:
            return []
        t = self.uncertain_margin if threshold is None else float(threshold)
        return review_regions(m, t, max_regions, min_area, scale=float(self.cell), size=(self.width, self.rows))

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
            "class_uncertainty": {name: float(self._class_unc[i + 1]) / n for i, name in enumerate(self.class_names)},
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


def review_regions(margin: np.ndarray, threshold: float = 0.2, max_regions: int = 5, min_area: int = 16,
                   scale: float = 1.0, size: tuple[int, int] | None = None) -> list[list[int]]:
    """Boxes [x0, y0, x1, y1] (exclusive x1/y1) around the most uncertain regions of a margin map.

    `margin`: a (possibly block-averaged) top1-top2 probability map. Pixels below `threshold` are
    uncertain; 8-connected uncertain pixels form a region (no closing: on scattered uncertainty it
    would grow one frame-sized box, which tells a person nothing). Regions with at least `min_area` uncertain map pixels are ranked by their mass, the sum of
    1 - margin over their uncertain pixels (ties: top-left first), and the first `max_regions` are
    returned in full-image pixels: map coordinates * `scale`, rounded outwards, clipped to `size`
    (width, height) when given.
    """
    import cv2

    m = np.asarray(margin, dtype=np.float32)
    if m.ndim != 2:
        raise AgirError(f"review_regions: expected a 2-D margin map, got shape {m.shape}")
    if m.size == 0 or max_regions <= 0:
        return []
    unc = (m < float(threshold)).astype(np.uint8)
    if not unc.any():
        return []
    n, labels = cv2.connectedComponents(unc, connectivity=8)
    lab = labels.ravel()[unc.ravel() > 0]
    mass = np.bincount(lab, weights=(1.0 - m).ravel()[unc.ravel() > 0], minlength=n)
    count = np.bincount(lab, minlength=n)
    ys, xs = np.nonzero(unc)
    px_lab = labels[ys, xs]
    x0 = np.full(n, np.iinfo(np.int64).max)
    y0 = np.full(n, np.iinfo(np.int64).max)
    x1 = np.full(n, -1)
    y1 = np.full(n, -1)
    np.minimum.at(x0, px_lab, xs)
    np.minimum.at(y0, px_lab, ys)
    np.maximum.at(x1, px_lab, xs + 1)
    np.maximum.at(y1, px_lab, ys + 1)
    keep = [k for k in range(1, n) if count[k] >= int(min_area)]
    keep.sort(key=lambda k: (-mass[k], y0[k], x0[k]))
    out = []
    for k in keep[: int(max_regions)]:
        box = [math.floor(x0[k] * scale), math.floor(y0[k] * scale), math.ceil(x1[k] * scale),
               math.ceil(y1[k] * scale)]
        if size is not None:
            w, h = int(size[0]), int(size[1])
            box = [min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w), min(max(box[3], 0), h)]
        out.append([int(v) for v in box])
    return out


def flatten_uncertainty(stats: dict, prefix: str = "") -> dict:
    """One flat row: the scalar statistics, `area_<name>` and `unc_<name>` (class_uncertainty) per class."""
    row = {f"{prefix}{k}": float(stats[k]) for k in STAT_KEYS if k in stats}
    for name, frac in (stats.get("class_area") or {}).items():
        row[f"{prefix}area_{name}"] = float(frac)
    for name, mass in (stats.get("class_uncertainty") or {}).items():
        row[f"{prefix}unc_{name}"] = float(mass)
    if "pixels" in stats:
        row[f"{prefix}pixels"] = int(stats["pixels"])
    return row
