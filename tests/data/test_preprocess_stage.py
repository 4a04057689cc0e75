"""The stage end to end: layout, rejects, idempotent and incremental reruns, workers, real masks."""

from __future__ import annotations

import csv
import os
import shutil

import cv2
import numpy as np

from agir.data import run_preprocess_stage
from agir.images import read_image, write_image
from agir.masks import read_classes, read_mask, write_mask
from agir.runs import read_json, write_bytes

DB_SPECIES = ["barley", "maize", "soybean"]
IDS = {"barley": 3, "maize": 7, "soybean": 12}


def _build(kit, n=6, **overrides):
    cfg = kit.cfg(**{"preprocess.tile.size": 32, "preprocess.image_format": "jpg", **overrides})
    records: list = []
    for i in range(n):
        name = DB_SPECIES[i % 3]
        kit.add_db_image(cfg, records, f"IMG_{i}", 48, 64, [(IDS[name], 4, 4, 30, 40)], [name], seed=i)
    return cfg, records


def _index(run):
    with open(run / "dataset" / "index.csv") as fh:
        return list(csv.DictReader(fh))


def _snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_layout_and_index_contract(kit):
    cfg, records = _build(kit)
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    ds = run / "dataset"
    for name in ("index.csv", "classes.json", "stats.json", "metrics.json"):
        assert (ds / name).exists()
    rows = _index(run)
    assert len(rows) == metrics["counts"]["samples"] == 6 * 4
    assert {"sample_id", "split", "image", "mask", "record_id", "image_id", "round", "y0", "x0", "y1", "x1",
            "px_background", "px_barley", "px_maize", "px_soybean", "px_ignore"} <= set(rows[0])
    for r in rows:
        assert r["image"] == f"{r['split']}/images/{r['sample_id']}.jpg"
        assert r["mask"] == f"{r['split']}/masks/{r['sample_id']}.png"
        mask = read_mask(ds / r["mask"])
        assert read_image(ds / r["image"]).shape[:2] == mask.shape
        counts = np.bincount(mask.ravel(), minlength=256)
        assert [counts[0], counts[1], counts[2], counts[3], counts[255]] == [
            int(r[k]) for k in ("px_background", "px_barley", "px_maize", "px_soybean", "px_ignore")]
    assert [c["name"] for c in read_classes(ds)] == DB_SPECIES
    assert read_json(ds / "metrics.json") == metrics
    files = {p.relative_to(ds).as_posix() for p in ds.glob("*/*/*") if p.name != "classes.json"}
    assert files == {r["image"] for r in rows} | {r["mask"] for r in rows}


def test_bad_records_are_rejected_and_the_rest_finish(kit):
    cfg, records = _build(kit)
    root = kit.tmp / "storage"
    write_mask(root / "masks" / "IMG_1.png", np.zeros((10, 10), np.uint8))  # wrong size
    write_bytes(root / "images" / "IMG_2.png", b"not an image")  # corrupt
    os.unlink(root / "images" / "IMG_3.png")  # missing
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    reasons = {r["record_id"]: r["reason"] for r in metrics["rejects"]}
    assert set(reasons) == {"IMG_1", "IMG_2", "IMG_3"}
    assert "mask 10x10 px but image 64x48 px" in reasons["IMG_1"]
    assert metrics["counts"]["accepted"] == 3 and metrics["counts"]["sources"] == 6
    assert {r["record_id"] for r in _index(run)} == {"IMG_0", "IMG_4", "IMG_5"}


def test_rerun_rewrites_nothing_and_a_change_redoes_only_that_image(kit):
    cfg, records = _build(kit)
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    first = run_preprocess_stage(cfg, run)
    before = _snapshot(run / "dataset")
    again = run_preprocess_stage(cfg, run)
    assert again == first and _snapshot(run / "dataset") == before

    # change one source mask: only its tiles are rewritten, the index is rebuilt
    root = kit.tmp / "storage"
    mask = read_mask(root / "masks" / "IMG_4.png").copy()
    mask[40:, 50:] = IDS["maize"]
    write_mask(root / "masks" / "IMG_4.png", mask)
    third = run_preprocess_stage(cfg, run)
    after = _snapshot(run / "dataset")
    changed = {p.name for p in after if after[p] != before.get(p) and p.suffix in (".png", ".jpg")}
    changed -= {"classes.json"}
    assert changed and all(name.startswith("IMG_4_") for name in changed)
    assert third["fingerprint"] != first["fingerprint"]

    # a settings change rebuilds and removes files of the old geometry
    cfg["preprocess"]["tile"]["size"] = 64
    fourth = run_preprocess_stage(cfg, run)
    rows = _index(run)
    assert len(rows) == fourth["counts"]["samples"] == 6 and fourth["counts"]["stale_files_removed"] > 0
    files = {p.relative_to(run / "dataset").as_posix() for p in (run / "dataset").glob("*/*/*") if p.suffix != ".json"}
    assert files == {r["image"] for r in rows} | {r["mask"] for r in rows}


