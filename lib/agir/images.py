"""Image reading and writing (RGB uint8 arrays), EXIF orientation honoured, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from agir.errors import AgirError
from agir.runs import write_bytes

# Real frames are 60-130 MP; lift OpenCV's default pixel cap for decoding.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**34))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 (H, W, 3). cv2.imread applies EXIF orientation by default."""
    p = Path(path)
    if not p.exists():
        raise AgirError(f"{p}: image file not found; check io.roots / the record's path")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise AgirError(f"{p}: unreadable or corrupt image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) without decoding pixels, after EXIF orientation."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im
        return im.size


def encode_image(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    ext = ext.lower()
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise AgirError(f"could not encode image as {ext}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> Path:
    """Write an RGB image atomically; format from the file extension."""
    return write_bytes(path, encode_image(rgb, Path(path).suffix or ".jpg", quality))
