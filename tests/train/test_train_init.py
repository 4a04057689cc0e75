"""train.init: training starts from the previous round's model, its head widened to the round's classes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from agir.checkpoint import build_model, load_checkpoint, save_checkpoint
from agir.errors import AgirError
from agir.train.init import init_choice, init_input
from agir.train.stage import run_train_stage

from .conftest import make_dataset, tiny_cfg

ARCH, ENCODER = "Linknet", "timm-mobilenetv3_small_minimal_100"  # tiny_cfg's network


def fake_model(run: Path, classes: list[str], arch: str = ARCH, seed: int = 7) -> Path:
    """An earlier round's model/best.pth without training it (fresh weights are enough to transfer)."""
    torch.manual_seed(seed)
    model = build_model(arch, ENCODER, 3, len(classes) + 1)
    return save_checkpoint(run / "model" / "best.pth", model.state_dict(), arch=arch, encoder=ENCODER, in_channels=3,
                           classes=classes, mean=[0.5] * 3, std=[0.2] * 3, tile_size=64, overlap=0.25, metrics={},
                           config={})


def cfg_for(tmp_path: Path, subname: str, out_root: str | None = None, **train) -> dict:
    cfg = tiny_cfg(**train)
    cfg["project"]["subname"] = subname
    cfg["io"]["out_root"] = out_root or str(tmp_path / "runs")
    return cfg


def test_previous_is_the_newest_earlier_round_with_a_model(tmp_path):
    proj = tmp_path / "runs" / "demo"
    assert init_choice(cfg_for(tmp_path, "round_001")) == {
        "setting": "previous", "path": None, "why": "no earlier round of project demo has a model/best.pth"}
    fake_model(proj / "round_001", ["barley"])
    (proj / "round_002").mkdir()  # no model yet
    (proj / "round_004" / "model").mkdir(parents=True)  # later rounds never count
    fake_model(proj / "round_005", ["barley"])
    choice = init_choice(cfg_for(tmp_path, "round_003"))
    assert choice == {"setting": "previous", "path": str(proj / "round_001/model/best.pth"), "why": None}
    for off in (None, "none", "null", "None"):
        assert init_choice(cfg_for(tmp_path, "round_003", init=off))["path"] is None
    assert init_choice(cfg_for(tmp_path, "round_003", init="none"))["why"] == "train.init is none"
    assert init_choice(cfg_for(tmp_path, "round_003", init="/m/best.pth"))["path"] == "/m/best.pth"
    # pre-labelling with `previous` builds the round before's model in the same DAG: train starts from it too
    cfg = {**cfg_for(tmp_path, "round_003"), "seg_inference": {"model": {"ckpt_path": "previous"}}}
    assert init_choice(cfg) == {"setting": "previous", "path": str(proj / "round_002/model/best.pth"), "why": None,
                                "round": "round_002"}
    assert init_input(cfg) == {"init": f"{tmp_path}/runs/demo/round_002/model/best.pth"}


def test_declared_input_never_matches_an_earlier_rounds_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    best = fake_model(tmp_path / "out" / "demo" / "round_001", ["barley"])
    # relative out_root: the rules' outputs are relative, so an absolute spelling is a plain source file
    assert init_input(cfg_for(tmp_path, "round_002", out_root="out")) == {"init": str(best.resolve())}
    # absolute out_root: the relative spelling
    assert init_input(cfg_for(tmp_path, "round_002", out_root=str(tmp_path / "out"))) == {
        "init": os.path.join("out", "demo", "round_001", "model", "best.pth")}
    # no file, or this round's own model (a cycle): nothing declared
    assert init_input(cfg_for(tmp_path, "round_001", out_root="out")) == {}
    own = cfg_for(tmp_path, "round_001", out_root="out", init="out/demo/round_001/model/best.pth")
    assert init_input(own) == {}
    assert init_input(cfg_for(tmp_path, "round_002", out_root="out", init="missing.pth")) == {}


