import json
import logging

import numpy as np
import pandas as pd
import pytest

from agir.errors import AgirError
from agir.images import write_image
from agir.masks import make_classes, write_classes, write_mask
from agir.runs import read_json, write_json, write_jsonl
from agir.select.stage import run_select_stage

SPECIES = ["barley", "wheat", "clover"]


def make_round(root, name, n=12, model=True, mode="full_image"):
    run = root / "proj" / name
    classes = make_classes(SPECIES)
    write_classes(run / "infer" / "masks", classes)
    records, lines = [], []
    rng = np.random.default_rng(len(name))
    for i in range(n):
        img_id = f"img{i:02d}"
        sp = SPECIES[i % 3]
        rid = f"{name}-c{i:02d}"
        records.append({"cutout_id": rid, "image_id": img_id, "category_common_name": sp, "estimated_area_bin": i % 2})
        iid = img_id if mode == "full_image" else rid
        rgb = np.full((12, 16, 3), 40 + 10 * i, np.uint8)
        mask = np.zeros((12, 16), np.uint8)
        mask[2:8, 3:9] = 1 + i % 3
        write_image(run / f"infer/images/{iid}.jpg", rgb)
        write_mask(run / f"infer/masks/{iid}.png", mask, classes)
        line = {"id": iid, "index": i, "record_ids": [rid], "image_id": img_id, "status": "ok",
                "image": f"infer/images/{iid}.jpg", "mask": f"infer/masks/{iid}.png"}
        if model:
            area = {s: (0.2 if s == sp else 0.0) for s in SPECIES}
            line["uncertainty"] = {"entropy_mean": float(rng.uniform()), "entropy_plant": i / n,
                                   "margin_mean": 0.5, "margin_plant": 1 - i / n, "least_confidence": 0.1,
                                   "uncertain_fraction": 0.1, "plant_fraction": 0.2, "class_area": area,
                                   "pixels": 192}
        lines.append(line)
    lines.append({"id": "broken", "index": n, "record_ids": [], "image_id": "broken", "status": "failed",
                  "reason": "unreadable"})
    write_json(run / "query" / "query.json", records)
    write_jsonl(run / "infer" / "manifest.jsonl", lines)
    return run


def cfg(**select):
    return {"select": {"strategy": "entropy", "n": 4, "seed": 0, **select},
            "preprocess": {"label_source": "cvat"}}


def test_entropy_selection_writes_every_output(tmp_path):
    run = make_round(tmp_path, "r2")
    m = run_select_stage(cfg(), run)
    sel = read_json(run / "select" / "selection.json")
    assert sel["selected"] == ["img11", "img10", "img09", "img08"]  # entropy_plant = i / n
    assert sel["strategy"] == "entropy" and sel["fallback"] is None and sel["score_column"] == "entropy_plant"
    assert sel["pool_size"] == 12 and sel["excluded"] == {"count": 0, "ids": []}
    assert sel["scores"]["img11"] == pytest.approx(11 / 12)
    assert sel["selected_records"] == ["r2-c11", "r2-c10", "r2-c09", "r2-c08"]
    df = pd.read_parquet(run / "select" / "scores.parquet")
    assert len(df) == 12 and set(df.loc[df["selected"], "id"]) == set(sel["selected"])
    assert {"entropy_plant", "area_barley", "category_common_name", "score", "rank"} <= set(df.columns)
    assert m["selected"] == 4 and m["failed_lines"] == 1 and m["model_statistics"]
    for png in ("score_distribution.png", "gallery.png"):
        assert (run / "select" / png).read_bytes()[:4] == b"\x89PNG"
    assert not list((run / "select").glob(".*tmp"))


def test_earlier_rounds_annotations_are_excluded(tmp_path):
    r1 = make_round(tmp_path, "r1", n=3)
    write_json(r1 / "cvat" / "download.json",
               {"tasks": {"7": {"frames": [{"frame": 0, "name": "img11.jpg", "record_id": "img11"}]}}})
    run = make_round(tmp_path, "r2")
    make_round(tmp_path, "r3")  # a later round never counts
    write_json(run.parent / "r3" / "cvat" / "download.json",
               {"tasks": {"1": {"frames": [{"frame": 0, "name": "x", "record_id": "img10"}]}}})
    run_select_stage(cfg(), run)
    sel = read_json(run / "select" / "selection.json")
    assert "img11" not in sel["selected"] and sel["selected"][0] == "img10"
    assert sel["excluded"] == {"count": 1, "ids": ["img11"]}
    run_select_stage(cfg(include_annotated=True), run)
    assert read_json(run / "select" / "selection.json")["selected"][0] == "img11"


def test_cutout_round_excludes_whole_image_annotated_earlier(tmp_path):
    r1 = make_round(tmp_path, "r1", n=12)  # full_image ids img00..
    (r1 / "cvat" / "annotations" / "masks").mkdir(parents=True)
    write_mask(r1 / "cvat" / "annotations" / "masks" / "img05.png", np.zeros((2, 2), np.uint8))
    run = make_round(tmp_path, "r2", mode="cutout")
    run_select_stage(cfg(n=12), run)
    sel = read_json(run / "select" / "selection.json")
    assert sel["excluded"]["ids"] == ["r2-c05"] and len(sel["selected"]) == 11


