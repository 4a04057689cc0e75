"""Segmentation losses: cross-entropy, Dice, focal and their weighted sum, all ignoring label 255.

Cross-entropy is torch's, Dice segmentation_models_pytorch's (with `ignore_index`). Focal is the
softmax form of Lin et al. (2017), `(1 - p_t)^gamma * CE` per pixel, written on top of torch's
cross-entropy: smp's "multiclass" focal scores each channel with an independent sigmoid, which
does not match a softmax head (it penalises logits the softmax is indifferent to). Logits are (N, K+1, H, W) with channel 0 = background,
targets (N, H, W) int64 with IGNORE (255) where there is no label (padding, unknown classes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from agir.errors import ConfigError
from agir.masks import IGNORE

LOSS_NAMES = ("ce", "dice", "focal")


class SegLoss(nn.Module):
    """`ce * CE + dice * Dice + focal * Focal`; terms with weight 0 are not computed.

    `class_weights` (one per output channel) weight the cross-entropy term only: Dice is already
    balanced per class, and weighting focal as well would count the imbalance twice.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = IGNORE,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        weights = dict(weights or {"ce": 1.0})
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(f"train.loss: unknown term(s) {unknown}; use {list(LOSS_NAMES)}")
        self.weights = {k: float(weights.get(k, 0.0) or 0.0) for k in LOSS_NAMES}
        if any(v < 0 for v in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError(f"train.loss={weights}: weights must be >= 0 and not all 0, e.g. ce: 1.0, dice: 1.0")
        self.ignore_index = ignore_index
        # not persistent: the weights are rebuilt from hparams, and the model's state_dict stays pure
        cw = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", cw, persistent=False)
        self.dice = DiceLoss("multiclass", from_logits=True, ignore_index=ignore_index)
        self.focal_gamma = float(focal_gamma)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each active term separately (for logging), computed in float32 even under mixed precision."""
        logits = logits.float()
        out: dict[str, torch.Tensor] = {}
        valid = int((target != self.ignore_index).sum())
        if self.weights["ce"]:
            if valid == 0:
                # F.cross_entropy returns NaN when every pixel is ignored; contribute nothing instead
                out["ce"] = logits.sum() * 0.0
            else:
                out["ce"] = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        if self.weights["dice"]:
            out["dice"] = self.dice(logits, target)
        if self.weights["focal"]:
            out["focal"] = self.softmax_focal(logits, target, valid)
        return out

    def softmax_focal(self, logits: torch.Tensor, target: torch.Tensor, valid: int) -> torch.Tensor:
        """Mean over labelled pixels of (1 - p_t)^gamma * -log p_t (p_t: softmax prob of the true class)."""
        if valid == 0:
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        pt = torch.exp(-ce)
        return ((1.0 - pt).pow(self.focal_gamma) * ce).sum() / valid

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = self.terms(logits, target)
        return sum(self.weights[k] * v for k, v in terms.items())