def test_crash_leaves_no_index_and_resume_reuses_finished_images(kit, monkeypatch):
    from agir.data import preprocess

    cfg, records = _build(kit)
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    real = preprocess._cut_impl
    calls = []

    def flaky(job):
        calls.append(job["key"])
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed mid-run
        return real(job)

    monkeypatch.setattr(preprocess, "_cut_impl", flaky)
    try:
        run_preprocess_stage(cfg, run)
    except KeyboardInterrupt:
        pass
    assert not (run / "dataset" / "index.csv").exists()
    calls.clear()
    metrics = run_preprocess_stage(cfg, run)
    assert len(calls) == 3  # the three images finished before the crash were not redone
    assert metrics["counts"]["accepted"] == 6 and len(_index(run)) == 24


def test_workers_give_the_same_dataset(kit):
    cfg, records = _build(kit, n=4, **{"preprocess.image_format": "png"})
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    run_preprocess_stage(cfg, run, workers=1)
    one = _index(run)
    stats_one = read_json(run / "dataset" / "stats.json")
    shutil.rmtree(run / "dataset")
    run_preprocess_stage(cfg, run, workers=2)
    assert _index(run) == one
    assert read_json(run / "dataset" / "stats.json") == stats_one


def test_real_semif_colour_masks(kit, examples_dir):
    """Real bench photos with the repository's colour-painted masks (one PNG, one JPEG-compressed)."""
    cfg = kit.cfg(**{"preprocess.tile.size": 128, "preprocess.min_foreground": 0.01,
                      "preprocess.keep_background_fraction": 0.0})
    root = kit.tmp / "storage"
    records = []
    species = {"barley": ("barley_mask.png", "#dd6ed6", 3), "palmer amaranth": ("palmer_amaranth_mask.jpg", "#3ad0de", 5)}
    truth = {}
    for name, (mask_file, colour, cid) in species.items():
        stem = name.replace(" ", "_")
        img = read_image(examples_dir / f"{stem}.jpg")
        img = cv2.resize(img, (img.shape[1] // 4, img.shape[0] // 4), interpolation=cv2.INTER_AREA)
        painted = read_image(examples_dir / mask_file)
        painted = cv2.resize(painted, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        write_image(root / "images" / f"{stem}.jpg", img)
        write_image(root / "masks" / f"{stem}.png", painted)
        truth[stem] = painted.max(axis=2) > 60
        records.append({"cutout_id": f"{stem}_0", "image_id": stem, "ncsu_nfs": "vol", "image_path": f"images/{stem}.jpg",
                        "mask_path": f"masks/{stem}.png", "category_class_id": cid, "category_common_name": name,
                        "category_hex": colour})
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    assert metrics["classes"] == ["barley", "palmer amaranth"] and metrics["counts"]["accepted"] == 2
    rows = _index(run)
    for stem, index in (("barley", 1), ("palmer_amaranth", 2)):
        mine = [r for r in rows if r["image_id"] == stem]
        assert mine and all(float(r["foreground_fraction"]) >= 0.01 for r in mine)
        plant = sum(int(r[f"px_{'barley' if index == 1 else 'palmer amaranth'}"]) for r in mine)
        assert plant > 0.9 * truth[stem].sum() * 0.8  # most plant pixels land in kept tiles, as their class
        other = "px_palmer amaranth" if index == 1 else "px_barley"
        assert sum(int(r[other]) for r in mine) == 0
    # JPEG noise leaves only a thin ignore rim, not whole regions
    assert metrics["unmatched_colour_pixels"]["pixels"] < 0.02 * sum(t.sum() for t in truth.values())
