"""The LightningModule: network, loss, optimiser/schedule and segmentation metrics.

The module is rebuilt from one plain dict, `hparams["agir"]`: the best.pth metadata of
`agir.checkpoint` (arch, encoder, in_channels, classes, head, normalization, input) plus the train
settings under `config` and optional `class_weights`. Because that dict holds only plain types and
the network lives at `self.model`, a Lightning `.ckpt` loads with `torch.load(weights_only=True)` and
through `agir.checkpoint.load_checkpoint` like a best.pth.

Metrics come from one confusion matrix per split (torchmetrics, synced across DDP ranks):
per-class IoU and F1 over channels 0..K (0 = background); a class with neither ground truth nor
prediction in the split is NaN and left out of the mean. `mIoU` is the mean over all channels
including background (the monitored value), `fg_mIoU` the mean over plant classes only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from agir.checkpoint import build_model, num_outputs_for
from agir.errors import ConfigError
from agir.logs import get_logger
from agir.masks import IGNORE
from agir.train.losses import SegLoss

log = get_logger("train")

MONITOR = "val/mIoU"


def scores_from_confusion(cm: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """Per-class IoU/F1 and their means from a (C, C) confusion matrix (rows = truth, cols = prediction)."""
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    union = tp + fp + fn
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    f1 = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)

    def mean(t: torch.Tensor) -> float:
        t = t[~torch.isnan(t)]
        return float(t.mean()) if t.numel() else float("nan")

    def named(t: torch.Tensor) -> dict[str, float | None]:
        return {n: (None if math.isnan(v) else round(float(v), 6)) for n, v in zip(names, t.tolist())}

    total = float(cm.sum())
    return {
        "mIoU": mean(iou),
        "fg_mIoU": mean(iou[1:]),
        "mF1": mean(f1),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_iou": named(iou),
        "per_class_f1": named(f1),
        "pixels": int(total),
    }


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then cosine to 0 or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    return 1.0


class SegModule(L.LightningModule):
    """Semantic segmentation with a softmax head of K+1 outputs (channel 0 = background)."""

    def __init__(self, agir: Mapping[str, Any]):
        super().__init__()
        # a plain dict (deep copy, no custom classes) so checkpoints stay weights_only-loadable
        self.save_hyperparameters({"agir": copy.deepcopy(dict(agir))})
        meta = self.hparams["agir"]
        self.cfg = dict(meta.get("config") or {})
        self.class_names = ["background", *meta["classes"]]
        num_outputs = num_outputs_for(meta["classes"], meta.get("head", "softmax"))
        if num_outputs != len(self.class_names):
            raise ConfigError("the train stage builds softmax heads only (K+1 outputs); head must be 'softmax'")
        self.model = build_model(meta["arch"], meta["encoder"], meta["in_channels"], num_outputs)
        self.criterion = SegLoss(self.cfg.get("loss"), meta.get("class_weights"), ignore_index=IGNORE)
        n = len(self.class_names)
        self.val_cm = MulticlassConfusionMatrix(num_classes=n, ignore_index=IGNORE)
        self.test_cm = MulticlassConfusionMatrix(num_classes=n, ignore_index=IGNORE)
        self.val_scores: dict[str, Any] = {}
        self.test_scores: dict[str, Any] = {}
        self._loss_sum = 0.0
        self._loss_n = 0

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0

    def epoch_train_loss(self) -> float | None:
        """Mean training loss of the current epoch so far (this rank), for the per-epoch history."""
        return float(self._loss_sum) / self._loss_n if self._loss_n else None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        logits = self(x)
        terms = self.criterion.terms(logits, y)
        loss = sum(self.criterion.weights[k] * v for k, v in terms.items())
        bs = x.shape[0]
        # a device tensor: no host sync per step (it would stall the GPU pipeline)
        self._loss_sum = self._loss_sum + loss.detach() * bs
        self._loss_n += bs
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        for k, v in terms.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _eval_step(self, batch, cm: MulticlassConfusionMatrix, prefix: str) -> None:
        x, y, _ = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.log(f"{prefix}/loss", loss, on_step=False, on_epoch=True, prog_bar=prefix == "val",
                 batch_size=x.shape[0], sync_dist=True)
        cm.update(logits.argmax(1), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_cm, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_cm, "test")

    def on_validation_epoch_end(self) -> None:
        self.val_scores = scores_from_confusion(self.val_cm.compute(), self.class_names)
        self.val_cm.reset()
        miou = self.val_scores["mIoU"]
        # NaN would break checkpoint/early-stopping comparisons (empty validation)
        self.log(MONITOR, 0.0 if math.isnan(miou) else miou, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self.test_scores = scores_from_confusion(self.test_cm.compute(), self.class_names)
        self.test_cm.reset()
        miou = self.test_scores["mIoU"]
        self.log("test/mIoU", 0.0 if math.isnan(miou) else miou)

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        lr = float(self.cfg.get("lr", 1e-3))
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=float(self.cfg.get("weight_decay", 1e-4)))
        schedule = str(self.cfg.get("schedule", "cosine"))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = int(round(float(self.cfg.get("warmup_epochs", 0) or 0) * total / epochs))
        warmup = min(warmup, total - 1) if total > 1 else 0
        if schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=total, pct_start=max(warmup / total, 1e-3), anneal_strategy="cos"
            )
        elif schedule in ("cosine", "none"):
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))
        else:
            raise ConfigError(f"train.schedule={schedule!r}: use cosine, onecycle or none")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning stores hparams as AttributeDict; a plain dict keeps torch.load(weights_only=True) happy.
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = {"agir": copy.deepcopy(dict(self.hparams["agir"]))}
