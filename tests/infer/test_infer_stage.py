"""The inference stage end to end on tiny generated runs: outputs, modes, failures, resume, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agir.checkpoint import build_model, save_checkpoint
from agir.errors import AgirError
from agir.images import read_image, write_image
from agir.infer.stage import crop_box, merge_infer_shards, run_infer_stage
from agir.masks import read_classes, read_mask
from agir.runs import read_json, read_jsonl, write_json

REPO = Path(__file__).resolve().parents[2]


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_full_image_baseline_writes_every_output(semif_run):
    cfg, run = semif_run["cfg"], semif_run["run"]
    metrics = run_infer_stage(cfg, run)
    assert metrics["ok"] == 2 and metrics["failed"] == 0 and metrics["backend"] == "baseline"
    lines = read_jsonl(run / "infer" / "manifest.jsonl")
    assert [ln["id"] for ln in lines] == ["A", "B"]
    assert lines[0]["record_ids"] == ["A_0", "A_1"] and lines[0]["status"] == "ok"
    classes = read_classes(run / "infer" / "masks")
    assert [c["name"] for c in classes] == ["barley", "palmer amaranth"]
    assert classes[0]["color"] == "#d66edd"
    idx = {c["name"]: c["index"] for c in classes}
    mask = read_mask(run / lines[0]["mask"])
    img = read_image(run / lines[0]["image"])
    assert mask.shape == img.shape[:2] == (120, 160)
    truth = semif_run["truth"]["A"]
    # each plant carries its own record's species; plants are found well
    assert (mask[40, 40], mask[80, 120]) == (idx["barley"], idx["palmer amaranth"])
    assert _iou(mask > 0, truth) > 0.9
    assert (run / lines[0]["overlay"]).is_file()
    assert Image.open(run / lines[0]["mask"]).mode == "P"  # palette for people
    for key in ("images_per_s", "tiles_per_s", "mp_per_s", "time_s"):
        assert key in metrics
    assert read_json(run / "infer" / "metrics.json")["ok"] == 2


def test_plants_outside_every_bbox_stay_background(semif_run, rec_factory):
    cfg, run = semif_run["cfg"], semif_run["run"]
    # only the left plant of image A has a record
    write_json(run / "query" / "query.json", [rec_factory("A_0", "A", "imgs/A.jpg", [20, 20, 42, 42], "barley", "#d66edd")])
    run_infer_stage(cfg, run)
    mask = read_mask(run / "infer" / "masks" / "A.png")
    assert mask[40, 40] == 1 and (mask[60:100, 100:140] == 0).all()


def test_cutout_mode_crops_with_margin_clamped_to_the_frame(semif_run, rec_factory):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    cfg, _ = make_cfg(**{"seg_inference.source.image_mode": "cutout", "seg_inference.source.margin": 0.5})
    write_json(run / "query" / "query.json", semif_run["records"] + [
        rec_factory("A_9", "A", "imgs/A.jpg", [140, 100, 30, 30], "barley", "#d66edd"),  # runs off the corner
    ])
    metrics = run_infer_stage(cfg, run)
    assert metrics["ok"] == 4
    lines = {ln["id"]: ln for ln in read_jsonl(run / "infer" / "manifest.jsonl")}
    assert lines["A_0"]["crop"] == [0, 0, 83, 83]  # 20 - 21 clamps at 0; 20 + 42 + 21
    assert lines["A_9"]["crop"] == [125, 85, 160, 120]  # clamped at the 160 x 120 frame
    img = read_image(run / lines["A_9"]["image"])
    assert img.shape[:2] == (35, 35) and read_mask(run / lines["A_9"]["mask"]).shape == (35, 35)
    # the cutout's own species wins inside its box even where a larger box overlaps
    a1 = read_mask(run / lines["A_1"]["mask"])
    idx = {c["name"]: c["index"] for c in read_classes(run / "infer" / "masks")}
    assert a1[80 - 25, 120 - 66] == idx["palmer amaranth"]


def test_crop_box_geometry():
    assert crop_box((10, 10, 20, 20), 0.0, 100, 100) == (10, 10, 30, 30)
    assert crop_box((10, 10, 20, 20), 1.0, 100, 100) == (0, 0, 50, 50)
    assert crop_box((90, 90, 20, 20), 0.1, 100, 100) == (88, 88, 100, 100)
    assert crop_box((200, 200, 5, 5), 0.1, 100, 100) is None


def test_bboxes_scale_to_a_downscaled_file(semif_run, rec_factory):
    cfg, run = semif_run["cfg"], semif_run["run"]
    # bbox in a 4x larger full-resolution frame than the file on disk
    write_json(run / "query" / "query.json", [
        rec_factory("A_1", "A", "imgs/A.jpg", [372, 212, 220, 220], "maize", "#00ff00", w=640, h=480)])
    run_infer_stage(cfg, run)
    mask = read_mask(run / "infer" / "masks" / "A.png")
    assert mask[80, 120] == 1 and mask[40, 40] == 0


def test_failed_records_are_recorded_and_the_rest_finishes(semif_run, rec_factory):
    cfg, run, storage = semif_run["cfg"], semif_run["run"], semif_run["storage"]
    (storage / "imgs" / "C.jpg").write_bytes(b"not a jpeg")
    records = semif_run["records"] + [
        rec_factory("C_0", "C", "imgs/C.jpg", [0, 0, 5, 5], "barley", "#d66edd"),
        rec_factory("D_0", "D", "imgs/missing.jpg", [0, 0, 5, 5], "barley", "#d66edd"),
        {**rec_factory("E_0", "E", "imgs/A.jpg", [0, 0, 5, 5], "barley", "#d66edd"), "ncsu_nfs": "elsewhere"},
    ]
    write_json(run / "query" / "query.json", records)
    metrics = run_infer_stage(cfg, run)
    assert (metrics["ok"], metrics["failed"]) == (2, 3)
    lines = {ln["id"]: ln for ln in read_jsonl(run / "infer" / "manifest.jsonl")}
    assert "corrupt" in lines["C"]["reason"] and "not found" in lines["D"]["reason"]
    assert "io.roots" in lines["E"]["reason"]
    assert all(lines[k]["status"] == "failed" for k in "CDE")
    assert not (run / "infer" / "masks" / "C.png").exists()


def _photo(h, w, plants, seed):
    import importlib.util

    spec = importlib.util.spec_from_file_location("infer_conftest_s", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.bench_photo(h, w, plants, seed)


def _tiny_checkpoint(path, classes=("barley", "palmer amaranth"), head="softmax"):
    torch.manual_seed(0)
    n = 1 if head == "sigmoid" else len(classes) + 1
    model = build_model("Unet", "resnet18", 3, n)
    save_checkpoint(path, model.state_dict(), arch="Unet", encoder="resnet18", in_channels=3, classes=list(classes),
                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], tile_size=96, overlap=0.25,
                    metrics={}, config={}, head=head)
    return path


def test_images_folder_source(tmp_path, make_cfg):
    photos = tmp_path / "photos"
    truths = {}
    for name, seed in (("p1", 5), ("p2", 6)):
        img, truth = _photo(90, 110, [(50, 45, 22)], seed)
        write_image(photos / f"{name}.jpg", img, quality=98)
        truths[name] = truth
    (photos / "sub").mkdir()
    write_image(photos / "sub" / "p1.jpg", img, quality=98)  # same stem in another folder
    cfg, run = make_cfg(**{"seg_inference.source.images": str(photos / "**" / "*.jpg")})
    metrics = run_infer_stage(cfg, run)  # no query/query.json needed
    assert metrics["ok"] == 3 and metrics["records"] is None
    ids = [ln["id"] for ln in read_jsonl(run / "infer" / "manifest.jsonl")]
    assert sorted(ids) == ["p1", "p1-2", "p2"]
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["plant"]
    mask = read_mask(run / "infer" / "masks" / "p2.png")
    assert _iou(mask == 1, truths["p2"]) > 0.9
    cfg, run = make_cfg(**{"seg_inference.source.images": str(tmp_path / "nothing" / "*.jpg")})
    with pytest.raises(AgirError, match="matches no files"):
        run_infer_stage(cfg, run)


def test_model_path_multiclass(semif_run, tmp_path):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    ckpt = _tiny_checkpoint(tmp_path / "best.pth", classes=("a", "b", "c"))
    cfg, _ = make_cfg(**{"seg_inference.model.ckpt_path": str(ckpt), "seg_inference.device": "cpu",
                         "seg_inference.post_process.min_area": 0})
    metrics = run_infer_stage(cfg, run)
    assert metrics["backend"] == "model" and metrics["ok"] == 2 and metrics["tiles"] == 4 + 4
    assert metrics["model"]["arch"] == "Unet" and metrics["settings"]["tile_size"] == 96  # from the checkpoint
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["a", "b", "c"]
    mask = read_mask(run / "infer" / "masks" / "A.png")
    assert mask.shape == (120, 160) and mask.max() <= 3


def test_model_path_binary_threshold(semif_run, tmp_path):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    ckpt = _tiny_checkpoint(tmp_path / "bin.pth", classes=("plant",), head="sigmoid")
    fractions = []
    for thr in (0.0, 1.0):
        cfg, _ = make_cfg(**{"seg_inference.model.ckpt_path": str(ckpt), "seg_inference.device": "cpu",
                             "seg_inference.post_process.threshold": thr, "seg_inference.tile.size": 160,
                             "seg_inference.max_records": 1})
        m = run_infer_stage(cfg, run)
        assert m["settings"]["tile_size"] == 160 and m["tiles"] == 1  # config overrides the checkpoint's tile size
        fractions.append((read_mask(run / "infer" / "masks" / "A.png") == 1).mean())
    assert fractions == [1.0, 0.0]


def test_min_area_removes_specks(semif_run):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    kept = []
    for min_area in (0, 100000):
        cfg, _ = make_cfg(**{"seg_inference.post_process.min_area": min_area})
        run_infer_stage(cfg, run)
        kept.append(int((read_mask(run / "infer" / "masks" / "A.png") > 0).sum()))
    assert kept[0] > 1000 and kept[1] == 0


def test_resume_skips_matching_outputs_and_redoes_changed_settings(semif_run):
    cfg, run, make_cfg = semif_run["cfg"], semif_run["run"], semif_run["make_cfg"]
    run_infer_stage(cfg, run)
    mask_file = run / "infer" / "masks" / "A.png"
    stamp = mask_file.stat().st_mtime_ns
    again = run_infer_stage(cfg, run)
    assert again["resumed"] == 2 and again["processed"] == 0 and mask_file.stat().st_mtime_ns == stamp
    assert all(ln["status"] == "ok" and ln["resumed"] for ln in read_jsonl(run / "infer" / "manifest.jsonl"))
    # a deleted output is redone
    (run / "infer" / "masks" / "B.png").unlink()
    assert run_infer_stage(cfg, run)["processed"] == 1
    # a changed setting redoes everything
    changed, _ = make_cfg(**{"seg_inference.baseline.close_radius": 3})
    assert run_infer_stage(changed, run)["processed"] == 2
    # force redoes everything even when nothing changed
    assert run_infer_stage(changed, run, force=True)["processed"] == 2


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import agir.infer.stage as stage
    from agir.config import load_config
    real = stage.append_jsonl
    count = {"n": 0}
    def append_then_die(path, line):
        real(path, line)
        count["n"] += 1
        if count["n"] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # as a node failure would
    stage.append_jsonl = append_then_die
    cfg = load_config(sys.argv[3], [f"io.out_root={sys.argv[1]}", "io.roots={vol: %s}" % sys.argv[4]])
    stage.run_infer_stage(cfg, sys.argv[5])
    """
)


