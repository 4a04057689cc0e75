"""The simulator's model: the demo's small network, trained in memory, fine-tuned round after round.

A round's class set is the ordered union of the earlier rounds' classes and the species of its
labelled images (contract C1: old indices kept, new ones appended). The round's network is built
for that set and initialised from the previous round's with `agir.checkpoint.transfer_weights`
(contract C2: the head widened, new rows fresh), then trained a fixed number of steps: the loop's
`ckpt_path: previous`. Training is a plain torch loop over images held in memory (no files, no
Lightning): AdamW, linear warm-up then cosine, gradient-norm clip 1, CE + Dice
(agir.train.losses.SegLoss) with inverse-frequency class weights capped at `weight_cap`, batches
drawn by repeat-factor sampling (`repeat_thresh`: frames with rare species more often), flips and
90-degree turns, random crops when frames are larger than `crop_size`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from agir.masks import IGNORE


@dataclasses.dataclass
class SimModel:
    net: torch.nn.Module
    classes: list[str]  # the model's foreground classes, output channel i + 1
    mean: list[float]
    std: list[float]
    note: str = ""  # transfer_weights' line

    def to_global(self, all_classes: Sequence[str]) -> np.ndarray:
        """Lookup: model channel -> index in the pool's class list."""
        return np.array([0] + [list(all_classes).index(c) + 1 for c in self.classes], np.uint8)


def round_classes(previous: Sequence[str], labelled_truths: Sequence[np.ndarray], all_classes: Sequence[str]
                  ) -> list[str]:
    """Earlier classes in their order, then species new in the labelled set (pool order)."""
    seen: set[int] = set()
    for t in labelled_truths:
        seen.update(int(v) for v in np.unique(t) if 0 < v != IGNORE)
    out = list(previous)
    out += [all_classes[i - 1] for i in sorted(seen) if all_classes[i - 1] not in out]
    return out


