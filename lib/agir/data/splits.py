"""Train/val/test split grouped by source image, stratified by dominant class, deterministic.

Every sample of one `image_id` (all tiles of one photograph, all cutouts of one frame) lands in
the same split, so no photograph leaks between train and test. Within a stratum (the images'
dominant class) images are ordered by a seeded hash of their id and cut by the ratios with a
seeded phase (systematic sampling): the result depends only on ids, strata and seed, not on the
order of inputs, and adding one image moves at most a boundary image of its stratum.
Strata too small to give every non-zero split an image are pooled, so stratification happens
"where possible".
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping

from agir.errors import ConfigError

SPLITS = ("train", "val", "test")
POOLED = "__pooled__"


def unit_hash(seed: int, key: str) -> float:
    """A uniform number in [0, 1) from (seed, key): stable across runs, platforms and processes."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_split_ratios(split_cfg: Mapping) -> dict[str, float]:
    ratios = {}
    for name in SPLITS:
        value = split_cfg.get(name, 0.0)
        if not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
            raise ConfigError(f"preprocess.split.{name}={value!r}: must be a fraction in [0, 1]")
        ratios[name] = float(value)
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"preprocess.split ratios train={ratios['train']}, val={ratios['val']}, test={ratios['test']} "
            f"sum to {total:g}; make them sum to 1"
        )
    if ratios["train"] <= 0:
        raise ConfigError("preprocess.split.train=0: the train split needs a positive fraction")
    return ratios


def assign_splits(strata: Mapping[str, str], ratios: Mapping[str, float], seed: int) -> dict[str, str]:
    """image_id -> split, given image_id -> stratum label (e.g. the dominant class)."""
    positive = [s for s in SPLITS if ratios.get(s, 0.0) > 0]
    # Smallest stratum in which systematic sampling gives every positive split at least one image.
    min_size = math.ceil(1.0 / min(ratios[s] for s in positive) - 1e-9)
    members: dict[str, list[str]] = defaultdict(list)
    for image_id, label in strata.items():
        members[str(label)].append(str(image_id))
    pooled: list[str] = []
    groups: dict[str, list[str]] = {}
    for label, ids in members.items():
        if len(ids) >= min_size:
            groups[label] = ids
        else:
            pooled.extend(ids)
    if pooled:
        groups[POOLED] = pooled

    cumulative = []
    acc = 0.0
    for s in positive:
        acc += ratios[s]
        cumulative.append((acc, s))
    cumulative[-1] = (1.0 + 1e-9, cumulative[-1][1])

    out: dict[str, str] = {}
    for label, ids in groups.items():
        ordered = sorted(ids, key=lambda i: (unit_hash(seed, i), i))
        phase = unit_hash(seed, f"stratum:{label}")
        n = len(ordered)
        for j, image_id in enumerate(ordered):
            u = (j + phase) / n
            out[image_id] = next(s for edge, s in cumulative if u < edge)
    _fill_empty_splits(out, positive, seed)
    return out


def _fill_empty_splits(out: dict[str, str], positive: list[str], seed: int) -> None:
    """With very few images, give each positive split one image taken from the largest split."""
    if len(out) < len(positive):
        return
    for split in positive:
        if split in out.values():
            continue
        counts = {s: sum(1 for v in out.values() if v == s) for s in positive}
        donor = max(positive, key=lambda s: (counts[s], s == "train"))
        candidates = sorted((i for i, s in out.items() if s == donor), key=lambda i: (unit_hash(seed, i), i))
        out[candidates[-1]] = split
