"""Class-index masks: the one mask codec (DESIGN.md §4).

A mask is a single-channel uint8 PNG of class indices with the same size as its image:
0 = background, 1..K = classes, 255 = ignore. It carries a palette so people see colours.
Every mask folder has `classes.json`: [{"index": 1, "name": "barley", "color": "#d66edd"}, ...].
Indices are local to a folder; consumers remap by name.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from agir.errors import AgirError
from agir.runs import read_json, write_bytes, write_json

BACKGROUND = 0
IGNORE = 255
BACKGROUND_COLOR = "#000000"
IGNORE_COLOR = "#ffffff"
BINARY_CLASS = "plant"


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.strip().lstrip("#")
    if len(c) != 6:
        raise AgirError(f"colour {color!r} is not #rrggbb")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def rgb_to_hex(rgb: Sequence[float]) -> str:
    vals = [float(v) for v in rgb[:3]]
    if all(v <= 1.0 for v in vals) and any(v > 0 for v in vals) and not all(v.is_integer() for v in vals):
        vals = [v * 255 for v in vals]  # 0-1 floats (the DB stores both forms)
    return "#" + "".join(f"{max(0, min(255, round(v))):02x}" for v in vals)


def color_for_name(name: str) -> str:
    """A stable, distinct-ish colour for a class without a database colour."""
    h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.9)
    return rgb_to_hex((r * 255, g * 255, b * 255))


def make_classes(names: Iterable[str], colors: Mapping[str, str] | None = None) -> list[dict]:
    """classes.json entries for `names` in order, indices 1..K."""
    colors = colors or {}
    out = []
    for i, name in enumerate(names, start=1):
        out.append({"index": i, "name": name, "color": colors.get(name) or color_for_name(name)})
    return out


def write_classes(folder: str | os.PathLike, classes: Sequence[Mapping]) -> Path:
    return write_json(Path(folder) / "classes.json", [dict(c) for c in classes])


def read_classes(folder_or_file: str | os.PathLike) -> list[dict]:
    p = Path(folder_or_file)
    if p.is_dir():
        p = p / "classes.json"
    if not p.exists():
        raise AgirError(f"{p}: classes.json missing; every mask folder needs one (see docs/run_folder.md, Masks and classes)")
    classes = read_json(p)
    check_class_indices(classes, p)
    return classes


def check_class_indices(classes: Sequence[Mapping], where: str | os.PathLike) -> None:
    """Class indices must be 1..254 and unique (0 is background, 255 ignore)."""
    seen: set[int] = set()
    for c in classes:
        idx = int(c["index"])
        if not (1 <= idx <= 254) or idx in seen:
            raise AgirError(f"{where}: class index {c['index']} invalid or repeated (use 1..254, unique)")
        seen.add(idx)


def palette_for(classes: Sequence[Mapping]) -> list[int]:
    pal = [0] * (256 * 3)
    for c in classes:
        r, g, b = hex_to_rgb(c.get("color") or color_for_name(c["name"]))
        pal[3 * int(c["index"]) : 3 * int(c["index"]) + 3] = [r, g, b]
    pal[3 * IGNORE : 3 * IGNORE + 3] = list(hex_to_rgb(IGNORE_COLOR))
    return pal


def encode_mask_png(mask: np.ndarray, classes: Sequence[Mapping] | None = None) -> bytes:
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise AgirError(f"mask must be a 2-D uint8 array of class indices, got {mask.dtype} {mask.shape}")
    img = Image.fromarray(mask, mode="L")
    if classes is not None:
        img = img.convert("P")
        img.putpalette(palette_for(classes))
        # convert("P") from L keeps the values as palette indices
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def write_mask(path: str | os.PathLike, mask: np.ndarray, classes: Sequence[Mapping] | None = None) -> Path:
    """Write a class-index mask atomically as PNG (with a palette when classes are given)."""
    return write_bytes(path, encode_mask_png(mask, classes))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index mask as a 2-D uint8 array (palette indices, never colours)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L"):
                arr = np.asarray(img)
            elif img.mode in ("I;16", "I"):
                arr = np.asarray(img)
                if arr.max() > 255:
                    raise AgirError(f"{path}: mask values above 255; expected 8-bit class indices")
                arr = arr.astype(np.uint8)
            else:
                raise AgirError(
                    f"{path}: mask is {img.mode}, not a single-channel class-index PNG; convert colour masks first"
                )
    except (OSError, ValueError) as exc:
        raise AgirError(f"{path}: unreadable mask ({exc})") from exc
    return np.ascontiguousarray(arr, dtype=np.uint8)


def remap_lut(src: Sequence[Mapping], dst_index_by_name: Mapping[str, int], unknown: int = IGNORE) -> np.ndarray:
    """A 256-entry lookup table from one folder's indices to another's, by class name.

    Background stays 0, ignore stays 255; indices with no name in `src` or names absent from the
    target map to `unknown` (callers report them; nothing is silently relabelled as background).
    """
    lut = np.full(256, unknown, dtype=np.uint8)
    lut[BACKGROUND] = BACKGROUND
    lut[IGNORE] = IGNORE
    for c in src:
        lut[int(c["index"])] = dst_index_by_name.get(c["name"], unknown)
    return lut


def color_mask_to_index(rgb: np.ndarray, classes: Sequence[Mapping], tolerance: int = 0) -> np.ndarray:
    """Colour-painted mask (RGB) → class indices by each class colour; unmatched non-black → IGNORE.

    A pixel takes the last class whose colour is within `tolerance` on every channel. Pixels too
    dark to be non-black or to match any class colour are skipped (a pixel can only match colour c
    if its brightest channel is >= max(c) - tolerance); real masks are mostly black, so this is
    much faster and gives the same result.
    """
    out = np.zeros(rgb.shape[:2], dtype=np.uint8)
    # elementwise maxima: far faster than a reduction over the last (length-3) axis
    brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    cols = [(np.array(hex_to_rgb(c["color"]), dtype=np.int16), int(c["index"])) for c in classes]
    threshold = min([tolerance + 1] + [int(col.max()) - tolerance for col, _ in cols])
    candidates = brightest >= threshold if threshold > 0 else np.ones(rgb.shape[:2], dtype=bool)
    px = rgb[candidates].astype(np.int16)
    vals = np.where(brightest[candidates] > tolerance, IGNORE, BACKGROUND).astype(np.uint8)
    for col, index in cols:
        d = np.abs(px - col)
        vals[np.maximum(np.maximum(d[:, 0], d[:, 1]), d[:, 2]) <= tolerance] = index
    out[candidates] = vals
    return out


def overlay(image_rgb: np.ndarray, mask: np.ndarray, classes: Sequence[Mapping], alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over an image for looking (RGB uint8 out)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in classes:
        lut[int(c["index"])] = hex_to_rgb(c["color"])
    colour = lut[mask]
    sel = (mask != BACKGROUND) & (mask != IGNORE)
    out = image_rgb.copy()
    out[sel] = (image_rgb[sel] * (1 - alpha) + colour[sel] * alpha).astype(np.uint8)
    return out
