"""Cut a labelled image into dataset samples: native-resolution tiles or one resized square.

Tiles come from `agir.tiling.tile_grid`, the tiler inference uses, so training tiles have the
pixel scale and edge handling the model meets at inference. Padding (an image smaller than a tile,
or the letterbox of `resize`) is 0 in the image and ignore (255) in the mask, so no loss or
statistic counts it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from agir.errors import ConfigError
from agir.masks import IGNORE
from agir.tiling import check_tile_settings, pad_to, tile_grid


@dataclass(frozen=True)
class Geometry:
    mode: str  # tile | resize
    size: int  # output side in px (tile size or resize side)
    overlap: float = 0.0

    def describe(self) -> dict:
        return {"mode": self.mode, "size": self.size, "overlap": self.overlap}


@dataclass
class Piece:
    y0: int  # source window in source-image pixels
    x0: int
    y1: int
    x1: int
    scale: float  # output px per source px
    image: np.ndarray
    mask: np.ndarray


def geometry_from_config(pp: Mapping) -> Geometry:
    mode = pp.get("geometry", "tile")
    if mode == "tile":
        tile = pp.get("tile") or {}
        size, overlap = tile.get("size"), float(tile.get("overlap", 0.0))
        if size is None:
            raise ConfigError("preprocess.tile.size is null; set a tile edge in px (e.g. 512) or use geometry=resize")
        check_tile_settings(size, overlap, where="preprocess.tile")
        return Geometry("tile", int(size), overlap)
    if mode == "resize":
        side = pp.get("resize")
        if not isinstance(side, int) or side < 16:
            raise ConfigError(f"preprocess.resize={side!r}: must be an integer side >= 16 px")
        return Geometry("resize", side, 0.0)
    raise ConfigError(f"preprocess.geometry={mode!r}: use tile or resize")


def cut(image: np.ndarray, mask: np.ndarray, geom: Geometry) -> Iterator[Piece]:
    h, w = mask.shape
    if geom.mode == "tile":
        for t in tile_grid(h, w, geom.size, geom.overlap):
            img = pad_to(image[t.slices], geom.size, geom.size, 0)
            msk = pad_to(mask[t.slices], geom.size, geom.size, IGNORE)
            yield Piece(t.y0, t.x0, t.y1, t.x1, 1.0, np.ascontiguousarray(img), np.ascontiguousarray(msk))
        return
    # resize: keep the aspect ratio (plants must not be stretched), letterbox to a square.
    scale = geom.size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(image, (nw, nh), interpolation=interp)
    msk = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    yield Piece(0, 0, h, w, scale, pad_to(img, geom.size, geom.size, 0), pad_to(msk, geom.size, geom.size, IGNORE))
