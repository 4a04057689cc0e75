"""Fixtures for the inference tests: tiny generated bench photos, query records and run configs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agir.config import load_config
from agir.images import write_image
from agir.runs import write_json

REPO = Path(__file__).resolve().parents[2]


def bench_photo(h: int, w: int, plants: list[tuple[int, int, int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Brown soil with green discs (cx, cy, r): (RGB uint8 image, bool plant mask)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.int16)
    img[:] = (125, 95, 70)
    img += rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
    truth = np.zeros((h, w), dtype=np.uint8)
    for cx, cy, r in plants:
        cv2.circle(truth, (cx, cy), r, 1, -1)
    green = np.array((55, 150, 45), dtype=np.int16) + rng.integers(-10, 11, size=(h, w, 3), dtype=np.int16)
    img[truth.astype(bool)] = green[truth.astype(bool)]
    return np.clip(img, 0, 255).astype(np.uint8), truth.astype(bool)


@pytest.fixture
def make_cfg(tmp_path):
    """A validated config whose run folder and storage root live in tmp_path."""

    def _make(**overrides):
        ov = {
            "io.out_root": str(tmp_path / "runs"),
            "io.roots": {"vol": str(tmp_path / "storage")},
            "seg_inference.overlays": True,
        }
        ov.update(overrides)
        cfg = load_config(REPO / "config" / "config.yaml", ov)
        run = Path(cfg["io"]["out_root"]) / cfg["project"]["name"] / cfg["project"]["subname"]
        return cfg, run

    return _make


@pytest.fixture
def semif_run(tmp_path, make_cfg):
    """Two bench images with three cutouts (two species) written as a query result."""
    storage = tmp_path / "storage"
    img_a, truth_a = bench_photo(120, 160, [(40, 40, 18), (120, 80, 25)], seed=1)
    img_b, truth_b = bench_photo(100, 140, [(70, 50, 20)], seed=2)
    write_image(storage / "imgs" / "A.jpg", img_a, quality=98)
    write_image(storage / "imgs" / "B.jpg", img_b, quality=98)
    records = [
        _rec("A_0", "A", "imgs/A.jpg", [20, 20, 42, 42], "barley", "#d66edd"),
        _rec("A_1", "A", "/imgs/A.jpg", [93, 53, 55, 55], "palmer amaranth", "#ff0000"),
        _rec("B_0", "B", "imgs/B.jpg", [48, 28, 45, 45], "barley", "#d66edd"),
    ]
    cfg, run = make_cfg()
    write_json(run / "query" / "query.json", records)
    return {"cfg": cfg, "run": run, "records": records, "truth": {"A": truth_a, "B": truth_b},
            "images": {"A": img_a, "B": img_b}, "storage": storage, "make_cfg": make_cfg}


def _rec(cid, iid, path, bbox, species, color, w=None, h=None):
    rec = {
        "cutout_id": cid,
        "image_id": iid,
        "ncsu_nfs": "vol",
        "image_path": path,
        "bbox_xywh": str(bbox),
        "category_common_name": species,
        "category_hex": color,
        "mask_path": "None",
    }
    if w:
        rec.update(fullres_width=w, fullres_height=h)
    return rec


@pytest.fixture
def rec_factory():
    return _rec


def _tiny_checkpoint(path, classes=("barley", "palmer amaranth"), head="softmax", tile_size=96):
    import torch

    from agir.checkpoint import build_model, save_checkpoint

    torch.manual_seed(0)
    n = 1 if head == "sigmoid" else len(classes) + 1
    model = build_model("Unet", "resnet18", 3, n)
    save_checkpoint(path, model.state_dict(), arch="Unet", encoder="resnet18", in_channels=3, classes=list(classes),
                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], tile_size=tile_size, overlap=0.25,
                    metrics={}, config={}, head=head)
    return path


@pytest.fixture
def tiny_checkpoint():
    """A function (path, classes=..., head=softmax|sigmoid, tile_size=96) -> a saved tiny Unet checkpoint."""
    return _tiny_checkpoint