def test_db_masks_earlier_selection_counts_as_annotated(tmp_path):
    r1 = make_round(tmp_path, "r1", n=12)
    write_json(r1 / "select" / "selection.json", {"strategy": "entropy", "selected": ["img03"]})
    run = make_round(tmp_path, "r2")
    c = cfg(n=12)
    c["preprocess"]["label_source"] = "db_masks"
    run_select_stage(c, run)
    assert read_json(run / "select" / "selection.json")["excluded"]["ids"] == ["img03"]


def test_without_model_falls_back_with_one_info_line(tmp_path, caplog):
    run = make_round(tmp_path, "r1", model=False)
    with caplog.at_level(logging.INFO, logger="agir"):
        m = run_select_stage(cfg(n=6), run)
    sel = read_json(run / "select" / "selection.json")
    assert sel["strategy"] == "entropy" and sel["strategy_used"] == "stratified" and sel["fallback"]
    counts = pd.read_parquet(run / "select" / "scores.parquet").query("selected")["category_common_name"]
    assert counts.value_counts().to_dict() == {"barley": 2, "wheat": 2, "clover": 2}
    assert sum("falling back" in r.getMessage() for r in caplog.records) == 1
    assert not m["model_statistics"]


def test_strategy_all_selects_everything_and_missing_manifest_is_clear(tmp_path):
    run = make_round(tmp_path, "r1")
    run_select_stage(cfg(strategy="all"), run)
    assert len(read_json(run / "select" / "selection.json")["selected"]) == 12
    with pytest.raises(AgirError, match="select/pool/manifest.jsonl not found"):
        run_select_stage(cfg(score_max_side=256), run)


def test_reduced_resolution_pool_is_read_when_score_max_side_is_set(tmp_path):
    run = make_round(tmp_path, "r1")
    pool = run / "select" / "pool"
    lines = [json.loads(x) for x in (run / "infer" / "manifest.jsonl").read_text().splitlines()]
    for ln in lines:
        if "uncertainty" in ln:
            ln["uncertainty"]["entropy_plant"] = 1 - ln["uncertainty"]["entropy_plant"]
    write_jsonl(pool / "manifest.jsonl", lines)
    run_select_stage(cfg(score_max_side=256, n=1), run)
    sel = read_json(run / "select" / "selection.json")
    assert sel["selected"] == ["img00"] and sel["source"] == "select/pool/manifest.jsonl"


def test_class_balanced_weighs_by_the_labelled_set_and_group_cap_holds(tmp_path):
    r1 = make_round(tmp_path, "r1", n=3)
    write_json(r1 / "dataset" / "stats.json",
               {"class_pixel_counts": {"background": 5000, "barley": 900, "wheat": 90, "clover": 10}})
    run = make_round(tmp_path, "r2")
    records = read_json(run / "query" / "query.json")
    for k, r in enumerate(records):
        r["group_id"] = "pot-late" if k >= 5 else f"pot{k}"  # img05..img11: one pot's sequence
    write_json(run / "query" / "query.json", records)
    m = run_select_stage(cfg(strategy="class_balanced", n=3, rarity_power=1, group_cap=1), run)
    assert m["selected_groups"] == 3 and m["max_selected_per_group"] == 1
    sel = read_json(run / "select" / "selection.json")
    assert sel["class_freq_source"] == "r1/dataset/stats.json" and sel["group_cap"] == 1
    df = pd.read_parquet(run / "select" / "scores.parquet").set_index("id")
    assert df.loc[sel["selected"][0], "category_common_name"] == "clover"  # rarest in the labelled set
    assert df.loc[sel["selected"], "group_id"].value_counts().max() == 1 and len(sel["selected"]) == 3
    # the pool's predicted areas when asked (no labelled frequencies recorded then)
    run_select_stage(cfg(strategy="class_balanced", n=3, class_freq="pool"), run)
    assert read_json(run / "select" / "selection.json")["class_freq_source"] == "pool predicted area"


def test_power_and_veg_random_run_in_the_stage(tmp_path):
    run = make_round(tmp_path, "r1")
    run_select_stage(cfg(strategy="power", n=5, temperature=0.5, seed=3), run)
    sel = read_json(run / "select" / "selection.json")
    assert len(sel["selected"]) == 5 and "power sampling, T=0.5" in sel["score_column"]
    run_select_stage(cfg(strategy="power", n=5, temperature=0.5, seed=3), run)
    assert read_json(run / "select" / "selection.json")["selected"] == sel["selected"]
    bare = make_round(tmp_path, "r0", model=False)
    run_select_stage(cfg(strategy="veg_random", n=6), bare)
    chosen = pd.read_parquet(bare / "select" / "scores.parquet").query("selected")
    # 3 species x 2 estimated_area_bin values: each stratum once
    assert len(set(zip(chosen["category_common_name"], chosen["estimated_area_bin"]))) == 6
    with pytest.raises(AgirError, match="select.class_freq='often'"):
        run_select_stage(cfg(strategy="class_balanced", class_freq="often"), run)