def test_grown_class_set_starts_from_the_previous_model(tmp_path, caplog):
    proj = tmp_path / "runs" / "demo"
    old = load_checkpoint(fake_model(proj / "round_001", ["barley"]))
    run = proj / "round_002"
    make_dataset(run, {"train": 2, "val": 1}, size=32, names=["barley", "cereal rye"])
    # a learning rate of ~0 keeps the weights where init put them, so the copy itself is visible
    cfg = cfg_for(tmp_path, "round_002", epochs=1, crop_size=32, lr=1e-12, weight_decay=0.0, warmup_epochs=0)
    with caplog.at_level(logging.INFO, logger="agir"):
        metrics = run_train_stage(cfg, run, progress=False)
    line = ("initialised from round_001/model/best.pth: kept 1 class (barley), new head rows for 1 (cereal rye)")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")]
    assert said == [f"train: {line}"]
    record = {"setting": "previous", "path": str(proj / "round_001/model/best.pth"), "line": line}
    assert metrics["init"] == record
    new = load_checkpoint(run / "model/best.pth")
    assert new["config"]["init"] == record and new["classes"] == ["barley", "cereal rye"]
    w_old, w_new = old["state_dict"]["segmentation_head.0.weight"], new["state_dict"]["segmentation_head.0.weight"]
    assert w_new.shape[0] == 3 and torch.allclose(w_new[:2], w_old, atol=1e-6)  # background + barley kept
    conv = "encoder.model.conv_stem.weight"
    assert torch.allclose(new["state_dict"][conv], old["state_dict"][conv], atol=1e-6)

    # a rerun with more epochs resumes last.ckpt (init is not applied again) and keeps the record
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agir"):
        resumed = run_train_stage({**cfg, "train": {**cfg["train"], "epochs": 2}}, run, progress=False)
    assert resumed["resumed_from"] and resumed["init"] == record
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")] == [
        f"train: resumed from last.ckpt (it started {line})"]
    # another starting model is another training: no resume
    fake_model(proj / "round_001", ["barley"], seed=8)
    assert run_train_stage({**cfg, "train": {**cfg["train"], "epochs": 2}}, run, progress=False)["resumed_from"] is None


def test_a_model_that_does_not_fit_says_from_scratch(tmp_path, caplog):
    proj = tmp_path / "runs" / "demo"
    fake_model(proj / "round_001", ["barley"], arch="Unet")
    run = proj / "round_002"
    make_dataset(run, {"train": 2}, size=32, names=["barley"])
    with caplog.at_level(logging.INFO, logger="agir"):
        metrics = run_train_stage(cfg_for(tmp_path, "round_002", epochs=1, crop_size=32), run, progress=False)
    line = "from scratch: round_001/model/best.pth is arch Unet, this model Linknet"
    assert metrics["init"]["line"] == line
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")] == [f"train: {line}"]


def test_a_missing_checkpoint_path_is_a_clear_error(tmp_path):
    run = tmp_path / "runs" / "demo" / "round_001"
    make_dataset(run, {"train": 1}, size=32)
    with pytest.raises(AgirError, match=r"train.init=.*nope.pth not found; set train.init"):
        run_train_stage(cfg_for(tmp_path, "round_001", init=str(tmp_path / "nope.pth")), run, progress=False)


def test_a_second_species_in_the_same_run_folder_starts_from_its_earlier_model(tmp_path, caplog):
    """The old tool's Example 2: a second query into the same round, then `train` again."""
    import shutil

    run = tmp_path / "runs" / "demo" / "round_001"
    make_dataset(run, {"train": 2, "val": 1}, size=32, names=["barley"])
    cfg = cfg_for(tmp_path, "round_001", epochs=1, crop_size=32)
    assert run_train_stage(cfg, run, progress=False)["init"]["line"].startswith("from scratch: no earlier round")
    shutil.rmtree(run / "dataset")
    make_dataset(run, {"train": 2, "val": 1}, size=32, names=["barley", "cereal rye"], seed=1)
    (run / "model/best.pth").unlink()  # Snakemake removes a job's outputs before it runs
    with caplog.at_level(logging.INFO, logger="agir"):
        metrics = run_train_stage(cfg, run, progress=False)
    line = ("initialised from round_001/model/best.ckpt (this round's model before its class set grew): "
            "kept 1 class (barley), new head rows for 1 (cereal rye)")
    assert metrics["init"] == {"setting": "previous", "path": str(run / "model/best.ckpt"), "line": line}
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")] == [f"train: {line}"]
    # the same classes with another setting: a plain retraining, from scratch as before
    again = run_train_stage({**cfg, "train": {**cfg["train"], "lr": 1e-3}}, run, progress=False)
    assert again["init"]["line"].startswith("from scratch: ")
