"""The train stage end to end on a tiny generated dataset (CPU, 2 epochs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agir.checkpoint import load_checkpoint, model_from_checkpoint
from agir.errors import AgirError
from agir.images import read_image
from agir.runs import read_json
from agir.train.augment import normalize, to_tv
from agir.train.module import SegModule
from agir.train.stage import run_train_stage

from .conftest import make_dataset, tiny_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("train") / "runs" / "demo" / "round_001"
    make_dataset(run)
    metrics = run_train_stage(tiny_cfg(), run, progress=False)
    return run, metrics


def test_writes_every_output(trained):
    run, metrics = trained
    model = run / "model"
    for name in ("best.pth", "best.ckpt", "last.ckpt", "metrics.csv", "metrics.json",
                 "plots/loss.png", "plots/miou.png", "plots/test_predictions.png"):
        assert (model / name).is_file() and (model / name).stat().st_size > 0, name
    assert not list(model.rglob("*.tmp"))  # atomic writes leave no temporaries
    for png in model.glob("plots/*.png"):
        with Image.open(png) as im:
            assert im.width > 100 and im.height > 100
    assert read_json(model / "metrics.json") == metrics
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (0, 1)
    assert metrics["samples"] == {"train": 8, "val": 3, "test": 3}
    for split in ("val", "test"):
        iou = metrics[split]["per_class_iou"]
        assert set(iou) == {"background", "barley", "maize"}
        assert 0.0 <= metrics[split]["mIoU"] <= 1.0
    rows = pd.read_csv(model / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1]
    assert {"train_loss", "val_loss", "val_mIoU", "val_iou_barley", "lr"} <= set(rows.columns)
    assert rows["train_loss"].iloc[1] < rows["train_loss"].iloc[0]
    # the best epoch's row is the best val mIoU
    assert rows.loc[rows["val_mIoU"].idxmax(), "epoch"] == metrics["best_epoch"]


def test_best_pth_is_self_describing(trained):
    run, metrics = trained
    raw = torch.load(run / "model/best.pth", map_location="cpu", weights_only=True)
    assert raw["format"] == "agir-seg" and raw["classes"] == ["barley", "maize"] and raw["head"] == "softmax"
    stats = read_json(run / "dataset/stats.json")
    assert raw["normalization"] == {"mean": stats["mean"], "std": stats["std"]}
    assert raw["input"] == {"tile_size": 64, "overlap": 0.25}  # from the dataset's recorded geometry
    assert raw["metrics"]["test"]["mIoU"] == pytest.approx(metrics["test"]["mIoU"])
    assert raw["config"]["arch"] == "Linknet" and raw["config"]["epochs"] == 2


def test_best_pth_predicts_like_the_lightning_module(trained):
    run, _ = trained
    ckpt = torch.load(run / "model/best.ckpt", map_location="cpu", weights_only=True)
    module = SegModule(ckpt["hyper_parameters"]["agir"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    loaded = load_checkpoint(run / "model/best.pth")
    net = model_from_checkpoint(loaded, "cpu")
    rgb = read_image(run / "dataset/test/images/test_000.png")
    x = normalize(to_tv(rgb, rgb[..., 0])[0], loaded["normalization"]["mean"], loaded["normalization"]["std"])[None]
    with torch.no_grad():
        want = module(x)
        got = net(x)
    torch.testing.assert_close(got, want)
    # the Lightning checkpoints load through the same loader
    for name in ("best.ckpt", "last.ckpt"):
        assert load_checkpoint(run / "model" / name)["classes"] == ["barley", "maize"]

    # and through inference's tiled predictor with the checkpoint's own settings
    predictor_mod = pytest.importorskip("agir.infer.predictor")
    pred = predictor_mod.TiledPredictor(
        net, head=loaded["head"], mean=loaded["normalization"]["mean"], std=loaded["normalization"]["std"],
        tile_size=loaded["input"]["tile_size"], overlap=loaded["input"]["overlap"], device="cpu",
    )
    mask, _ = pred.predict(rgb)
    agree = (mask == want.argmax(1)[0].numpy()).mean()
    assert agree > 0.999


def test_rerun_resumes_from_last_ckpt_and_changed_settings_start_fresh(trained, tmp_path):
    src, _ = trained
    run = tmp_path / "round_001"
    shutil.copytree(src / "dataset", run / "dataset")
    (run / "model").mkdir()
    shutil.copy2(src / "model/last.ckpt", run / "model/last.ckpt")
    resumed = run_train_stage(tiny_cfg(epochs=3), run, progress=False)
    assert resumed["resumed_from"] == str(run / "model/last.ckpt")
    assert resumed["epochs_run"] == 3
    assert pd.read_csv(run / "model/metrics.csv")["epoch"].tolist() == [0, 1, 2]

    fresh = run_train_stage(tiny_cfg(epochs=1, lr=1e-3), run, progress=False)
    assert fresh["resumed_from"] is None
    assert pd.read_csv(run / "model/metrics.csv")["epoch"].tolist() == [0]


def test_no_val_split_validates_on_train(tmp_path):
    run = tmp_path / "run"
    make_dataset(run, {"train": 4, "test": 1}, size=32)
    m = run_train_stage(tiny_cfg(epochs=1, crop_size=32), run, progress=False)
    assert m["val_split"] == "train" and m["samples"]["val"] == 0
    assert (run / "model/best.pth").is_file()


def test_bad_inputs_fail_before_training(tmp_path):
    with pytest.raises(AgirError, match="run the preprocess stage"):
        run_train_stage(tiny_cfg(), tmp_path / "nothing", progress=False)
    run = tmp_path / "run"
    make_dataset(run, {"val": 2, "test": 1}, size=32)
    with pytest.raises(AgirError, match="no train samples"):
        run_train_stage(tiny_cfg(), run, progress=False)
    make_dataset(run, {"train": 2}, size=32)
    for bad in ({"accelerator": "tpu"}, {"precision": "banana"}):
        with pytest.raises(AgirError, match="train.accelerator"):
            run_train_stage(tiny_cfg(**bad), run, progress=False)
    with pytest.raises(AgirError, match="cannot build model"):
        run_train_stage(tiny_cfg(arch="NoSuchNet"), run, progress=False)
    assert not (run / "model/best.pth").exists()


def test_class_weights_and_focal_run(tmp_path):
    run = tmp_path / "run"
    make_dataset(run, {"train": 2, "val": 1}, size=32, names=["plant"])
    m = run_train_stage(
        tiny_cfg(epochs=1, crop_size=32, class_weights=True, loss={"ce": 1.0, "dice": 0.0, "focal": 1.0},
                 schedule="onecycle"),
        run, progress=False,
    )
    assert m["classes"] == ["background", "plant"]
    meta = torch.load(run / "model/last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]["agir"]
    assert len(meta["class_weights"]) == 2 and meta["class_weights"][1] > meta["class_weights"][0]
    assert np.isfinite(pd.read_csv(run / "model/metrics.csv")["train_loss"]).all()


def test_resume_decision(trained, tmp_path):
    from agir.train.stage import _resume_path

    run, _ = trained
    last = run / "model/last.ckpt"
    fp = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"]["agir"]["fingerprint"]
    path, meta = _resume_path(last, fp, resume=True)
    assert path == last and meta["fingerprint"] == fp and meta["init"]["line"].startswith("from scratch: ")
    assert _resume_path(last, fp, resume=False) == (None, {})  # train.resume: false
    assert _resume_path(last, "0" * 16, resume=True) == (None, {})  # other settings, dataset or starting model
    torn = tmp_path / "last.ckpt"
    torn.write_bytes(last.read_bytes()[:1000])
    assert _resume_path(torn, fp, resume=True) == (None, {})  # unreadable: retrain rather than crash
    assert _resume_path(tmp_path / "absent.ckpt", fp, resume=True) == (None, {})


def test_fingerprint_ignores_hardware_and_epochs(tmp_path):
    from agir.train.datamodule import load_dataset_info
    from agir.train.stage import train_settings, training_fingerprint

    info = load_dataset_info(make_dataset(tmp_path, {"train": 1}, size=32))
    base = training_fingerprint(train_settings(tiny_cfg()), info)
    assert training_fingerprint(train_settings(tiny_cfg(epochs=9, devices=2, num_workers=4, resume=False)), info) == base
    assert training_fingerprint(train_settings(tiny_cfg(lr=0.5)), info) != base
    assert training_fingerprint(train_settings(tiny_cfg(augment={"flip": False})), info) != base
