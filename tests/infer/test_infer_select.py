"""Inference for active learning: uncertainty in the manifest, reduced-resolution scoring, only_ids, ids."""

from __future__ import annotations

import re

import pytest

import agir.checkpoint
from agir.errors import AgirError
from agir.images import read_image
from agir.infer.items import items_from_images, items_from_records
from agir.infer.stage import merge_infer_shards, run_infer_stage
from agir.masks import read_classes, read_mask
from agir.names import file_stem
from agir.runs import read_jsonl, write_json
from agir.select.uncertainty import STAT_KEYS


def _old_safe_id(text: str) -> str:  # the sanitiser inference used before agir.names.file_stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "item"


def test_ids_that_collided_before_do_not_now(semif_run, rec_factory, tmp_path):
    cfg = semif_run["cfg"]
    names = ["plot 1/a", "plot_1_a", "plot 1:a", ".plot_1_a"]
    assert len({_old_safe_id(n) for n in names}) == 1  # all four were one id before
    records = [rec_factory(n, f"img{k}", "imgs/A.jpg", [20, 20, 42, 42], "barley", "#d66edd")
               for k, n in enumerate(names)]
    ids = [it.id for it in items_from_records(records, cfg, "cutout")]
    assert len(set(ids)) == 4 and ids == [file_stem(n) for n in names]
    assert ids[1] == "plot_1_a"  # a name that is already safe stays as it is
    # file names: "a b.jpg" and "a_b.jpg" share a sanitised stem but not an id
    for name in ("a b.jpg", "a_b.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert len({it.id for it in items_from_images(str(tmp_path / "*.jpg"))}) == 2


def _model_cfg(semif_run, ckpt, **more):
    cfg, _ = semif_run["make_cfg"](**{"seg_inference.model.ckpt_path": str(ckpt), "seg_inference.device": "cpu",
                                      "seg_inference.post_process.min_area": 0, **more})
    return cfg


def test_model_run_records_uncertainty_and_resume_keeps_it(semif_run, tiny_checkpoint, tmp_path):
    run = semif_run["run"]
    cfg = _model_cfg(semif_run, tiny_checkpoint(tmp_path / "m.pth", classes=("a", "b")))
    assert run_infer_stage(cfg, run)["ok"] == 2
    lines = read_jsonl(run / "infer" / "manifest.jsonl")
    for ln in lines:
        u = ln["uncertainty"]
        assert set(STAT_KEYS) <= set(u) and set(u["class_area"]) == {"a", "b"}
        assert all(0.0 <= u[k] <= 1.0 for k in STAT_KEYS)
        assert u["pixels"] == ln["size"][0] * ln["size"][1]  # every pixel counted once
        assert u["entropy_mean"] > 0  # an untrained network is unsure
        # contract C3: boxes of the most uncertain regions, inside infer/images/{id}.jpg
        assert isinstance(ln["review_regions"], list) and len(ln["review_regions"]) <= 5
        for x0, y0, x1, y1 in ln["review_regions"]:
            assert 0 <= x0 < x1 <= ln["size"][0] and 0 <= y0 < y1 <= ln["size"][1]
        assert set(u["class_uncertainty"]) == {"a", "b"}
    again = run_infer_stage(cfg, run)
    assert again["resumed"] == 2
    resumed = read_jsonl(run / "infer" / "manifest.jsonl")
    assert [ln["uncertainty"] for ln in resumed] == [ln["uncertainty"] for ln in lines]
    assert [ln["review_regions"] for ln in resumed] == [ln["review_regions"] for ln in lines]


def test_baseline_writes_no_uncertainty(semif_run):
    run_infer_stage(semif_run["cfg"], semif_run["run"])
    assert all("uncertainty" not in ln for ln in read_jsonl(semif_run["run"] / "infer" / "manifest.jsonl"))


def test_score_purpose_reduces_resolution_and_writes_under_select_pool(semif_run, tiny_checkpoint, tmp_path):
    run = semif_run["run"]
    cfg = _model_cfg(semif_run, tiny_checkpoint(tmp_path / "m.pth"))
    cfg["select"] = {"score_max_side": 64}
    metrics = run_infer_stage(cfg, run, purpose="score")
    assert metrics["ok"] == 2 and metrics["purpose"] == "score" and metrics["max_side"] == 64
    assert not (run / "infer" / "manifest.jsonl").exists()
    pool = run / "select" / "pool"
    lines = {ln["id"]: ln for ln in read_jsonl(pool / "manifest.jsonl")}
    a = lines["A"]
    assert a["source_size"] == [160, 120] and a["crop"] == [0, 0, 160, 120] and a["size"] == [64, 48]
    assert a["scale"] == pytest.approx(0.4) and a["mask"] == "select/pool/masks/A.png"
    assert read_image(run / a["image"]).shape[:2] == (48, 64) == read_mask(run / a["mask"]).shape
    assert (run / a["overlay"]).is_file() and (pool / "metrics.json").is_file()
    assert a["uncertainty"]["pixels"] == 64 * 48
    assert [c["name"] for c in read_classes(pool / "masks")] == ["barley", "palmer amaranth"]
    # a full-resolution pre-label run of the same round is separate and untouched by the scores
    assert run_infer_stage(cfg, run)["processed"] == 2
    assert read_mask(run / "infer" / "masks" / "A.png").shape == (120, 160)
    assert run_infer_stage(cfg, run, purpose="score")["resumed"] == 2


def test_score_shards_merge_under_select_pool(semif_run, tiny_checkpoint, tmp_path):
    run = semif_run["run"]
    cfg = _model_cfg(semif_run, tiny_checkpoint(tmp_path / "m.pth"))
    cfg["select"] = {"score_max_side": 64}
    for k in range(2):
        run_infer_stage(cfg, run, shard_index=k, shard_count=2, purpose="score")
    assert (run / "select" / "pool" / "shards" / "1" / "manifest.jsonl").is_file()
    merged = merge_infer_shards(cfg, run, 2, purpose="score")
    assert merged["ok"] == 2 and merged["purpose"] == "score"
    lines = read_jsonl(run / "select" / "pool" / "manifest.jsonl")
    assert [ln["id"] for ln in lines] == ["A", "B"] and all("uncertainty" in ln for ln in lines)
    assert not (run / "infer").exists()


def test_score_scales_record_boxes_for_the_baseline(semif_run):
    cfg, run = semif_run["cfg"], semif_run["run"]
    cfg = {**cfg, "select": {"score_max_side": 80}}  # 160 x 120 -> 80 x 60
    run_infer_stage(cfg, run, purpose="score")
    mask = read_mask(run / "select" / "pool" / "masks" / "A.png")
    idx = {c["name"]: c["index"] for c in read_classes(run / "select" / "pool" / "masks")}
    assert mask.shape == (60, 80)
    # plants at (40, 40) and (120, 80) in full pixels keep their own records' classes at half size
    assert (mask[20, 20], mask[40, 60]) == (idx["barley"], idx["palmer amaranth"])


def test_score_without_a_select_section_runs_at_full_size(semif_run):
    cfg, run = dict(semif_run["cfg"]), semif_run["run"]
    cfg.pop("select", None)
    assert run_infer_stage(cfg, run, purpose="score")["max_side"] is None
    assert read_mask(run / "select" / "pool" / "masks" / "A.png").shape == (120, 160)
    with pytest.raises(AgirError, match="purpose"):
        run_infer_stage(cfg, run, purpose="scores")


def test_only_ids_limits_the_run(semif_run, rec_factory):
    cfg, run, make_cfg = semif_run["cfg"], semif_run["run"], semif_run["make_cfg"]
    metrics = run_infer_stage(cfg, run, only_ids=["B_0"])  # a record id selects its image
    assert metrics["outputs"] == 1 and metrics["only_ids"] == 1
    assert [ln["id"] for ln in read_jsonl(run / "infer" / "manifest.jsonl")] == ["B"]
    assert not (run / "infer" / "masks" / "A.png").exists()
    run_infer_stage(cfg, run, only_ids=["A"])  # an image id
    assert [ln["id"] for ln in read_jsonl(run / "infer" / "manifest.jsonl")] == ["A"]
    cutout, _ = make_cfg(**{"seg_inference.source.image_mode": "cutout"})
    run_infer_stage(cutout, run, only_ids={"A_1", "nope"})
    assert [ln["id"] for ln in read_jsonl(run / "infer" / "manifest.jsonl")] == ["A_1"]
    assert run_infer_stage(cfg, run, only_ids=[])["outputs"] == 0


def test_model_backend_passes_the_model_description_to_the_loader(semif_run, tiny_checkpoint, tmp_path,
                                                                 monkeypatch):
    run = semif_run["run"]
    cfg = _model_cfg(semif_run, tiny_checkpoint(tmp_path / "m.pth"), **{"seg_inference.max_records": 1})
    seen = {}
    real = agir.checkpoint.load_checkpoint

    def loader(path, describe=None, class_names=None):  # the extended loader's signature
        seen.update(describe=describe, class_names=class_names)
        return real(path)

    monkeypatch.setattr(agir.checkpoint, "load_checkpoint", loader)
    write_json(run / "query" / "query.json", semif_run["records"])
    assert run_infer_stage(cfg, run)["ok"] == 1
    assert seen["describe"]["ckpt_path"] == str(tmp_path / "m.pth")
    assert seen["class_names"] == ["barley"]  # the records' species after max_records=1
