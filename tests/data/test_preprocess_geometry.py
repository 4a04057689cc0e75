"""Tile geometry (the inference tiler), ignore padding, resize letterbox, background-tile sampling."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from agir.data import run_preprocess_stage
from agir.data.geometry import Geometry, cut, geometry_from_config
from agir.errors import ConfigError
from agir.images import read_image
from agir.masks import read_mask
from agir.tiling import tile_grid


def _rows(run):
    with open(run / "dataset" / "index.csv") as fh:
        return list(csv.DictReader(fh))


def test_tiles_follow_the_shared_tiler_and_pad_with_ignore():
    image = np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    mask = np.ones((70, 50), np.uint8)
    pieces = list(cut(image, mask, Geometry("tile", 32, 0.25)))
    grid = tile_grid(70, 50, 32, 0.25)
    assert [(p.y0, p.x0, p.y1, p.x1) for p in pieces] == [(t.y0, t.x0, t.y1, t.x1) for t in grid]
    for p in pieces:
        assert p.image.shape == (32, 32, 3) and p.mask.shape == (32, 32)
        assert np.array_equal(p.image, image[p.y0 : p.y1, p.x0 : p.x1])
    small = list(cut(image[:20, :24], mask[:20, :24], Geometry("tile", 32, 0.0)))
    assert len(small) == 1
    assert (small[0].mask[:20, :24] == 1).all()
    assert (small[0].mask[20:, :] == 255).all() and (small[0].mask[:, 24:] == 255).all()


def test_resize_keeps_aspect_and_letterboxes_with_ignore():
    image = np.zeros((40, 80, 3), np.uint8)
    mask = np.zeros((40, 80), np.uint8)
    mask[:, 40:] = 3
    (piece,) = cut(image, mask, Geometry("resize", 32, 0.0))
    assert piece.mask.shape == (32, 32) and piece.scale == pytest.approx(0.4)
    assert (piece.mask[:16, :16] == 0).all() and (piece.mask[:16, 16:] == 3).all()
    assert (piece.mask[16:] == 255).all()
    assert set(np.unique(piece.mask)) == {0, 3, 255}  # nearest neighbour: no blended class values


def test_geometry_settings_are_checked():
    with pytest.raises(ConfigError, match="preprocess.tile.size"):
        geometry_from_config({"geometry": "tile", "tile": {"size": None, "overlap": 0}})
    with pytest.raises(ConfigError, match="overlap"):
        geometry_from_config({"geometry": "tile", "tile": {"size": 64, "overlap": 1.0}})


def test_stage_tiles_match_source_pixels_and_padding_is_ignore(kit):
    cfg = kit.cfg(**{"preprocess.tile.size": 32, "preprocess.tile.overlap": 0.25})
    records: list = []
    img, msk = kit.add_db_image(cfg, records, "IMG_1", 50, 70, [(3, 5, 5, 30, 30)], ["barley"])
    kit.add_db_image(cfg, records, "IMG_2", 20, 20, [(3, 0, 0, 10, 10)], ["barley"])  # smaller than a tile
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    run_preprocess_stage(cfg, run)
    rows = _rows(run)
    got = sorted((int(r["y0"]), int(r["x0"]), int(r["y1"]), int(r["x1"])) for r in rows if r["image_id"] == "IMG_1")
    assert got == sorted((t.y0, t.x0, t.y1, t.x1) for t in tile_grid(50, 70, 32, 0.25))
    for r in rows:
        m = read_mask(run / "dataset" / r["mask"])
        im = read_image(run / "dataset" / r["image"])
        y0, x0, y1, x1 = (int(r[k]) for k in ("y0", "x0", "y1", "x1"))
        assert m.shape == (32, 32) and im.shape == (32, 32, 3)
        if r["image_id"] == "IMG_1":
            assert np.array_equal(im, img[y0:y1, x0:x1])  # png: lossless
            assert np.array_equal(m == 1, msk[y0:y1, x0:x1] == 3)
        else:
            assert (m[20:, :] == 255).all() and (m[:, 20:] == 255).all()
            assert int(r["px_ignore"]) == 32 * 32 - 400


def test_background_tiles_dropped_except_a_seeded_fraction(kit):
    cfg = kit.cfg(**{"preprocess.tile.size": 16, "preprocess.min_foreground": 0.05,
                      "preprocess.keep_background_fraction": 0.3})
    records: list = []
    kit.add_db_image(cfg, records, "IMG_1", 160, 160, [(3, 0, 0, 16, 16)], ["barley"])
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    rows = _rows(run)
    kept_bg = [r["sample_id"] for r in rows if r["kept"] == "background_sample"]
    assert [r["sample_id"] for r in rows if r["kept"] == "foreground"] == ["IMG_1_0_0"]
    assert 99 * 0.15 < len(kept_bg) < 99 * 0.45  # ~30 % of the 99 empty tiles
    assert metrics["counts"]["dropped_background_tiles"] == 99 - len(kept_bg)
    assert all(float(r["foreground_fraction"]) < 0.05 for r in rows if r["kept"] == "background_sample")
    # a rebuild from scratch keeps exactly the same background tiles
    run_preprocess_stage(cfg, run, force=True)
    assert [r["sample_id"] for r in _rows(run) if r["kept"] == "background_sample"] == kept_bg


def test_stage_resize_gives_one_letterboxed_sample_per_image(kit):
    cfg = kit.cfg(**{"preprocess.geometry": "resize", "preprocess.resize": 32})
    records: list = []
    kit.add_db_image(cfg, records, "IMG_1", 40, 80, [(3, 0, 40, 40, 80)], ["barley"])
    kit.write_query(cfg, records)
    run = kit.run_of(cfg)
    metrics = run_preprocess_stage(cfg, run)
    (row,) = _rows(run)
    assert (row["sample_id"], row["y0"], row["x0"], row["y1"], row["x1"], float(row["scale"])) == (
        "IMG_1", "0", "0", "40", "80", 0.4)
    mask = read_mask(run / "dataset" / row["mask"])
    assert mask.shape == (32, 32) and (mask[16:] == 255).all() and (mask[:16, 16:] == 1).all()
    assert metrics["geometry"] == {"mode": "resize", "size": 32, "overlap": 0.0}
