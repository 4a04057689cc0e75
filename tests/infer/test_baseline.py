"""The vegetation-index baseline: synthetic photos, box painting, and a quality floor on real photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from agir.errors import AgirError
from agir.infer.baseline import otsu_threshold, paint_boxes, plant_mask, vegetation_index

REPO = Path(__file__).resolve().parents[2]


def _photo():
    spec = importlib.util.spec_from_file_location("infer_conftest", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.bench_photo(200, 300, [(60, 60, 30), (200, 120, 45)], seed=4)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("index", ["exg", "exg_exr"])
def test_plant_pixels_are_found_on_a_synthetic_photo(index):
    img, truth = _photo()
    mask, thr = plant_mask(img, index=index)
    assert _iou(mask.astype(bool), truth) > 0.95


def test_fixed_threshold_and_downscaled_otsu():
    img, truth = _photo()
    strict, _ = plant_mask(img, threshold=5.0)  # above any ExG value
    assert strict.sum() == 0
    small, _ = plant_mask(img, max_side=64)  # threshold from a 64 px copy, mask at full size
    assert small.shape == truth.shape and _iou(small.astype(bool), truth) > 0.95
    with pytest.raises(AgirError, match="otsu"):
        plant_mask(img, threshold="mean")
    with pytest.raises(AgirError, match="index"):
        vegetation_index(img, "ndvi")


def test_otsu_on_flat_input_finds_nothing():
    flat = np.full((20, 20, 3), 100, dtype=np.uint8)
    mask, _ = plant_mask(flat)
    assert mask.sum() == 0
    assert otsu_threshold(np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.0, abs=0.01)


def test_paint_boxes_smaller_box_wins_and_outside_is_background():
    plant = np.ones((10, 10), dtype=np.uint8)
    out = paint_boxes(plant, [((0, 0, 8, 8), 1), ((2, 2, 5, 5), 2)])
    assert out[3, 3] == 2 and out[0, 0] == 1 and out[9, 9] == 0
    out = paint_boxes(plant, [((2, 2, 5, 5), 2)], top=((0, 0, 8, 8), 1))  # cutout's own record on top
    assert out[3, 3] == 1
    out = paint_boxes(plant, [(None, 3)])
    assert (out == 3).all()


def test_real_photos_mean_iou_floor(shared_dir):
    spec = importlib.util.spec_from_file_location("baseline_iou", REPO / "benchmarks" / "baseline_iou.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    scores = mod.evaluate(shared_dir / "data" / "semif_examples")
    assert len(scores) == 7
    assert np.mean(list(scores.values())) >= 0.88
    assert min(scores.values()) >= 0.7
