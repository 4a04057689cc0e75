"""Choosing the pre-labeler (issue 11 §4): baseline vs earlier rounds' models on held-out labelled images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from agir.checkpoint import build_model, save_checkpoint
from agir.errors import AgirError
from agir.images import write_image
from agir.masks import make_classes, write_classes, write_mask
from agir.prelabeler import choose_prelabeler, combine_prelabels, resolve_auto_checkpoint
from agir.runs import read_json

ARCH, ENCODER = "Linknet", "timm-mobilenetv3_small_minimal_100"
CFG = {"seg_inference": {"device": "cpu", "batch_size": 4, "tile": {"size": None, "overlap": 0.25}}}
GREEN, PURPLE, SOIL = (60, 170, 50), (130, 40, 140), (120, 90, 60)


def _round(project: Path, name: str, splits: dict[str, list[str]], plant_rgb, cover: float) -> Path:
    """A round folder with `dataset/` (one 64 px image per image id, plant = a disc covering ~cover)."""
    ds = project / name / "dataset"
    write_classes(ds, make_classes(["plant"]))
    yy, xx = np.mgrid[:64, :64]
    radius = np.sqrt(cover * 64 * 64 / np.pi)
    rows = []
    for split, ids in splits.items():
        for i, image_id in enumerate(ids):
            rng = np.random.default_rng(sum(map(ord, image_id)))
            cx, cy = 32 + rng.integers(-4, 5), 32 + rng.integers(-4, 5)
            plant = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)
            img = np.where(plant[..., None] > 0, plant_rgb, SOIL).astype(np.int16)
            img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
            sid = f"{image_id}_t{i}"
            write_image(ds / split / "images" / f"{sid}.png", img)
            write_mask(ds / split / "masks" / f"{sid}.png", plant)
            rows.append({"sample_id": sid, "split": split, "image": f"{split}/images/{sid}.png",
                         "mask": f"{split}/masks/{sid}.png", "image_id": image_id, "round": name})
    with open(ds / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return project / name


def _constant_model(round_dir: Path, plant_prob: float) -> Path:
    """A checkpoint whose network says `plant_prob` everywhere (zero head weights, biased head)."""
    model = build_model(ARCH, ENCODER, 3, 2)
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, float(np.log(plant_prob / (1 - plant_prob)))]))
    path = round_dir / "model" / "best.pth"
    save_checkpoint(path, model.state_dict(), arch=ARCH, encoder=ENCODER, in_channels=3, classes=["plant"],
                    mean=[0.5] * 3, std=[0.25] * 3, tile_size=64, overlap=0.25, metrics={}, config={})
    return path


def test_a_bad_model_loses_to_the_baseline(tmp_path):
    # round r1's val image C is in r2's train split: never an evaluation image
    r1 = _round(tmp_path, "r1", {"train": ["A", "B"], "val": ["C"], "test": ["D"]}, GREEN, 0.3)
    r2 = _round(tmp_path, "r2", {"train": ["A", "B", "C"], "val": ["E"], "test": ["F", "G"]}, GREEN, 0.3)
    bad1 = _constant_model(r1, 0.05)  # says "background" everywhere
    bad2 = _constant_model(r2, 0.05)
    run = tmp_path / "r3"
    out = choose_prelabeler(CFG, run, [str(bad1), str(bad2)])
    assert out["chosen"] == "baseline" and out["chosen_name"] == "baseline"
    assert out["eval_images"] == ["E", "F", "G"]
    by_name = {c["name"]: c for c in out["candidates"]}
    assert by_name["baseline"]["plant_iou"] > 0.9 and by_name["baseline"]["images"] == 3
    assert by_name["r2/model/best.pth"]["plant_iou"] == 0.0
    assert out["margin"] == pytest.approx(by_name["baseline"]["plant_iou"] - max(
        c["plant_iou"] for c in out["candidates"] if c["kind"] != "baseline" and c["kind"] != "combined"), abs=1e-3)
    assert read_json(run / "infer" / "prelabeler.json") == out
    assert resolve_auto_checkpoint(run) is None


def test_a_good_model_wins(tmp_path, caplog):
    # purple plants: the green index cannot see them, a model that calls everything plant does better
    r1 = _round(tmp_path, "r1", {"train": ["A"], "val": ["B"], "test": ["C"]}, PURPLE, 0.8)
    good = _constant_model(r1, 0.95)
    with caplog.at_level("INFO", logger="agir.prelabeler"):
        out = choose_prelabeler(CFG, tmp_path / "r2", [str(good)])
    assert out["chosen"] == str(good) and out["chosen_name"] == "r1/model/best.pth"
    by_name = {c["name"]: c for c in out["candidates"]}
    assert by_name["r1/model/best.pth"]["plant_iou"] > 0.7 > by_name["baseline"]["plant_iou"]
    assert out["margin"] > 0.3
    assert resolve_auto_checkpoint(tmp_path / "r2") == str(good)
    assert any("pre-labeler: r1/model/best.pth" in r.getMessage() and "margin" in r.getMessage()
               for r in caplog.records)


def test_without_candidates_or_held_out_images_the_baseline_is_chosen(tmp_path):
    out = choose_prelabeler(CFG, tmp_path / "r1", [])
    assert out["chosen"] == "baseline" and "no candidate models" in out["reason"]
    r1 = _round(tmp_path, "r1", {"train": ["A", "B"]}, GREEN, 0.3)
    out = choose_prelabeler(CFG, tmp_path / "r2", [str(_constant_model(r1, 0.95))])
    assert out["chosen"] == "baseline" and "no labelled images" in out["reason"]
    assert out["eval_images"] == [] and (tmp_path / "r2" / "infer" / "prelabeler.json").exists()


def test_an_unreadable_candidate_is_reported_not_chosen(tmp_path):
    r1 = _round(tmp_path, "r1", {"train": ["A"], "val": ["B"]}, GREEN, 0.3)
    (r1 / "model").mkdir()
    (r1 / "model" / "best.pth").write_bytes(b"junk")
    out = choose_prelabeler(CFG, tmp_path / "r2", [str(r1 / "model" / "best.pth")])
    assert out["chosen"] == "baseline"
    bad = [c for c in out["candidates"] if c["kind"] == "model"][0]
    assert bad["plant_iou"] is None and "not a readable PyTorch checkpoint" in bad["error"]


def test_combine_prelabels_softmax_and_sigmoid():
    base = np.array([[1, 0], [1, 0]], np.uint8)
    # 3 outputs (background, a, b): confident -> model; unsure -> baseline, species from the model
    probs = np.array([
        [[0.95, 0.1], [0.4, 0.5]],
        [[0.03, 0.85], [0.35, 0.2]],
        [[0.02, 0.05], [0.25, 0.3]],
    ], np.float32)
    out = combine_prelabels(probs, base, 0.8)
    assert out.tolist() == [[0, 1], [1, 0]]
    sig = np.array([[[0.97, 0.6], [0.02, 0.55]]], np.float32)
    assert combine_prelabels(sig, base, 0.9).tolist() == [[1, 0], [0, 0]]
    assert combine_prelabels(sig, base, 0.0).tolist() == [[1, 1], [0, 1]]  # threshold 0: the model alone
    assert combine_prelabels(sig, base, 1.0).tolist() == base.tolist()      # threshold 1: the index alone
    with pytest.raises(AgirError, match="do not match"):
        combine_prelabels(sig, np.zeros((3, 3), np.uint8), 0.5)
