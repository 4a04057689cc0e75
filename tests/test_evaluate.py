"""Pre-label evaluation knows which model pre-labelled, also when config said `previous` or `auto`."""

from __future__ import annotations

import json

from agir.evaluate import training_split_of_images


def test_split_of_images_follows_the_checkpoint_inference_used(tmp_path):
    r1, r2 = tmp_path / "p" / "round_001", tmp_path / "p" / "round_002"
    (r1 / "dataset").mkdir(parents=True)
    (r1 / "dataset" / "metrics.json").write_text(json.dumps({"split_of_image": {"img_a": "train", "img_b": "val"}}))
    (r2 / "infer").mkdir(parents=True)
    cfg = {"seg_inference": {"model": {"ckpt_path": "previous"}}}
    # before inference ran there is nothing to resolve `previous` against
    assert training_split_of_images(cfg, r2) == {}
    (r2 / "infer" / "metrics.json").write_text(json.dumps({"backend": "model", "model": {"path": str(r1 / "model" / "best.pth")}}))
    assert training_split_of_images(cfg, r2) == {"img_a": "train", "img_b": "val"}
    # `auto` chose the vegetation index: no model, no training split
    (r2 / "infer" / "metrics.json").write_text(json.dumps({"backend": "baseline"}))
    assert training_split_of_images({"seg_inference": {"model": {"ckpt_path": "auto"}}}, r2) == {}
    # an explicit path still works without a run folder
    assert training_split_of_images({"seg_inference": {"model": {"ckpt_path": str(r1 / "model" / "best.pth")}}}) == {
        "img_a": "train", "img_b": "val"}
