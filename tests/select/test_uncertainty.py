import math

import numpy as np
import pytest
import torch

from agir.errors import AgirError
from agir.select.uncertainty import UncertaintyAccumulator, flatten_uncertainty, image_uncertainty

NAMES = ["a", "b"]  # C = 3 with background


def test_uniform_probs_have_entropy_one_and_zero_margin():
    p = np.full((3, 4, 5), 1 / 3, dtype=np.float32)
    r = image_uncertainty(p, NAMES)
    assert r["entropy_mean"] == pytest.approx(1.0, abs=1e-6)
    assert r["margin_mean"] == pytest.approx(0.0, abs=1e-6)
    assert r["least_confidence"] == pytest.approx(2 / 3, abs=1e-6)
    assert r["uncertain_fraction"] == 1.0
    assert r["pixels"] == 20
    # ties resolve to channel 0 (background): no plant pixels
    assert r["plant_fraction"] == 0.0 and r["entropy_plant"] == 0.0


def test_one_hot_is_certain_and_class_area_counts_argmax():
    lab = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    p = np.eye(3, dtype=np.float32)[lab].transpose(2, 0, 1)
    r = image_uncertainty(p, NAMES)
    assert r["entropy_mean"] == pytest.approx(0.0, abs=1e-7)
    assert r["margin_mean"] == pytest.approx(1.0)
    assert r["least_confidence"] == pytest.approx(0.0)
    assert r["uncertain_fraction"] == 0.0
    assert r["plant_fraction"] == pytest.approx(6 / 8)
    assert r["class_area"] == {"a": pytest.approx(3 / 8), "b": pytest.approx(3 / 8)}


def test_hand_computed_mixture_and_band_accumulation_equal_whole():
    # pixel 0: background certain; pixel 1: [0.2, 0.5, 0.3] -> plant (a), margin 0.2, entropy H/log3
    px = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25]], dtype=np.float32)
    p = px.T.reshape(3, 2, 2)
    h = [-sum(v * math.log(v) for v in row if v > 0) / math.log(3) for row in px]
    m = [1.0, 0.2, 0.7, 0.05]
    r = image_uncertainty(p, NAMES, uncertain_margin=0.1)
    assert r["entropy_mean"] == pytest.approx(sum(h) / 4, rel=1e-5)
    assert r["entropy_plant"] == pytest.approx((h[1] + h[2]) / 2, rel=1e-5)
    assert r["margin_mean"] == pytest.approx(sum(m) / 4, rel=1e-5)
    assert r["margin_plant"] == pytest.approx((m[1] + m[2]) / 2, rel=1e-5)
    assert r["least_confidence"] == pytest.approx(1 - (1.0 + 0.5 + 0.8 + 0.4) / 4, rel=1e-5)
    assert r["uncertain_fraction"] == 0.25
    assert r["class_area"] == {"a": 0.25, "b": 0.25}
    banded = image_uncertainty(torch.from_numpy(p), NAMES, uncertain_margin=0.1, band_rows=1)
    for k in ("entropy_mean", "entropy_plant", "margin_mean", "least_confidence", "uncertain_fraction"):
        assert banded[k] == pytest.approx(r[k], rel=1e-6)
    assert banded["class_area"] == r["class_area"]
    acc = UncertaintyAccumulator(NAMES, 0.1)
    acc.add(torch.from_numpy(p[:, :1]))
    acc.add(p[:, 1:])
    assert acc.result()["margin_plant"] == pytest.approx(r["margin_plant"])
    assert acc.result()["pixels"] == 4


def test_sigmoid_single_channel_is_two_class():
    p = np.array([[[0.5, 0.9]]], dtype=np.float32)
    r = image_uncertainty(p, ["plant"])
    assert r["plant_fraction"] == 0.5
    assert r["entropy_mean"] == pytest.approx((1.0 + (-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2))) / 2)


def test_bad_channel_count_is_a_clear_error():
    with pytest.raises(AgirError, match="channels"):
        UncertaintyAccumulator(NAMES).add(np.ones((4, 2, 2), dtype=np.float32))


def test_flatten_has_area_columns():
    r = image_uncertainty(np.full((3, 2, 2), 1 / 3, dtype=np.float32), NAMES)
    row = flatten_uncertainty(r)
    assert row["area_a"] == 0.0 and "entropy_plant" in row and row["pixels"] == 4
