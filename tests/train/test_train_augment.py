"""Augmentations keep image and mask aligned; crops pad the mask with ignore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agir.errors import ConfigError
from agir.masks import IGNORE
from agir.train.augment import build_train_transform, denormalize, normalize, to_tv


def _coded_pair(h: int = 48, w: int = 40):
    """An image whose red channel encodes the mask value, so alignment can be checked pixel by pixel."""
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
    mask[:8, :8] = 1  # a non-symmetric block so a missed flip/rotation would show
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = mask * 100
    img[..., 1] = np.arange(w)[None, :] % 256  # position code: rotations/flips move it
    return img, mask


@pytest.mark.parametrize("seed", range(6))
def test_geometric_augments_keep_alignment(seed):
    torch.manual_seed(seed)
    img, mask = _coded_pair()
    tf = build_train_transform(
        {"enabled": True, "flip": True, "rotate90": True, "scale": None, "color_jitter": 0}, crop_size=32
    )
    ti, tm = tf(*to_tv(img, mask))
    assert ti.shape[-2:] == tm.shape[-2:] == (32, 32)
    red = ti[0].numpy()
    m = tm.numpy()
    valid = m != IGNORE
    assert valid.all()  # the crop fits inside the image: nothing invented
    np.testing.assert_array_equal(red[valid], m[valid].astype(np.uint8) * 100)


def test_scale_keeps_alignment_up_to_edges():
    torch.manual_seed(3)
    img, mask = _coded_pair(96, 96)
    mask = np.zeros_like(mask)
    mask[20:70, 30:80] = 2  # one big block: bilinear only softens its border
    img[..., 0] = mask * 100
    tf = build_train_transform({"enabled": True, "flip": True, "rotate90": True, "scale": [0.6, 1.6],
                                "color_jitter": 0}, crop_size=64)
    for _ in range(5):
        ti, tm = tf(*to_tv(img, mask))
        m = tm.numpy()
        red = ti[0].numpy().astype(int)
        valid = m != IGNORE
        # bilinear image vs nearest mask differ only on the block's rim ...
        agree = ((red >= 100) == (m == 2))[valid].mean()
        assert agree > 0.98
        # ... and the block sits at the same place (rounding moves an edge by <= 1/2 px; a sampling shift moves the whole block ~1 px)
        in_img, in_mask = np.argwhere((red >= 100) & valid), np.argwhere(m == 2)
        if len(in_mask) > 50:
            assert np.abs(in_img.mean(0) - in_mask.mean(0)).max() < 0.75
        assert set(np.unique(m)) <= {0, 2, IGNORE}  # nearest-neighbour: no invented class values


def test_crop_larger_than_image_pads_mask_with_ignore():
    img, mask = _coded_pair(20, 24)
    tf = build_train_transform({"enabled": False}, crop_size=32)
    ti, tm = tf(*to_tv(img, mask))
    m = tm.numpy()
    assert m.shape == (32, 32)
    assert (m == IGNORE).sum() == 32 * 32 - 20 * 24
    assert (ti[:, m == IGNORE] == 0).all()


def test_colour_jitter_changes_image_not_mask():
    torch.manual_seed(0)
    img, mask = _coded_pair()
    img[..., 2] = 120
    tf = build_train_transform({"enabled": True, "flip": False, "rotate90": False, "scale": None,
                                "color_jitter": 0.5}, crop_size=None)
    ti, tm = tf(*to_tv(img, mask))
    np.testing.assert_array_equal(tm.numpy(), mask)
    assert not torch.equal(ti, to_tv(img, mask)[0])


def test_disabled_augment_is_identity_without_crop():
    img, mask = _coded_pair()
    ti, tm = build_train_transform({"enabled": False}, crop_size=None)(*to_tv(img, mask))
    np.testing.assert_array_equal(ti.permute(1, 2, 0).numpy(), img)
    np.testing.assert_array_equal(tm.numpy(), mask)


def test_bad_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="train.augment.scale"):
        build_train_transform({"scale": [1.2, 0.8]}, 32)
    with pytest.raises(ConfigError, match="train.augment.scale"):
        build_train_transform({"scale": [1.0]}, 32)


def test_normalize_roundtrip():
    img, _ = _coded_pair()
    mean, std = [0.4, 0.5, 0.3], [0.2, 0.25, 0.1]
    x = normalize(to_tv(img, img[..., 0])[0], mean, std)
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(denormalize(x, mean, std), img)
