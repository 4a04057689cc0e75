"""The mask codec: class-index PNG with palette, classes.json, remapping by name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agir import masks
from agir.errors import AgirError


def test_mask_roundtrip_keeps_indices_and_palette(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 3:9] = 1
    m[10:, 20:] = 2
    m[0, 0] = masks.IGNORE
    classes = masks.make_classes(["barley", "soybean"], {"barley": "#d66edd"})
    masks.write_mask(tmp_path / "m.png", m, classes)
    back = masks.read_mask(tmp_path / "m.png")
    assert back.dtype == np.uint8 and np.array_equal(back, m)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [0xD6, 0x6E, 0xDD]


def test_read_mask_rejects_colour(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(AgirError, match="not a single-channel"):
        masks.read_mask(tmp_path / "rgb.png")


def test_classes_json_roundtrip_and_validation(tmp_path):
    cls = masks.make_classes(["a", "b"])
    masks.write_classes(tmp_path, cls)
    assert masks.read_classes(tmp_path) == cls
    masks.write_classes(tmp_path, [{"index": 1, "name": "a", "color": "#000000"}] * 2)
    with pytest.raises(AgirError, match="repeated"):
        masks.read_classes(tmp_path)


def test_remap_by_name():
    src = [{"index": 1, "name": "soybean"}, {"index": 2, "name": "barley"}, {"index": 3, "name": "alien"}]
    lut = masks.remap_lut(src, {"barley": 1, "soybean": 2})
    m = np.array([[0, 1, 2, 3, 255, 7]], np.uint8)
    assert lut[m].tolist() == [[0, 2, 1, 255, 255, 255]]


def test_color_helpers():
    assert masks.rgb_to_hex([189, 122, 228]) == "#bd7ae4"
    assert masks.rgb_to_hex([0.5, 0.25, 1.0]) == "#8040ff"
    assert masks.hex_to_rgb("#4CAF50") == (0x4C, 0xAF, 0x50)
    assert masks.color_for_name("x") == masks.color_for_name("x")
