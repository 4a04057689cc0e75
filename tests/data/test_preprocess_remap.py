"""Class remapping by name across rounds with different class lists; binary mode; explicit names."""

from __future__ import annotations

import csv

import numpy as np

from agir.data import run_preprocess_stage
from agir.data.remap import remap_mask, target_index_by_name
from agir.masks import make_classes, read_classes, read_mask


def _masks_by_record(run):
    with open(run / "dataset" / "index.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {r["record_id"]: read_mask(run / "dataset" / r["mask"]) for r in rows}, rows


def _two_rounds(kit, **overrides):
    cfg = kit.cfg(**{"preprocess.label_source": "cvat", "preprocess.tile.size": 64, **overrides})
    # round 1 labels barley=1, maize=2; round 2 labels maize=1, soybean=2, barley=3
    a = kit.synth(40, 40, [(1, 0, 0, 10, 10), (2, 20, 20, 30, 30)])
    b = kit.synth(40, 40, [(1, 0, 0, 10, 10), (2, 20, 20, 30, 30), (3, 30, 0, 40, 10)], seed=2)
    kit.add_cvat_round(cfg, "round_001", {"A": a}, ["barley", "maize"])
    kit.add_cvat_round(cfg, "round_002", {"B": b}, ["maize", "soybean", "barley"])
    return cfg


def test_rounds_with_different_class_lists_remap_by_name(kit):
    cfg = _two_rounds(kit)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    assert metrics["classes"] == ["barley", "maize", "soybean"]
    assert [c["name"] for c in read_classes(run / "dataset")] == ["barley", "maize", "soybean"]
    masks, _ = _masks_by_record(run)
    assert (masks["A"][5, 5], masks["A"][25, 25]) == (1, 2)
    assert (masks["B"][5, 5], masks["B"][25, 25], masks["B"][35, 5]) == (2, 3, 1)
    for split in ("train", "val", "test"):
        assert read_classes(run / "dataset" / split / "masks") == read_classes(run / "dataset")


def test_binary_mode_maps_every_species_to_plant(kit):
    cfg = _two_rounds(kit, **{"classes.mode": "binary"})
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    assert metrics["classes"] == ["plant"]
    masks, rows = _masks_by_record(run)
    for m in masks.values():
        assert set(np.unique(m[:40, :40])) == {0, 1}  # beyond 40 px: tile padding (ignore)
    assert masks["B"][35, 5] == 1 and masks["B"][25, 25] == 1
    assert {"px_background", "px_plant", "px_ignore"} <= set(rows[0])


def test_explicit_class_names_order_and_unplaced_names_reported(kit):
    cfg = _two_rounds(kit, **{"classes.names": ["Maize", "barley"]})
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    assert metrics["classes"] == ["maize", "barley"]
    masks, _ = _masks_by_record(run)
    assert (masks["A"][5, 5], masks["A"][25, 25]) == (2, 1)
    assert masks["B"][25, 25] == 255  # soybean is not a dataset class: ignored, not background
    assert metrics["unplaced_class_names"] == {"soybean": {"samples": 1, "pixels": 100}}


def test_remap_mask_reports_unknown_values():
    src = make_classes(["barley", "maize"])
    mask = np.array([[0, 1, 2, 5, 255]], np.uint8)
    out, unknown, unplaced = remap_mask(mask, src, {"maize": 1, "barley": 2})
    assert out.tolist() == [[0, 2, 1, 255, 255]]
    assert unknown == {5: 1} and unplaced == {}
    dst = target_index_by_name(make_classes(["plant"]), ["barley", "maize"], "binary")
    out, _, _ = remap_mask(mask, src, dst)
    assert out.tolist() == [[0, 1, 1, 255, 255]]


# ---------------------------------------------------------------- the round's class set (issue 16 §1)


def test_round_set_order_and_indices_are_the_dataset_classes(kit):
    from agir.classes import round_class_set
    from agir.runs import write_json

    cfg = _two_rounds(kit)
    run = kit.run_of(cfg)
    # the project's set: soybean came first (index 1), then maize, then barley
    doc = round_class_set(cfg, earlier=[make_classes(["soybean", "maize"])], record_species=["barley"])
    write_json(run / "classes.json", doc)
    metrics = run_preprocess_stage(cfg, run, classes=run / "classes.json")
    assert read_classes(run / "dataset") == doc["classes"]
    assert metrics["classes"] == ["soybean", "maize", "barley"] and metrics["classes_appended"] == []
    masks, _ = _masks_by_record(run)
    assert (masks["A"][5, 5], masks["A"][25, 25]) == (3, 2)  # barley, maize
    assert (masks["B"][5, 5], masks["B"][25, 25], masks["B"][35, 5]) == (2, 1, 3)


def test_a_species_missing_from_the_round_set_is_appended_with_a_warning(kit, caplog):
    cfg = _two_rounds(kit)
    run = kit.run_of(cfg)
    caplog.set_level("WARNING")
    metrics = run_preprocess_stage(cfg, run, classes=make_classes(["maize"]))
    assert metrics["classes"] == ["maize", "barley", "soybean"]
    assert metrics["classes_appended"] == ["barley", "soybean"]
    masks, _ = _masks_by_record(run)
    assert (masks["B"][5, 5], masks["B"][25, 25], masks["B"][35, 5]) == (1, 3, 2)  # never ignore, never maize
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'barley' is in the annotations but not in the round's class set; appended as index 2" in warned
    assert "'soybean'" in warned


def test_round_set_with_explicit_names_keeps_ignoring_the_rest(kit):
    cfg = _two_rounds(kit, **{"classes.names": ["maize", "barley"]})
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run, classes=make_classes(["maize", "barley"]))
    assert metrics["classes"] == ["maize", "barley"] and metrics["classes_appended"] == []
    masks, _ = _masks_by_record(run)
    assert masks["B"][25, 25] == 255


def test_round_set_in_binary_mode(kit):
    cfg = _two_rounds(kit, **{"classes.mode": "binary"})
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run, classes=make_classes(["plant"]))
    assert metrics["classes"] == ["plant"]
    masks, _ = _masks_by_record(run)
    assert masks["B"][35, 5] == 1 and masks["A"][25, 25] == 1
