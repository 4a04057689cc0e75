"""Grouped, stratified, deterministic splits."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict

import pytest

from agir.data import run_preprocess_stage
from agir.data.splits import assign_splits, check_split_ratios
from agir.errors import ConfigError

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_ratios_are_validated():
    assert check_split_ratios({"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}) == {"train": 0.8, "val": 0.1, "test": 0.1}
    with pytest.raises(ConfigError, match="sum to 1.1"):
        check_split_ratios({"train": 0.8, "val": 0.2, "test": 0.1})
    with pytest.raises(ConfigError, match="train"):
        check_split_ratios({"train": 0.0, "val": 0.5, "test": 0.5})


def test_split_is_deterministic_independent_of_order_and_seeded():
    strata = {f"IMG_{i}": ("barley", "maize", "soybean")[i % 3] for i in range(60)}
    a = assign_splits(strata, RATIOS, seed=7)
    b = assign_splits(dict(reversed(list(strata.items()))), RATIOS, seed=7)
    assert a == b
    assert assign_splits(strata, RATIOS, seed=8) != a


def test_split_is_stratified_by_dominant_class():
    strata = {f"IMG_{i}": ("barley" if i < 80 else "maize") for i in range(100)}
    out = assign_splits(strata, RATIOS, seed=1)
    per = defaultdict(Counter)
    for image_id, split in out.items():
        per[strata[image_id]][split] += 1
    assert per["barley"] == Counter({"train": 56, "val": 12, "test": 12})
    assert per["maize"] == Counter({"train": 14, "val": 3, "test": 3})


def test_small_strata_are_pooled_and_every_split_gets_an_image():
    strata = {f"IMG_{i}": f"species_{i}" for i in range(5)}  # every image its own class
    out = assign_splits(strata, RATIOS, seed=3)
    assert set(out.values()) == {"train", "val", "test"}
    assert Counter(out.values())["train"] == 3


def test_stage_keeps_all_tiles_of_an_image_in_one_split_across_reruns(kit):
    cfg = kit.cfg(**{"preprocess.tile.size": 16})
    records: list = []
    for i in range(12):
        kit.add_db_image(cfg, records, f"IMG_{i:02d}", 40, 40, [(3 if i % 2 else 7, 0, 0, 20, 20)],
                         ["barley" if i % 2 else "maize"], seed=i)
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)

    def splits():
        with open(run / "dataset" / "index.csv") as fh:
            rows = list(csv.DictReader(fh))
        by_image = defaultdict(set)
        for r in rows:
            by_image[r["image_id"]].add(r["split"])
            assert r["image"].startswith(f"{r['split']}/images/") and (run / "dataset" / r["image"]).exists()
        return by_image

    first = splits()
    assert len(first) == 12 and all(len(s) == 1 for s in first.values())
    assert {next(iter(s)) for s in first.values()} == {"train", "val", "test"}
    assert metrics["split_of_image"] == {k: next(iter(v)) for k, v in first.items()}
    run_preprocess_stage(cfg, run, force=True)
    assert splits() == first