def test_killed_run_resumes_without_truncated_files(semif_run, tmp_path, rec_factory):
    cfg, run, storage = semif_run["cfg"], semif_run["run"], semif_run["storage"]
    records = []
    for k in range(6):
        img, _ = _photo(80, 100, [(50, 40, 20)], seed=10 + k)
        write_image(storage / "imgs" / f"K{k}.jpg", img)
        records.append(rec_factory(f"K{k}_0", f"K{k}", f"imgs/K{k}.jpg", [25, 15, 50, 50], "barley", "#d66edd"))
    write_json(run / "query" / "query.json", records)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, str(script), cfg["io"]["out_root"], "3", str(cfg_file), str(storage), str(run)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run / "infer" / "manifest.jsonl").exists()  # nothing looks finished
    journal = read_jsonl(run / "infer" / "journal.jsonl")
    assert len(journal) == 3
    for folder in ("images", "masks", "overlays"):  # whatever exists is complete (atomic writes)
        for f in (run / "infer" / folder).iterdir():
            if f.suffix in (".png", ".jpg"):
                Image.open(f).load()
    metrics = run_infer_stage(cfg, run)
    assert (metrics["ok"], metrics["resumed"], metrics["processed"]) == (6, 3, 3)
    lines = read_jsonl(run / "infer" / "manifest.jsonl")
    assert [ln["id"] for ln in lines] == [f"K{k}" for k in range(6)]
    assert not list((run / "infer").rglob("*.tmp"))