def norm_stats(rgbs: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    x = np.concatenate([r.reshape(-1, 3) for r in rgbs]).astype(np.float64) / 255.0
    return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()


def build(cfg, classes: Sequence[str], mean, std, previous: SimModel | None = None, seed: int = 0) -> SimModel:
    """A network for `classes`, its initial weights drawn from `seed` (not from whatever the worker process
    ran before), then the previous round's weights copied in where they fit (new head rows keep theirs)."""
    from agir.checkpoint import build_model, transfer_weights

    torch.manual_seed(int(seed))
    net = build_model(cfg.arch, cfg.encoder, 3, len(classes) + 1)
    note = "from scratch: round 0"
    if previous is not None:
        source = {"name": "previous round", "arch": cfg.arch, "encoder": cfg.encoder, "in_channels": 3,
                  "classes": list(previous.classes), "head": "softmax", "state_dict": previous.net.state_dict()}
        note = transfer_weights(net, source, list(classes), "softmax")
    return SimModel(net, list(classes), list(mean), list(std), note)


def _tensor(rgbs: Sequence[np.ndarray], mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def repeat_factors(labels: np.ndarray, k: int, thresh: float) -> np.ndarray:
    """Repeat-factor sampling (Gupta et al., 2019, LVIS): an image is drawn in proportion to
    max over its classes c of max(1, sqrt(thresh / f_c)), f_c = share of the images that show c.
    A weed in 2 % of the frames is drawn ~4x as often (thresh 0.3); thresh 0 draws uniformly."""
    n = len(labels)
    present = np.stack([np.bincount(y[y < k].ravel(), minlength=k)[:k] > 0 for y in labels]) if n else np.zeros((0, k))
    if thresh <= 0 or not n:
        return np.ones(n, np.float64)
    f = present.mean(0)
    r = np.where(f > 0, np.maximum(1.0, np.sqrt(thresh / np.maximum(f, 1e-9))), 1.0)
    r[0] = 1.0  # background is everywhere
    return np.where(present, r[None, :], 1.0).max(1)


def train(cfg, model: SimModel, rgbs: Sequence[np.ndarray], truths: Sequence[np.ndarray], all_classes,
          steps: int, lr: float, seed: int) -> float:
    """Train `model` in place for `steps` optimiser steps on (rgbs, truths).

    Returns the mean loss of the last 10 % of the steps (how far it converged)."""
    from agir.train.losses import SegLoss

    if steps <= 0:
        return float("nan")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    lut = np.full(256, IGNORE, np.uint8)
    lut[0] = 0
    for i, c in enumerate(model.classes, start=1):
        lut[list(all_classes).index(c) + 1] = i
    x_all = _tensor(rgbs, model.mean, model.std)
    y_all = torch.from_numpy(np.stack([lut[t] for t in truths]).astype(np.int64))
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    # train.class_weights: true (inverse pixel frequency over the labelled set, mean 1): without it the
    # rare species' few pixels never outweigh the background. The spread is capped (cfg.weight_cap,
    # 20x): at 50x a class seen in one frame dominated the loss and a full-pool run collapsed
    counts = np.bincount(y_all[y_all != IGNORE].numpy().ravel(), minlength=len(model.classes) + 1).astype(float)
    w = 1.0 / np.maximum(counts / max(1.0, counts.sum()), 1e-4)
    w = np.minimum(w, w.min() * float(cfg.weight_cap))
    loss_fn = SegLoss({"ce": 1.0, "dice": 1.0}, class_weights=(w / w.mean()).tolist(), ignore_index=IGNORE)
    n, h, w = y_all.shape
    cs = min(int(cfg.crop_size), h, w)
    draw = torch.from_numpy(repeat_factors(y_all.numpy(), len(model.classes) + 1, float(cfg.repeat_thresh)))
    tail: list[float] = []
    for step in range(int(steps)):
        idx = torch.multinomial(draw, int(cfg.batch_size), replacement=True, generator=gen)
        xb, yb = x_all[idx], y_all[idx]
        if cs < h or cs < w:
            y0 = int(torch.randint(0, h - cs + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, w - cs + 1, (1,), generator=gen))
            xb, yb = xb[..., y0:y0 + cs, x0:x0 + cs], yb[..., y0:y0 + cs, x0:x0 + cs]
        k = int(torch.randint(0, 4, (1,), generator=gen))
        if k and xb.shape[2] == xb.shape[3]:  # square crops turn freely
            xb, yb = torch.rot90(xb, k, (2, 3)), torch.rot90(yb, k, (1, 2))
        if int(torch.randint(0, 2, (1,), generator=gen)):
            xb, yb = xb.flip(3), yb.flip(2)
        loss = loss_fn(net(xb.contiguous()), yb.contiguous())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # no single odd batch throws the model off
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
    net.eval()
    return float(np.mean(tail))


@torch.no_grad()
def predict(model: SimModel, rgbs: Sequence[np.ndarray], batch: int = 16):
    """Yield (probs (C, H, W) float32 tensor in model channels, label in model channels) per image."""
    net = model.net.eval()
    for i in range(0, len(rgbs), batch):
        chunk = list(rgbs[i:i + batch])
        probs = torch.softmax(net(_tensor(chunk, model.mean, model.std)), dim=1)
        for p in probs:
            yield p, p.argmax(0).to(torch.uint8).numpy()


def confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    valid = truth != IGNORE
    return np.bincount(truth[valid].astype(np.int64) * k + pred[valid], minlength=k * k).reshape(k, k)


def class_ious(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def scores(cm: np.ndarray, classes: Sequence[str], rare: Sequence[str]) -> dict:
    """class mIoU over the foreground classes (a class never predicted scores 0), rare IoU, per class."""
    iou = class_ious(cm)
    fg = np.nan_to_num(iou[1:], nan=0.0)
    rare_idx = [list(classes).index(r) for r in rare]
    return {"class_miou": float(fg.mean()), "rare_iou": float(fg[rare_idx].mean()) if rare_idx else None,
            "background_iou": float(np.nan_to_num(iou[0])),
            "per_class": {c: round(float(v), 4) for c, v in zip(classes, fg)}}


def evaluate(model: SimModel, samples, all_classes: Sequence[str], rare: Sequence[str]) -> dict:
    k = len(all_classes) + 1
    lut = model.to_global(all_classes)
    cm = np.zeros((k, k), np.int64)
    for s, (_, label) in zip(samples, predict(model, [s.rgb for s in samples])):
        cm += confusion(lut[label], s.truth, k)
    return scores(cm, all_classes, rare)
