"""Metrics from the confusion matrix, the learning-rate schedule, and the module's plain hparams."""

from __future__ import annotations

import math

import pytest
import torch

from agir.train.module import SegModule, lr_factor, scores_from_confusion


def test_scores_from_confusion():
    # rows = truth, cols = prediction; class 2 never occurs and is never predicted
    cm = torch.tensor([[8, 2, 0], [1, 4, 0], [0, 0, 0]])
    s = scores_from_confusion(cm, ["background", "plant", "weed"])
    assert s["per_class_iou"]["background"] == pytest.approx(8 / 11, abs=1e-6)
    assert s["per_class_iou"]["plant"] == pytest.approx(4 / 7, abs=1e-6)
    assert s["per_class_iou"]["weed"] is None  # absent: not a zero in the mean
    assert s["mIoU"] == pytest.approx((8 / 11 + 4 / 7) / 2)
    assert s["fg_mIoU"] == pytest.approx(4 / 7)
    assert s["per_class_f1"]["plant"] == pytest.approx(8 / 11, abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(12 / 15)
    # a class present in the truth but never predicted counts as 0
    s = scores_from_confusion(torch.tensor([[5, 0], [3, 0]]), ["background", "plant"])
    assert s["per_class_iou"]["plant"] == 0.0 and s["mIoU"] == pytest.approx(5 / 16)
    assert math.isnan(scores_from_confusion(torch.zeros(2, 2), ["b", "p"])["mIoU"])


def test_lr_factor_warmup_then_cosine():
    total, warm = 100, 10
    assert lr_factor(0, total, warm, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "cosine") == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(80, total, warm, "none") == 1.0
    assert lr_factor(0, total, 0, "cosine") == pytest.approx(1.0)


def test_module_hparams_are_plain_and_weights_live_under_model():
    meta = {
        "arch": "FPN", "encoder": "resnet18", "in_channels": 3, "classes": ["plant"], "head": "softmax",
        "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}, "input": {"tile_size": 64, "overlap": 0.0},
        "config": {"loss": {"ce": 1.0}}, "class_weights": [0.5, 1.5],
    }
    m = SegModule(meta)
    assert type(m.hparams["agir"]) is dict and m.hparams["agir"]["classes"] == ["plant"]
    meta["classes"].append("changed later")  # the module keeps its own copy
    assert m.hparams["agir"]["classes"] == ["plant"]
    keys = list(m.state_dict())
    assert keys and all(k.startswith("model.") for k in keys)
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
