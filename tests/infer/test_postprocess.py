"""min_area and hole filling do what they say on class-index masks."""

from __future__ import annotations

import numpy as np

from agir.infer.postprocess import fill_holes, postprocess, remove_small_components


def _mask():
    m = np.zeros((40, 60), dtype=np.uint8)
    m[5:25, 5:25] = 1  # 400 px
    m[12:16, 12:16] = 0  # a 16 px hole
    m[30:33, 40:43] = 1  # 9 px speck
    m[5:15, 40:50] = 2  # 100 px of class 2
    m[20:22, 50:52] = 2  # 4 px of class 2
    m[0, 0] = 255  # ignore stays
    return m


def test_min_area_removes_only_small_components_per_class():
    m, removed = remove_small_components(_mask(), 10)
    assert removed == 2
    assert (m[30:33, 40:43] == 0).all() and (m[20:22, 50:52] == 0).all()
    assert (m[5:15, 40:50] == 2).all() and m[5, 5] == 1 and m[0, 0] == 255
    m0, removed0 = remove_small_components(_mask(), 0)
    assert removed0 == 0 and (m0 == _mask()).all()
    m_big, _ = remove_small_components(_mask(), 150)
    assert (m_big == 2).sum() == 0 and (m_big == 1).sum() > 300


def test_fill_holes_fills_enclosed_background_only():
    m = fill_holes(_mask())
    assert (m[12:16, 12:16] == 1).all()
    assert m[35, 5] == 0 and m[0, 59] == 0  # outside stays background


def test_postprocess_combines_both_and_is_off_by_default():
    m, removed = postprocess(_mask())
    assert removed == 0 and (m == _mask()).all()
    m, removed = postprocess(_mask(), min_area=10, fill=True)
    assert removed == 2 and (m[12:16, 12:16] == 1).all()
