"""Per-class uncertainty mass, the accumulator's margin map and review_regions (contract C3)."""

import numpy as np
import pytest
import torch

from agir.errors import AgirError
from agir.select.uncertainty import (
    UncertaintyAccumulator,
    flatten_uncertainty,
    image_uncertainty,
    review_regions,
)


def two_blob_probs(h=300, w=500):
    """A certain background with two uncertain blocks: a large, very unsure one and a small, less unsure one."""
    p = np.zeros((3, h, w), np.float32)
    p[0] = 1.0
    p[:, 50:110, 60:140] = np.array([0.40, 0.35, 0.25])[:, None, None]  # margin 0.05
    p[:, 200:230, 300:330] = np.array([0.10, 0.50, 0.40])[:, None, None]  # margin 0.10
    return p


def test_class_uncertainty_splits_the_entropy_mass_over_classes():
    rng = np.random.default_rng(0)
    p = torch.softmax(torch.from_numpy(rng.normal(size=(4, 9, 13)).astype(np.float32) * 2), 0).numpy()
    r = image_uncertainty(p, ["a", "b", "c"], band_rows=4)
    h = -(p * np.log(p)).sum(0) / np.log(4)
    # sum_c p_c * H over every class including background is H itself
    background = float((p[0] * h).mean())
    assert sum(r["class_uncertainty"].values()) + background == pytest.approx(r["entropy_mean"], rel=1e-5)
    assert r["class_uncertainty"]["b"] == pytest.approx(float((p[2] * h).mean()), rel=1e-5)
    row = flatten_uncertainty(r)
    assert row["unc_b"] == r["class_uncertainty"]["b"] and "area_b" in row


def test_margin_map_does_not_depend_on_band_heights():
    p = two_blob_probs()
    maps = []
    for rows in (300, 37, 5, 1):
        acc = UncertaintyAccumulator(["a", "b"], region_side=100, min_cell=1)
        for y in range(0, 300, rows):
            acc.add(p[:, y : y + rows])
        maps.append(acc.margin_map())
    assert acc.cell == 5 and maps[0].shape == (60, 100)
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], atol=1e-6)
    # a partial last cell is averaged over its own pixels
    acc = UncertaintyAccumulator(["a", "b"], region_side=3, min_cell=1)
    acc.add(np.full((3, 7, 10), 1 / 3, np.float32))
    assert acc.cell == 4 and acc.margin_map().shape == (2, 3)
    assert UncertaintyAccumulator(["a"]).min_cell == 8  # default: cells of at least 8 px
    np.testing.assert_allclose(acc.margin_map(), 0.0, atol=1e-6)
    assert UncertaintyAccumulator(["a"], region_side=None).margin_map() is None


def test_accumulator_regions_are_in_full_image_pixels_most_uncertain_first():
    acc = UncertaintyAccumulator(["a", "b"], region_side=100, min_cell=1)
    p = two_blob_probs()
    for y in range(0, 300, 64):
        acc.add(p[:, y : y + 64])
    assert acc.review_regions(min_area=1) == [[60, 50, 140, 110], [300, 200, 330, 230]]
    assert acc.review_regions(min_area=1, max_regions=1) == [[60, 50, 140, 110]]
    assert acc.review_regions(min_area=40) == [[60, 50, 140, 110]]  # the small block has 36 cells
    assert acc.review_regions(threshold=0.08, min_area=1) == [[60, 50, 140, 110]]
    acc.reset()
    assert acc.review_regions() == []


def test_review_regions_ranks_by_mass_and_clips():
    m = np.ones((20, 30), np.float32)
    m[2:4, 2:12] = 0.15  # 20 px, mass 17
    m[10:16, 20:26] = 0.19  # 36 px, mass 29.16: first
    m[10, 2] = m[11, 3] = 0.0  # two diagonal pixels: one region (mass 2), below min_area 3
    m[18, 0] = 0.0  # a single pixel: the least mass
    assert review_regions(m, 0.2, min_area=3) == [[20, 10, 26, 16], [2, 2, 12, 4]]
    assert review_regions(m, 0.2, min_area=2)[-1] == [2, 10, 4, 12]
    assert review_regions(m, 0.2, min_area=1, max_regions=9)[-1] == [0, 18, 1, 19]
    # scale to full pixels, rounded outwards, clipped to the image size
    assert review_regions(m, 0.2, min_area=3, scale=2.5, size=(64, 38))[0] == [50, 25, 64, 38]
    assert review_regions(np.ones((4, 4)), 0.2) == [] and review_regions(np.zeros((0, 0))) == []
    with pytest.raises(AgirError, match="2-D"):
        review_regions(np.ones((2, 2, 2)))
