"""The one tiler, shared by inference and preprocess.

`tile.size` is the tile edge in pixels, `tile.overlap` the fraction of a tile shared with its
neighbour (0 <= overlap < 1). Tiles start every `stride = max(1, round(size * (1 - overlap)))`
pixels; the last row/column is shifted back to end exactly at the image edge, so every tile lies
inside the image and no padding is needed unless the image is smaller than a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agir.errors import ConfigError


@dataclass(frozen=True)
class Tile:
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def check_tile_settings(size: int, overlap: float, where: str = "tile") -> None:
    if not isinstance(size, int) or size < 16:
        raise ConfigError(f"{where}.size={size!r}: must be an integer >= 16 pixels")
    if not (0.0 <= float(overlap) < 1.0):
        raise ConfigError(f"{where}.overlap={overlap!r}: must be a fraction in [0, 1), e.g. 0.25")


def axis_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets along one axis; a single 0 when the axis is shorter than a tile."""
    if length <= size:
        return [0]
    stride = max(1, int(round(size * (1.0 - overlap))))
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_grid(height: int, width: int, size: int, overlap: float) -> list[Tile]:
    """Row-major tiles covering an image; tiles are clipped to the image when it is smaller."""
    check_tile_settings(size, overlap)
    tiles = []
    for y in axis_starts(height, size, overlap):
        for x in axis_starts(width, size, overlap):
            tiles.append(Tile(y, x, min(y + size, height), min(x + size, width)))
    return tiles


def pad_to(arr: np.ndarray, height: int, width: int, value: int | float = 0, mode: str = "constant") -> np.ndarray:
    """Pad an (H, W[, C]) array at the bottom/right to (height, width)."""
    ph, pw = height - arr.shape[0], width - arr.shape[1]
    if ph <= 0 and pw <= 0:
        return arr
    pad = [(0, max(ph, 0)), (0, max(pw, 0))] + [(0, 0)] * (arr.ndim - 2)
    if mode == "constant":
        return np.pad(arr, pad, mode="constant", constant_values=value)
    return np.pad(arr, pad, mode=mode)


def round_up(n: int, divisor: int) -> int:
    return ((n + divisor - 1) // divisor) * divisor
