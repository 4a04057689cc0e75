"""Losses honour ignore (255), combine by weight, and apply class weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agir.errors import ConfigError
from agir.masks import IGNORE
from agir.train.losses import SegLoss


def _batch(seed: int = 0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 16, 16, generator=g)
    target = torch.randint(0, classes, (2, 16, 16), generator=g)
    target[:, :4] = IGNORE
    return logits, target


@pytest.mark.parametrize("weights", [{"ce": 1}, {"dice": 1}, {"focal": 1}, {"ce": 1, "dice": 0.5, "focal": 2}])
def test_ignored_pixels_do_not_change_loss_or_get_gradient(weights):
    logits, target = _batch()
    loss_fn = SegLoss(weights)
    other = logits.clone()
    other[:, :, :4] = torch.randn(2, 3, 4, 16) * 50  # wild logits where the label is ignore
    assert torch.allclose(loss_fn(logits, target), loss_fn(other, target), atol=1e-6)
    x = logits.clone().requires_grad_(True)
    loss_fn(x, target).backward()
    assert x.grad[:, :, :4].abs().max() == 0
    assert x.grad[:, :, 4:].abs().max() > 0


def test_ignore_is_not_background():
    logits, target = _batch()
    as_background = target.clone()
    as_background[as_background == IGNORE] = 0
    assert not torch.allclose(SegLoss({"ce": 1})(logits, target), SegLoss({"ce": 1})(logits, as_background))


def test_all_ignored_is_zero_not_nan():
    logits, target = _batch()
    target[:] = IGNORE
    x = logits.clone().requires_grad_(True)
    loss = SegLoss({"ce": 1, "dice": 1, "focal": 1})(x, target)
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad.abs().max() == 0


def test_weighted_sum_of_terms():
    logits, target = _batch(1)
    ce, dice, focal = (SegLoss({k: 1})(logits, target) for k in ("ce", "dice", "focal"))
    both = SegLoss({"ce": 0.5, "dice": 2.0, "focal": 3.0})(logits, target)
    assert torch.allclose(both, 0.5 * ce + 2.0 * dice + 3.0 * focal, atol=1e-6)
    assert torch.allclose(ce, F.cross_entropy(logits, target, ignore_index=IGNORE))


def test_focal_is_softmax_focal_and_down_weights_easy_pixels():
    logits, target = _batch(4)
    valid = target != IGNORE
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")[valid]
    p_t = torch.exp(-ce)
    want = ((1 - p_t) ** 2 * ce).mean()
    assert torch.allclose(SegLoss({"focal": 1})(logits, target), want, atol=1e-6)
    assert SegLoss({"focal": 1})(logits, target) < SegLoss({"ce": 1})(logits, target)


def test_perfect_prediction_has_low_loss():
    _, target = _batch(2)
    logits = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 20
    assert float(SegLoss({"ce": 1, "dice": 1, "focal": 1})(logits, target)) < 1e-3


def test_class_weights_weight_cross_entropy():
    logits, target = _batch(3)
    w = [0.2, 1.0, 3.0]
    got = SegLoss({"ce": 1}, class_weights=w)(logits, target)
    want = F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=IGNORE)
    assert torch.allclose(got, want)
    assert not torch.allclose(got, SegLoss({"ce": 1})(logits, target))
    # not part of the state_dict: checkpoints keep only the network's weights
    assert "class_weights" not in SegLoss({"ce": 1}, class_weights=w).state_dict()


def test_bad_loss_settings():
    with pytest.raises(ConfigError, match="unknown term"):
        SegLoss({"lovasz": 1})
    with pytest.raises(ConfigError, match="not all 0"):
        SegLoss({"ce": 0, "dice": 0})
