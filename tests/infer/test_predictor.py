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


class BandRecorder:
    """A stats sink that keeps every band it is fed."""

    def __init__(self):
        self.bands = []

    def add(self, probs):
        self.bands.append(probs.clone())


def test_stats_get_every_row_once_as_normalised_probabilities():
    from agir.select.uncertainty import UncertaintyAccumulator, image_uncertainty

    img = _img(170, 230, seed=4)
    p = _pred(PixelModel(), tile_size=64, overlap=0.3, divisor=1)
    rec = BandRecorder()
    mask, info = p.predict(img, return_probs=True, stats=rec)
    full = torch.cat(rec.bands, dim=1)
    assert len(rec.bands) > 2 and full.shape == (3, 170, 230)  # streamed in bands, top to bottom
    assert np.abs(full.numpy() - info["probs"]).max() < 1e-6
    assert torch.allclose(full.sum(0), torch.ones(170, 230), atol=1e-5)
    acc = UncertaintyAccumulator(["a", "b"])
    mask2, _ = p.predict(img, stats=acc)  # no return_probs: nothing full-frame is kept
    assert (mask2 == mask).all()
    got, want = acc.result(), image_uncertainty(info["probs"], ["a", "b"])
    assert got["pixels"] == 170 * 230
    for k in ("entropy_mean", "margin_mean", "uncertain_fraction", "plant_fraction"):
        assert got[k] == pytest.approx(want[k], abs=1e-6)


def test_stats_of_a_sigmoid_head_are_the_foreground_probability():
    logit = float(np.log(0.7 / 0.3))
    rec = BandRecorder()
    _pred(Recorder((logit,)), head="sigmoid").predict(_img(100, 90), stats=rec)
    full = torch.cat(rec.bands, dim=1)
    assert full.shape == (1, 100, 90) and torch.allclose(full, torch.full_like(full, 0.7), atol=1e-5)


def test_batch_size_auto_is_one_tile_per_pass_on_cpu_and_explicit_values_are_kept():
    from agir.infer.predictor import check_batch_size, gpu_batch_size

    rec = Recorder()
    _, info = _pred(rec, batch_size="auto").predict(_img(150, 200))
    assert info["tiles"] == 12 and [s[0] for s in rec.shapes] == [1] * 12 and info["batch_size"] == 1
    rec = Recorder()
    args = dict(head="softmax", mean=[0.5] * 3, std=[0.25] * 3, tile_size=64, overlap=0.25, channels_last=False)
    TiledPredictor(rec, **args).predict(_img(150, 200))  # the constructor's default is auto too
    assert [s[0] for s in rec.shapes] == [1] * 12
    assert check_batch_size("auto") == "auto" and check_batch_size(3) == 3 and check_batch_size("4") == 4
    for bad in (0, -1, "abc", 2.5, True, None):
        with pytest.raises(AgirError, match="batch_size"):
            _pred(Recorder(), batch_size=bad)
    # GPU sizing: half the free memory over one tile's measured need, at least 1, at most the cap/tiles
    assert gpu_batch_size(100, 1000) == 5 and gpu_batch_size(100, 1000, n_tiles=3) == 3
    assert gpu_batch_size(1000, 100) == 1 and gpu_batch_size(1, 10**12) == 16


def test_batchnorm_folding_keeps_predictions_and_leaves_the_callers_model_alone():
    import cv2

    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", 3, 3).eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # non-trivial running statistics, as a trained network has
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    small = np.random.default_rng(2).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    img = cv2.resize(small, (200, 150), interpolation=cv2.INTER_CUBIC)
    plain = _pred(model, tile_size=128, fold_bn=False)
    folded = _pred(model, tile_size=128)
    assert plain.folded_bn == 0 and folded.folded_bn == n_bn > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn  # caller's model untouched
    m1, i1 = plain.predict(img, return_probs=True)
    m2, i2 = folded.predict(img, return_probs=True)
    assert np.abs(i1["probs"] - i2["probs"]).max() < 1e-4 and (m1 == m2).mean() >= 0.999


def test_batchnorm_that_does_not_follow_a_convolution_is_kept():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)
            self.bn = torch.nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x) * 2.0)  # BN of a scaled conv output: folding it naively is wrong

    p = _pred(Odd().eval())
    assert p.folded_bn == 0 and isinstance(p.model.bn, torch.nn.BatchNorm2d)


def test_gpu_auto_batch_runs_one_measured_tile_then_sized_batches(monkeypatch):
    # the CUDA memory calls faked: one tile needs 100 bytes, 1000 are free -> batches of 5
    p = _pred(Recorder(), batch_size="auto")
    p.batch_size = "auto"  # as on a GPU (on a CPU auto resolves to 1 at once)
    fake = {"synchronize": lambda d=None: None, "reset_peak_memory_stats": lambda d=None: None,
            "memory_allocated": lambda d=None: 50, "max_memory_allocated": lambda d=None: 150,
            "memory_reserved": lambda d=None: 50, "mem_get_info": lambda d=None: (1000, 4000)}
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    rec = p.model
    mask, info = p.predict(_img(150, 200))  # 12 tiles of 64 x 64
    assert [s[0] for s in rec.shapes] == [1, 5, 5, 1] and info["batch_size"] == 5
    rec.shapes.clear()
    p.predict(_img(150, 200))  # measured once per tile shape
    assert [s[0] for s in rec.shapes] == [5, 5, 2]