def test_sharded_run_merges_into_one_manifest(semif_run, rec_factory):
    cfg, run, storage = semif_run["cfg"], semif_run["run"], semif_run["storage"]
    records = []
    for k in range(5):
        img, _ = _photo(64, 64, [(32, 32, 15)], seed=20 + k)
        write_image(storage / "imgs" / f"S{k}.jpg", img)
        records.append(rec_factory(f"S{k}_0", f"S{k}", f"imgs/S{k}.jpg", [10, 10, 44, 44], "barley", "#d66edd"))
    records.append(rec_factory("X_0", "X", "imgs/none.jpg", [0, 0, 4, 4], "maize", "#00ff00"))
    write_json(run / "query" / "query.json", records)
    with pytest.raises(AgirError, match="shard 0 of 2 has not finished"):
        merge_infer_shards(cfg, run, 2)
    per_shard = [run_infer_stage(cfg, run, shard_index=k, shard_count=2) for k in range(2)]
    assert [m["outputs"] for m in per_shard] == [3, 3]
    assert not (run / "infer" / "manifest.jsonl").exists()
    assert (run / "infer" / "shards" / "1" / "manifest.jsonl").exists()
    merged = merge_infer_shards(cfg, run, 2)
    assert (merged["ok"], merged["failed"], merged["outputs"]) == (5, 1, 6)
    lines = read_jsonl(run / "infer" / "manifest.jsonl")
    assert [ln["id"] for ln in lines] == ["S0", "S1", "S2", "S3", "S4", "X"]
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["barley", "maize"]
    assert all((run / ln["mask"]).is_file() for ln in lines if ln["status"] == "ok")
    # a later unsharded run reuses the shards' work
    assert run_infer_stage(cfg, run)["resumed"] == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_path_on_cuda(semif_run, tmp_path):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    ckpt = _tiny_checkpoint(tmp_path / "best.pth")
    cfg, _ = make_cfg(**{"seg_inference.model.ckpt_path": str(ckpt), "seg_inference.device": "cuda"})
    metrics = run_infer_stage(cfg, run)
    assert metrics["ok"] == 2 and metrics["device"].startswith("cuda")


