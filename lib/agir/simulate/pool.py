"""The simulator's data: the candidate pool, a validation set and a fixed test set, held in memory.

`agir` (default): species pot sequences (agir.demo.sequences): 3 common crops, 5 rare weeds in 1-5 %
of the images, >90 % background, every pot imaged on several days (`group_id`); validation and test
sets balanced over species, drawn from groups the pool never sees.
`iid`: the earlier benchmark's pool: demo database frames drawn i.i.d. from one mix, binary masks.
Frames are also written under `{out}/data/` (PNG + records.jsonl with `group_id`) for looking at.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from agir.errors import AgirError
from agir.runs import write_json, write_jsonl


@dataclasses.dataclass
class Sample:
    id: str
    rgb: np.ndarray  # uint8 (H, W, 3)
    truth: np.ndarray  # uint8 class index in the pool's class list (0 background, 255 ignore)
    meta: dict  # record metadata the selection may use: group_id, category_common_name, cover, ...


@dataclasses.dataclass
class PoolData:
    pool: list[Sample]
    val: list[Sample]
    test: list[Sample]
    classes: list[str]  # foreground class names; truth value i = classes[i - 1]
    rare: list[str]  # the rare classes, scored on their own
    info: dict


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def _species_share(samples: list[Sample], classes: list[str]) -> dict[str, float]:
    return {c: round(float(np.mean([(s.truth == i).any() for s in samples])), 4) for i, c in enumerate(classes, 1)}


def prepare_agir(cfg, out: Path) -> PoolData:
    from agir.demo.sequences import CLASSES, RARE, make_balanced_set, make_pool

    started = time.perf_counter()
    frames = make_pool(cfg.groups, cfg.days, cfg.size, cfg.data_seed)
    # validation and test: other seeds, so other pots than the pool's
    val = make_balanced_set(cfg.val_per_species, cfg.days, cfg.size, cfg.data_seed + 101, prefix="val")
    test = make_balanced_set(cfg.test_per_species, cfg.days, cfg.size, cfg.data_seed + 202, prefix="test")
    conv = [[Sample(f.id, f.rgb, f.truth, dict(f.meta)) for f in part] for part in (frames, val, test)]
    pool, val_s, test_s = conv
    classes = list(CLASSES)
    info = {
        "pool": "agir", "images": len(pool), "groups": cfg.groups, "days": cfg.days, "size": [cfg.size, cfg.size],
        "val_images": len(val_s), "test_images": len(test_s), "classes": classes, "rare": list(RARE),
        "background_fraction": round(float(np.mean([(s.truth == 0).mean() for s in pool])), 4),
        "pool_image_share": _species_share(pool, classes), "test_image_share": _species_share(test_s, classes),
        "generate_seconds": round(time.perf_counter() - started, 1),
    }
    _write_frames(out / "data", pool + val_s + test_s, classes)
    return PoolData(pool, val_s, test_s, classes, list(RARE), info)


def _write_frames(folder: Path, samples: list[Sample], classes: list[str]) -> None:
    """PNG frames + colour masks + records.jsonl (the pool's 'database': id, group_id, day, species...)."""
    import cv2

    from agir.runs import write_bytes

    if (folder / "records.jsonl").exists():
        return
    palette = np.array([[0, 0, 0]] + [[(37 * i) % 256, (91 * i) % 256, (157 * i) % 256] for i in range(1, 256)],
                       np.uint8)
    for s in samples:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(s.rgb, cv2.COLOR_RGB2BGR))
        write_bytes(folder / "images" / f"{s.id}.png", buf.tobytes())
        ok, buf = cv2.imencode(".png", cv2.cvtColor(palette[s.truth], cv2.COLOR_RGB2BGR))
        write_bytes(folder / "masks" / f"{s.id}.png", buf.tobytes())
    write_jsonl(folder / "records.jsonl", [{"id": s.id, **s.meta} for s in samples])
    write_json(folder / "classes.json", {"classes": classes})


def _images_table(db: Path) -> list[dict]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT image_id, any_value(ncsu_nfs) AS volume, any_value(image_path) AS image_path, "
            "any_value(mask_path) AS mask_path, max(has_masks) AS has_masks, "
            "arg_max(category_common_name, pixel_area) AS category_common_name, "
            "count(*) AS cutouts, any_value(state) AS state, any_value(season) AS season "
            "FROM semif GROUP BY image_id ORDER BY image_id"
        ).fetchall()
        cols = [d[0] for d in con.description]
    finally:
        con.close()
    return [dict(zip(cols, r)) for r in rows]


def prepare_iid(cfg, out: Path) -> PoolData:
    """The earlier pool: the demo database's default mix, binary plant masks, frames drawn i.i.d."""
    from agir.demo import generate_demo_data
    from agir.images import read_image
    from agir.masks import IGNORE, read_mask
    from agir.runs import read_json

    data = Path(cfg.data_dir) if cfg.data_dir else out / "data"
    need = cfg.pool_size + cfg.test
    n_gen = int(math.ceil(need / 0.88)) + 4  # ~8 % of demo images have no database mask
    summary_file = data / "demo_summary.json"
    started = time.perf_counter()
    if summary_file.exists():
        summary = read_json(summary_file)
        if summary.get("images", 0) < n_gen or summary.get("size") != [cfg.width, cfg.height]:
            raise AgirError(f"{data}: holds a demo database of another size; remove it or point --data-dir elsewhere")
    else:
        summary = generate_demo_data(data, images=n_gen, seed=cfg.data_seed, width=cfg.width, height=cfg.height)
    rows = [r for r in _images_table(data / "agir_demo.duckdb") if r["has_masks"]]
    if len(rows) < need:
        raise AgirError(f"{data}: only {len(rows)} images with masks, need pool {cfg.pool_size} + test {cfg.test}")
    order = np.random.default_rng([cfg.data_seed, 7]).permutation(len(rows))
    samples = []
    for r in (rows[i] for i in order[:need]):
        root = Path(summary["storage"]) / r["volume"]
        db_mask = read_mask(root / r["mask_path"])
        truth = np.where(db_mask == IGNORE, IGNORE, (db_mask > 0).astype(np.uint8)).astype(np.uint8)
        meta = {k: r[k] for k in ("category_common_name", "cutouts", "state", "season")}
        meta["cover"] = round(float((truth == 1).mean()), 5)
        meta["estimated_bbox_area_cm2"] = round(meta["cover"] * 1600.0, 2)  # veg_random's plant-size column
        meta["group_id"] = r["image_id"]  # i.i.d.: every frame its own group
        samples.append(Sample(r["image_id"], read_image(root / r["image_path"]), truth, meta))
    test, pool = samples[: cfg.test], samples[cfg.test:]
    info = {"pool": "iid", "images": len(pool), "test_images": len(test), "val_images": 0, "classes": ["plant"],
            "rare": [], "size": [cfg.width, cfg.height], "data_dir": str(data),
            "generate_seconds": round(time.perf_counter() - started, 1),
            "background_fraction": round(float(np.mean([(s.truth == 0).mean() for s in pool])), 4),
            "pool_species": _counts(s.meta["category_common_name"] for s in pool)}
    return PoolData(pool, [], test, ["plant"], [], info)


def prepare_data(cfg, out: Path) -> PoolData:
    return prepare_agir(cfg, out) if cfg.pool == "agir" else prepare_iid(cfg, out)
