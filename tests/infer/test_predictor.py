"""Tiled, batched, blended prediction: geometry, blending, heads, memory strip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agir.checkpoint import build_model
from agir.errors import AgirError
from agir.infer.predictor import TiledPredictor, blend_window, resolve_device, window_1d


class Recorder(torch.nn.Module):
    """Outputs fixed logits per channel; records every input shape it was given."""

    def __init__(self, logits=(0.0, 1.0), divisor=32):
        super().__init__()
        self.logits = torch.tensor(logits).view(1, -1, 1, 1)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.logits.expand(x.shape[0], -1, x.shape[2], x.shape[3]).clone()


class PixelModel(torch.nn.Module):
    """A 1x1 convolution: every output pixel depends on its own input pixel only (translation-equivariant)."""

    def __init__(self, outputs=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, outputs, 1)

    def forward(self, x):
        return self.conv(x)


def _pred(model, **kw):
    args = dict(head="softmax", mean=[0.5] * 3, std=[0.25] * 3, tile_size=64, overlap=0.25, batch_size=3,
                channels_last=False)
    args.update(kw)
    return TiledPredictor(model, **args)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_small_image_runs_once_padded_only_to_the_divisor():
    rec = Recorder()
    mask, info = _pred(rec, tile_size=512, divisor=32).predict(_img(50, 70))
    assert info["tiles"] == 1 and rec.shapes == [(1, 3, 64, 96)]
    assert mask.shape == (50, 70) and (mask == 1).all()


def test_tiles_are_batched_and_cover_edges():
    rec = Recorder()
    # 150 x 200 with tile 64 / overlap 0.25: stride 48 -> rows 0,48,86 x columns 0,48,96,136 (last flush with the edge)
    mask, info = _pred(rec, batch_size=5, divisor=32).predict(_img(150, 200))
    assert info["tiles"] == 12
    assert [s[0] for s in rec.shapes] == [5, 5, 2]
    assert all(s[2:] == (64, 64) for s in rec.shapes)
    assert mask.shape == (150, 200) and (mask == 1).all()


def test_overlap_zero_and_odd_tile_size_is_padded_per_tile():
    rec = Recorder()
    _, info = _pred(rec, tile_size=50, overlap=0.0, divisor=32).predict(_img(100, 150))
    assert info["tiles"] == 2 * 3 and all(s[2:] == (64, 64) for s in rec.shapes)


def test_constant_logits_give_a_seam_free_probability_map():
    for blend in ("gaussian", "hann"):
        _, info = _pred(Recorder((0.3, 1.1, -0.4)), blend=blend).predict(_img(130, 170), return_probs=True)
        expected = torch.softmax(torch.tensor([0.3, 1.1, -0.4]), 0).numpy()
        probs = info["probs"]
        assert np.abs(probs - expected[:, None, None]).max() < 1e-5
        # no seam: neighbouring pixels never differ
        assert np.abs(np.diff(probs, axis=1)).max() < 1e-5 and np.abs(np.diff(probs, axis=2)).max() < 1e-5


def test_tiled_equals_whole_for_a_pixelwise_model():
    img = _img(170, 230, seed=3)
    model = PixelModel()
    m_tiled, i_tiled = _pred(model, tile_size=64, overlap=0.3, divisor=1).predict(img, return_probs=True)
    m_whole, i_whole = _pred(model, tile_size=256, divisor=1).predict(img, return_probs=True)
    assert i_whole["tiles"] == 1 and i_tiled["tiles"] > 10
    assert np.abs(i_tiled["probs"] - i_whole["probs"]).max() < 1e-5
    assert (m_tiled == m_whole).all()


def test_real_unet_tiled_agrees_with_whole_image_prediction():
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 3, 3).eval()
    # a structured image (smooth blobs), as real photos are, so predictions have large regions
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    import cv2

    img = cv2.resize(small, (256, 192), interpolation=cv2.INTER_CUBIC)
    m_tiled, info = _pred(model, tile_size=128, overlap=0.5, batch_size=4).predict(img)
    m_whole, _ = _pred(model, tile_size=256).predict(img)
    assert info["tiles"] > 4
    assert (m_tiled == m_whole).mean() >= 0.99


def test_binary_head_threshold_changes_the_mask():
    probs_logit = float(np.log(0.6 / 0.4))  # sigmoid -> 0.6 everywhere
    img = _img(40, 40)
    low, _ = _pred(Recorder((probs_logit,)), head="sigmoid", threshold=0.5).predict(img)
    high, _ = _pred(Recorder((probs_logit,)), head="sigmoid", threshold=0.7).predict(img)
    assert (low == 1).all() and (high == 0).all()


def test_multiclass_argmax_picks_the_largest_channel():
    mask, _ = _pred(Recorder((0.0, 0.5, 2.0, 1.0))).predict(_img(90, 90))
    assert (mask == 2).all()


def test_windows_are_smooth_positive_and_peak_in_the_middle():
    for kind in ("gaussian", "hann"):
        w = window_1d(64, kind)
        assert w.min() > 0 and w.argmax() in (31, 32) and w.max() == pytest.approx(1.0)
    assert blend_window(8, 16).shape == (8, 16)
    with pytest.raises(AgirError, match="blend"):
        window_1d(8, "box")


def test_bad_settings_are_clear_errors():
    with pytest.raises(AgirError, match="overlap"):
        _pred(Recorder(), overlap=1.0)
    with pytest.raises(AgirError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(AgirError, match="no CUDA device"):
            resolve_device("cuda:0")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_agrees_with_cpu():
    import copy

    import cv2

    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 3, 3).eval()
    small = np.random.default_rng(1).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    img = cv2.resize(small, (384, 256), interpolation=cv2.INTER_CUBIC)
    m_cpu, _ = _pred(copy.deepcopy(model), tile_size=128, device="cpu").predict(img)
    gpu = _pred(copy.deepcopy(model), tile_size=128, device="cuda", channels_last=True)
    assert gpu.amp
    m_gpu, info = gpu.predict(img)
    assert info["tiles"] > 4 and (m_cpu == m_gpu).mean() >= 0.99