def test_species_missing_from_classes_names_is_marked_ignore(semif_run):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    cfg, _ = make_cfg(**{"classes.names": ["barley"]})
    run_infer_stage(cfg, run)
    line = read_jsonl(run / "infer" / "manifest.jsonl")[0]
    assert line["status"] == "ok" and "palmer amaranth" in line["reason"] and "255" in line["reason"]
    mask = read_mask(run / line["mask"])
    assert mask[40, 40] == 1 and mask[80, 120] == 255


def test_binary_mode_labels_every_record_plant(semif_run):
    make_cfg, run = semif_run["make_cfg"], semif_run["run"]
    cfg, _ = make_cfg(**{"classes.mode": "binary"})
    run_infer_stage(cfg, run)
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["plant"]
    mask = read_mask(run / "infer" / "masks" / "A.png")
    assert mask[40, 40] == 1 and mask[80, 120] == 1 and set(np.unique(mask)) == {0, 1}


def test_newest_journal_line_wins_across_layouts(semif_run):
    cfg, run, make_cfg = semif_run["cfg"], semif_run["run"], semif_run["make_cfg"]
    for k in range(2):
        run_infer_stage(cfg, run, shard_index=k, shard_count=2)  # settings A, sharded
    changed, _ = make_cfg(**{"seg_inference.baseline.open_radius": 0})
    assert run_infer_stage(changed, run)["processed"] == 2  # settings B overwrite the files
    # back to A: the shards' old lines match A, but the files on disk are B's, so both are redone
    assert run_infer_stage(cfg, run)["processed"] == 2
    assert run_infer_stage(cfg, run)["resumed"] == 2
