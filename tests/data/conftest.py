"""Tiny generated inputs for the preprocess tests: DB records with masks and fake CVAT rounds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from agir.config import load_config
from agir.images import write_image
from agir.masks import make_classes, write_classes, write_mask
from agir.runs import write_json, write_jsonl

SPECIES = {  # name -> (DB category_class_id, colour, RGB painted into the synthetic photo)
    "barley": (3, "#d66edd", (60, 170, 60)),
    "maize": (7, "#4caf50", (90, 200, 40)),
    "soybean": (12, "#2196f3", (40, 140, 90)),
}


def make_cfg(tmp: Path, **overrides) -> dict:
    """The default config pointed at a temporary project, with small tiles and one worker."""
    base = {
        "project.name": "proj",
        "project.subname": "round_002",
        "io.out_root": str(tmp / "runs"),
        "io.roots": {"vol": str(tmp / "storage")},
        "preprocess.tile.size": 32,
        "preprocess.tile.overlap": 0.0,
        "preprocess.min_foreground": 0.0,
        "preprocess.keep_background_fraction": 1.0,
        "preprocess.image_format": "png",
        "preprocess.workers": 1,
    }
    base.update(overrides)
    return load_config(overrides=base)


def run_of(cfg: dict) -> Path:
    return Path(cfg["io"]["out_root"]) / cfg["project"]["name"] / cfg["project"]["subname"]


def synth(h: int, w: int, blobs: list[tuple[int, int, int, int, int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A soil-coloured photo and a class-value mask; blobs are (value, y0, x0, y1, x1) rectangles."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 120, 90, 60
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for value, y0, x0, y1, x1 in blobs:
        mask[y0:y1, x0:x1] = value
        img[y0:y1, x0:x1] = (60 + 10 * (value % 5), 160, 60)
    return img, mask


def add_db_image(cfg: dict, records: list, image_id: str, h: int, w: int, blobs, species: list[str], seed=0,
                 mask: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Write one SemiF frame + class-id mask under io.roots.vol and add one record per species."""
    root = Path(cfg["io"]["roots"]["vol"])
    img, msk = synth(h, w, blobs, seed)
    write_image(root / "images" / f"{image_id}.png", img)
    if mask:
        write_mask(root / "masks" / f"{image_id}.png", msk)
    for k, name in enumerate(species):
        cid, hexcol, _ = SPECIES[name]
        records.append({
            "cutout_id": f"{image_id}_{k}", "image_id": image_id, "ncsu_nfs": "vol",
            "image_path": f"/images/{image_id}.png",
            "mask_path": f"masks/{image_id}.png" if mask else "None",
            "category_class_id": cid, "category_common_name": name, "category_hex": hexcol,
        })
    return img, msk


def write_query(cfg: dict, records: list) -> None:
    write_json(run_of(cfg) / "query" / "query.json", records)


def add_cvat_round(cfg: dict, round_name: str, items: dict[str, tuple[np.ndarray, np.ndarray]],
                   class_names: list[str], image_ids: dict[str, str] | None = None, download: bool = True) -> Path:
    """A fake round folder: cvat/annotations/{images,masks} + classes.json (+ download.json, manifest)."""
    rnd = run_of(cfg).parent / round_name
    ann = rnd / "cvat" / "annotations"
    classes = make_classes(class_names, {n: SPECIES[n][1] for n in class_names if n in SPECIES})
    write_classes(ann / "masks", classes)
    for rid, (img, msk) in items.items():
        write_image(ann / "images" / f"{rid}.jpg", img, quality=98)
        write_mask(ann / "masks" / f"{rid}.png", msk, classes)
    if download:
        write_json(rnd / "cvat" / "download.json", {"tasks": [{"id": 1, "status": "completed"}]})
    if image_ids:
        write_jsonl(rnd / "infer" / "manifest.jsonl", [{"id": k, "image_id": v, "status": "ok"} for k, v in image_ids.items()])
    return rnd


@pytest.fixture
def kit(tmp_path):
    """The helpers above, with `kit.cfg(**overrides)` bound to this test's tmp_path."""
    return SimpleNamespace(
        cfg=lambda **overrides: make_cfg(tmp_path, **overrides),
        run_of=run_of, synth=synth, add_db_image=add_db_image, write_query=write_query,
        add_cvat_round=add_cvat_round, tmp=tmp_path,
    )
