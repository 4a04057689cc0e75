"""Training augmentations that keep image and mask aligned (torchvision.transforms.v2).

Images travel as `tv_tensors.Image` (uint8 CHW) and masks as `tv_tensors.Mask` (uint8 HW), so every
geometric op is applied identically to both (masks with nearest-neighbour sampling) and photometric
ops touch the image only. Area a crop has to invent (padding) is labelled IGNORE (255) in the mask so
it never counts as background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from agir.errors import ConfigError
from agir.masks import IGNORE

CROP_FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}


class RandomScale:
    """Resize image and mask by one random factor in [lo, hi] (mask with nearest neighbour)."""

    def __init__(self, lo: float, hi: float):
        if not (0 < lo <= hi):
            raise ConfigError(f"train.augment.scale=[{lo}, {hi}]: need 0 < lo <= hi, e.g. [0.75, 1.25]")
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        s = float(torch.empty(1).uniform_(self.lo, self.hi))
        if abs(s - 1.0) < 1e-3:
            return image, mask
        h, w = image.shape[-2:]
        size = [max(1, round(h * s)), max(1, round(w * s))]
        # Mask: nearest-exact samples pixel centres like the bilinear image resize does; v2's default
        # for masks (legacy nearest) shifts labels by up to half a source pixel.
        plain = mask.as_subclass(torch.Tensor)[None]
        resized = F.resize_image(plain, size, interpolation=InterpolationMode.NEAREST_EXACT)[0]
        return F.resize(image, size, antialias=True), tv_tensors.wrap(resized, like=mask)


class RandomRot90:
    """Rotate image and mask together by k * 90 degrees, k uniform in 0..3 (exact, no resampling)."""

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        k = int(torch.randint(0, 4, (1,)))
        if k == 0:
            return image, mask
        return (
            tv_tensors.wrap(torch.rot90(image, k, dims=(-2, -1)), like=image),
            tv_tensors.wrap(torch.rot90(mask, k, dims=(-2, -1)), like=mask),
        )


class PairTransform:
    """Apply a list of (image, mask) transforms in order."""

    def __init__(self, steps: Sequence[Any]):
        self.steps = list(steps)

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        for step in self.steps:
            image, mask = step(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"PairTransform({self.steps!r})"


def build_train_transform(augment: Mapping[str, Any] | None, crop_size: int | None) -> PairTransform:
    """The training pipeline from `train.augment` and `train.crop_size` (crop always applies).

    Order: scale -> random crop (padded with ignore) -> flips -> 90° rotations -> colour jitter;
    scaling first lets the crop see zoomed-in and zoomed-out context, jitter last runs on the small crop.
    """
    aug = dict(augment or {})
    enabled = bool(aug.get("enabled", True))
    steps: list[Any] = []
    if enabled and aug.get("scale"):
        scale = list(aug["scale"])
        if len(scale) != 2:
            raise ConfigError(f"train.augment.scale={scale}: expected [lo, hi], e.g. [0.75, 1.25]")
        steps.append(RandomScale(*scale))
    if crop_size:
        steps.append(v2.RandomCrop(int(crop_size), pad_if_needed=True, fill=CROP_FILL))
    if enabled and aug.get("flip", True):
        steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.RandomVerticalFlip())
    if enabled and aug.get("rotate90", True):
        steps.append(RandomRot90())
    strength = float(aug.get("color_jitter", 0) or 0) if enabled else 0.0
    if strength > 0:
        steps.append(
            v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=min(0.5, strength / 4))
        )
    return PairTransform(steps)


def to_tv(image_hwc: np.ndarray, mask_hw: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """numpy RGB (H, W, 3) uint8 + (H, W) uint8 -> tv_tensors Image (CHW view) and Mask."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        # decoders may hand out read-only buffers; torch needs writable memory
        return torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))

    img = tv_tensors.Image(tensor(image_hwc).permute(2, 0, 1))
    msk = tv_tensors.Mask(tensor(mask_hw))
    return img, msk


def normalize(image_chw_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 CHW -> float32 CHW, scaled to 0-1 then standardised with the dataset's stats (0-1 scale)."""
    x = image_chw_uint8.as_subclass(torch.Tensor).to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def denormalize(image_chw: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Inverse of `normalize` for looking at a sample: float CHW -> RGB uint8 HWC."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = (image_chw.detach().cpu().float() * s + m).clamp(0, 1) * 255.0
    return x.round().to(torch.uint8).permute(1, 2, 0).numpy()
