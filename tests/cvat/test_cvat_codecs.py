"""Mask <-> CVAT shape codecs, COCO RLE strings and the changed-pixel statistic, without a server."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agir.cvat.decode import coco_rle_to_bitmap, rasterise, rle_counts_from_string
from agir.cvat.shapes import bbox_exclusive, mask_shapes
from agir.cvat.stats import frame_change, summarise_changes


def _mask(seed=0, h=50, w=70):
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(6):
        cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(3, 12)), int(rng.integers(1, 4)), -1)
    m[0, :] = 2  # touch the borders: the exclusive box must reach w and h
    m[:, -1] = 3
    m[10, 10] = 255  # ignore pixels are not uploaded
    return m


@pytest.mark.parametrize("instances", [False, True])
def test_mask_shapes_round_trip_exactly(instances):
    m = _mask()
    ids = {1: 11, 2: 12, 3: 13}
    shapes = mask_shapes(m, 0, ids, instances=instances)
    for i, s in enumerate(shapes):
        s["id"] = i
    back = rasterise(shapes, m.shape[1], m.shape[0], {11: 1, 12: 2, 13: 3})
    expected = m.copy()
    expected[expected == 255] = 0
    # non-overlapping class shapes: order does not matter, every pixel comes back
    assert np.array_equal(back, expected)
    if instances:
        assert len(shapes) > 3


def test_bbox_is_exclusive_and_empty_masks_send_nothing():
    bm = np.zeros((5, 6), bool)
    assert bbox_exclusive(bm) is None
    bm[1:3, 2:6] = True
    assert bbox_exclusive(bm) == (2, 1, 6, 3)
    assert mask_shapes(np.zeros((5, 6), np.uint8), 0, {1: 1}) == []


def test_polygon_shapes_cover_the_class():
    m = np.zeros((40, 40), np.uint8)
    m[5:20, 8:30] = 1
    shapes = mask_shapes(m, 3, {1: 7}, shape="polygon", polygon_tolerance=0)
    assert [s["type"] for s in shapes] == ["polygon"] and shapes[0]["frame"] == 3
    back = rasterise([{**shapes[0], "id": 1}], 40, 40, {7: 1})
    assert np.array_equal(back, m)


def test_z_order_then_creation_order_wins():
    full = {"type": "rectangle", "points": [0, 0, 10, 10], "label_id": 1, "z_order": 0}
    top = {"type": "rectangle", "points": [0, 0, 5, 5], "label_id": 2, "z_order": 1}
    later = {"type": "rectangle", "points": [0, 0, 10, 10], "label_id": 3, "z_order": 0}
    out = rasterise([{**top, "id": 1}, {**full, "id": 2}, {**later, "id": 3}], 10, 10, {1: 1, 2: 2, 3: 3})
    assert out[0, 0] == 2 and out[9, 9] == 3
    hidden = rasterise([{**full, "id": 1, "outside": True}], 10, 10, {1: 1})
    assert hidden.max() == 0


def _rle_string(counts):
    """pycocotools' rleToString, for the test only."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_coco_compressed_rle_strings_decode():
    bm = np.zeros((7, 9), bool)
    bm[2:5, 1:8] = True
    bm[6, 0] = True
    flat = bm.T.ravel()
    runs, cur, n = [], False, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    assert rle_counts_from_string(_rle_string(runs)) == runs
    back = coco_rle_to_bitmap({"counts": _rle_string(runs), "size": [7, 9]}, 7, 9)
    assert np.array_equal(back, bm)


def test_changed_pixel_statistic():
    pre = np.zeros((10, 10), np.uint8)
    pre[:5] = 1
    post = pre.copy()
    post[:5, :5] = 2  # a quarter of the frame relabelled 1 -> 2
    post[9, 9] = 255  # ignore is not counted
    names = {1: "barley", 2: "rye"}
    f = frame_change(pre, post, names)
    assert f["changed_pixels"] == 25 and f["pixels"] == 99
    assert f["labels"]["barley"]["changed_pixels"] == 25 and f["labels"]["barley"]["union"] == 50
    s = summarise_changes([f, frame_change(pre, pre, names)])
    assert s["frames_compared"] == 2 and s["frames_changed"] == 1
    assert s["changed_fraction_mean"] == pytest.approx((25 / 99) / 2)
    assert s["labels"]["barley"]["changed_fraction"] == pytest.approx(25 / 100)
    assert s["labels"]["rye"]["changed_fraction"] == 1.0
