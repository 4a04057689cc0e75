"""Choosing the pre-labeler of a round: never send annotators worse pre-labels than the index gives.

A small model trained on few photos can pre-label worse than the vegetation-index baseline
(issue 11 §4). Before a round pre-labels with a model, `choose_prelabeler` scores the candidates —
the baseline and the project's trained checkpoints — on labelled images none of them trained on
(the newest earlier round's val/test images, minus any image in any candidate's train split) with
the same predictor and baseline code inference uses, and writes `{run}/infer/prelabeler.json`:

    {"chosen": "baseline" | <ckpt path>, "chosen_name", "margin", "reason", "eval_images": [...],
     "candidates": [{"name", "path", "plant_iou", "miou", "images"}, ...]}

`margin` is the chosen candidate's plant IoU minus the runner-up's. Ties go to the baseline: a
model has to measure better to be used.

`combine_prelabels` is the hybrid pre-labeler: the model's class where it is confident, the
vegetation index elsewhere (benchmarks/real_photos_loo.py measures it on real photos).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agir.errors import AgirError
from agir.logs import get_logger
from agir.masks import BACKGROUND, IGNORE, read_classes, read_mask
from agir.runs import read_json, write_json

log = get_logger("prelabeler")

BASELINE = "baseline"


def combine_prelabels(model_probs: np.ndarray, baseline_mask: np.ndarray, threshold: float) -> np.ndarray:
    """Class-index mask: the model's argmax where its top probability >= threshold, else the baseline.

    `model_probs` is (C, H, W): softmax with channel 0 = background (C = K+1), or one sigmoid channel
    (C = 1, plant probability). `baseline_mask` is (H, W) plant 0/1 (or class indices, passed through).
    Where the baseline decides and the model has several classes, a baseline plant pixel takes the
    model's most likely foreground class, so species labels still come from the model.
    """
    probs = np.asarray(model_probs, dtype=np.float32)
    base = np.asarray(baseline_mask)
    if probs.ndim != 3 or probs.shape[1:] != base.shape:
        raise AgirError(
            f"combine_prelabels: probabilities {probs.shape} and baseline mask {base.shape} do not match; "
            "expected (C, H, W) and (H, W)"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise AgirError(f"combine_prelabels: threshold {threshold} must be in [0, 1]")
    if probs.shape[0] == 1:
        p = probs[0]
        model_mask = (p >= 0.5).astype(np.uint8)
        confidence = np.maximum(p, 1.0 - p)
        fallback = (base > 0).astype(np.uint8)
    else:
        model_mask = probs.argmax(0).astype(np.uint8)
        confidence = probs.max(0)
        if probs.shape[0] == 2:
            fallback = (base > 0).astype(np.uint8)
        else:
            best_fg = (probs[1:].argmax(0) + 1).astype(np.uint8)
            fallback = np.where(base > 0, best_fg, BACKGROUND).astype(np.uint8)
    return np.where(confidence >= float(threshold), model_mask, fallback).astype(np.uint8)
