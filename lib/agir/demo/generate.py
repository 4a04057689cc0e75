"""The embedded demo database: a deterministic, self-contained stand-in for the AgIR repositories.

`generate_demo_data(out, images, seed, width, height)` writes

    {out}/agir_demo.duckdb                       tables `semif` (62 columns) and `field_data` (71 columns)
    {out}/storage/{volume}/semifield-developed-images/{batch_id}/images/{image_id}.jpg
    {out}/storage/{volume}/semifield-developed-images/{batch_id}/meta_masks/semantic_masks/{image_id}.png
    {out}/storage/field/{batch_id}/images/{image_id}.jpg (+ masks/{image_id}.png)
    {out}/demo_summary.json

Masks are single-channel class-index PNGs whose values are the rows' `category_class_id`
(0 = background), written with agir.masks.write_mask, with a classes.json beside them. Each
`semif` row is one plant cutout whose `bbox_xywh` is the tight box of that plant's visible pixels.
The same seed gives the same database and the same image bytes.

`import_examples(examples_dir, out)` turns real `{species}.jpg` + `{species}_mask.png|jpg`
pairs (colour-painted masks, as in shared/data/semif_examples) into the same layout, so the
pipeline runs on real photographs.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from agir.demo.painter import Canvas, _soils, draw_plant, exg_otsu, iou, paint_bench, smooth_noise
from agir.demo.species import SPECIES, Species
from agir.demo.tables import FIELD_COLUMNS, images_frame, semif_table, write_duckdb
from agir.errors import AgirError
from agir.images import encode_image, read_image
from agir.logs import get_logger
from agir.masks import rgb_to_hex, write_classes, write_mask
from agir.runs import write_bytes, write_json

log = get_logger("demo")

DB_NAME = "agir_demo.duckdb"
SEMIF_DIR = "semifield-developed-images"
JPEG_QUALITY = 92
NO_MASK_FRACTION = 0.08  # real: 91.6 % of cutouts have masks


def _classes(species: Sequence[Species]) -> list[dict]:
    return [{"index": s.class_id, "name": s.common_name, "color": s.hex} for s in species]


def _cutouts(inst: np.ndarray, n_plants: int) -> list[dict]:
    """Per visible plant: tight bbox, pixel count and connected components of its visible pixels."""
    out = []
    for pid in range(1, n_plants + 1):
        sel = inst == pid
        ys = np.flatnonzero(sel.any(axis=1))
        if ys.size == 0:
            continue  # hidden entirely under its neighbours: no cutout
        xs = np.flatnonzero(sel.any(axis=0))
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        crop = sel[y0:y1, x0:x1].astype(np.uint8)
        ncomp = cv2.connectedComponents(crop, connectivity=8)[0] - 1
        out.append({"plant": pid, "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0,
                    "pixel_area": int(crop.sum()), "num_components": int(ncomp)})
    return out


def _overlaps(cuts: list[dict], ids: list[str]) -> list[str | None]:
    out = []
    for i, a in enumerate(cuts):
        hits = [ids[j] for j, b in enumerate(cuts) if j != i and a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]]
        out.append("[" + ", ".join(f'"{h}"' for h in hits) + "]" if hits else None)
    return out


def _paint_one(job: dict) -> dict:
    """Paint, write and measure one bench image (runs in a worker process)."""
    rng = np.random.default_rng([job["seed"], job["index"]])
    img, inst, plant_species = paint_bench(rng, job["width"], job["height"], SPECIES)
    lut = np.zeros(len(plant_species) + 1, dtype=np.uint8)
    for pid, si in enumerate(plant_species, start=1):
        lut[pid] = SPECIES[si].class_id
    mask = lut[inst]
    data = encode_image(img, ".jpg", JPEG_QUALITY)
    write_bytes(job["image_file"], data)
    if job["mask_file"]:
        write_mask(job["mask_file"], mask, _classes(SPECIES))
    seen = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    cuts = _cutouts(inst, len(plant_species))
    for c in cuts:
        c["species"] = plant_species[c["plant"] - 1]
    return {"index": job["index"], "cutouts": cuts, "exg_iou": iou(exg_otsu(seen), mask > 0),
            "plant_fraction": float((mask > 0).mean())}


def _run_jobs(jobs: list[dict], workers: int, desc: str) -> list[dict]:
    if workers <= 1 or len(jobs) <= 1:
        return [_paint_one(j) for j in tqdm(jobs, desc=desc, unit="img")]
    # fork: workers inherit the imported modules (spawn would re-import cv2/numpy in each)
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(tqdm(pool.map(_paint_one, jobs), total=len(jobs), desc=desc, unit="img"))


def _core_from_images(img: dict[str, np.ndarray], per_image: list[list[dict]], width: np.ndarray,
                      height: np.ndarray, has_masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cutout core arrays for semif_table from per-image cutout lists."""
    rows: dict[str, list] = {k: [] for k in (*img, "k", "species", "x", "y", "w", "h", "width", "height",
                                             "pixel_area", "has_masks", "overlaps", "num_components")}
    for i, cuts in enumerate(per_image):
        ids = [f"{img['image_id'][i]}_{k}" for k in range(len(cuts))]
        for k, (c, ov) in enumerate(zip(cuts, _overlaps(cuts, ids))):
            for key in img:
                rows[key].append(img[key][i])
            rows["k"].append(k)
            rows["species"].append(c["species"])
            for key in ("x", "y", "w", "h", "pixel_area", "num_components"):
                rows[key].append(c[key])
            rows["width"].append(width[i])
            rows["height"].append(height[i])
            rows["has_masks"].append(has_masks[i])
            rows["overlaps"].append(ov)
    return {k: np.array(v, dtype=object if k in img or k == "overlaps" else np.int64) for k, v in rows.items()}


def _semif_with_measured(core: dict[str, np.ndarray], rng: np.random.Generator,
                         species: Sequence[Species] = SPECIES) -> pa.Table:
    table = semif_table(core, rng, species)
    # num_components measured from the painted masks replaces the random one
    idx = table.column_names.index("num_components")
    return table.set_column(idx, "num_components", pa.array(core["num_components"].astype(np.int64)))


# ------------------------------------------------------------------------------------------ field

def _paint_field(rng: np.random.Generator, width: int, height: int, sp: Species) -> tuple[np.ndarray, np.ndarray]:
    """A field photo: tilled soil with crop residue and several plants of one species."""
    soil, _ = _soils(rng, height, width)
    img = soil * np.float32(1.15) + np.float32(18)
    cv = Canvas(np.ascontiguousarray(img, np.float32), np.zeros((height, width), np.int32))
    for _ in range(int(rng.integers(20, 60))):  # straw residue: yellowish, not plant
        p = rng.uniform(0, 1, 2) * (width, height)
        a = rng.uniform(0, np.pi)
        q = p + rng.uniform(20, 90) * np.array([math.cos(a), math.sin(a)])
        cv.line(np.array([p, q]), (190, 170, 120), int(rng.integers(2, 5)), None)
    n = int(rng.integers(2, 6))
    for pid in range(1, n + 1):
        draw_plant(cv, rng, pid, sp, rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height,
                   min(width, height) * rng.uniform(0.12, 0.25))
    out = cv.img * (1 + 0.1 * smooth_noise(rng, height, width, 200))[..., None]
    out = cv2.GaussianBlur(out, (0, 0), 0.7)
    mask = np.where(cv.inst > 0, sp.class_id, 0).astype(np.uint8)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _field_table(out: Path, n: int, seed: int, width: int, height: int) -> pa.Table:
    rng = np.random.default_rng([seed, 10_000])
    img = images_frame(rng, n, images_per_batch=4)
    rows: list[dict[str, Any]] = []
    for i in tqdm(range(n), desc="field images", unit="img"):
        sp = SPECIES[int(rng.integers(0, len(SPECIES)))]
        state = img["state"][i]
        stamp = img["datetime"][i].replace(":", "-", 2).replace(" ", "T")
        batch = f"{state}_{stamp[:10]}"
        image_id = f"IMG_{seed:02d}{i:04d}"
        rel = f"{batch}/images/{image_id}.jpg"
        mask_rel = f"{batch}/masks/{image_id}.png"
        pic, mask = _paint_field(np.random.default_rng([seed, 20_000 + i]), width, height, sp)
        data = encode_image(pic, ".jpg", JPEG_QUALITY)
        write_bytes(out / "storage" / "field" / rel, data)
        write_mask(out / "storage" / "field" / mask_rel, mask, _classes(SPECIES))
        ys, xs = np.nonzero(mask)
        bbox = f"[{xs.min()}, {ys.min()}, {xs.max() - xs.min() + 1}, {ys.max() - ys.min() + 1}]" if xs.size else None
        cover = float((mask > 0).mean() * 100)
        bins = [(0.0, 25.0), (26.0, 50.0), (51.0, 75.0), (76.0, 100.0)]
        gc = next(b for b in bins if cover <= b[1])
        row = {c: None for c, _ in FIELD_COLUMNS}
        row.update(
            id=i + 1, alias=f"{image_id}.jpg", batch_id=batch, image_id=image_id, image_index=i,
            cutout_name=None, camera_datetime=stamp, db_insert_datetime=stamp, upload_datetime_utc=stamp + "Z",
            mask_timestamp=float(1.7e9 + i), us_state=state, crop_or_fallow=["Cropped", "fallow"][i % 2],
            crop_type_secondary=["Cotton", "winter_wheat", None][i % 3], cotton_variety="DP 1646 B2XF" if i % 3 == 0 else None,
            cover_crop_family=sp.family if sp.group == "cover crop" else None,
            cloud_cover=["clear", "Partly cloudy", "overcast"][int(rng.integers(0, 3))],
            ground_cover=f"[{gc[0]}, {gc[1]}]", ground_residue=["High - cotton stalks", "Low", "None"][i % 3],
            image_url=f"https://example.org/field/{rel}", developed_image_path=rel,
            raw_image_path=f"{batch}/raw/{image_id}.ARW", final_mask_path=mask_rel, extension="jpg",
            exif_meta='{"Make": "SONY"}', height=str(height), size_mib=round(len(data) / 2**20, 3),
            has_matching_jpg_and_raw=1, is_preprocessed=1, class_id=sp.class_id, bbox_xywh=bbox,
            det_pred_conf=round(float(rng.uniform(0.6, 0.99)), 3), app_species=sp.common_name.title(),
            has_mat_pred=1.0, has_mat_pred_conf=round(float(rng.uniform(0.5, 1.0)), 3), usda_symbol=sp.usda,
            eppo=sp.eppo, common_name=sp.common_name, taxonomic_group=sp.group, taxonomic_class=sp.klass,
            taxonomic_subclass=sp.subclass, taxonomic_order=sp.order, taxonomic_family=sp.family,
            taxonomic_genus=sp.genus, taxonomic_species_name=f"{sp.genus} {sp.species}",
            taxonomic_authority=sp.authority, plant_type=sp.group, growth_habit=sp.growth_habit.title(),
            duration=sp.duration.title(), growth_stage=["Vegetative", "Seedling / Cotyledon", "Flowering"][i % 3],
            flower_fruit_or_seeds=int(i % 3 == 2), size_class=["small", "Large"][i % 2],
            mask_status=["approved", "pending"][int(i % 5 == 4)], mask_reviewer="demo",
            initial_mask_issue_tag=["none", "occlusion", "edge_artifacts"][i % 3], final_mask_issue_tag="none",
            rgb=sp.rgb_text,
        )
        rows.append(row)
    types = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}
    return pa.table({c: pa.array([r[c] for r in rows], type=types[t]) for c, t in FIELD_COLUMNS})


# ------------------------------------------------------------------------------------------ public

def generate_demo_data(out: Path, images: int = 48, seed: int = 0, width: int = 1600, height: int = 1066,
                       field_images: int | None = None, workers: int | None = None) -> dict:
    """Write the demo database and its images under `out`; returns a summary (also demo_summary.json)."""
    started = time.perf_counter()
    out = Path(out)
    if images < 1 or width < 64 or height < 64:
        raise AgirError(f"demo-data: need images >= 1 and a size of at least 64x64 (got {images}, {width}x{height})")
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    rng = np.random.default_rng([seed, 1])
    img = images_frame(rng, images)
    has_masks = (rng.random(images) >= NO_MASK_FRACTION).astype(np.int64)
    storage = out / "storage"
    jobs = []
    for i in range(images):
        folder = storage / img["volume"][i] / SEMIF_DIR / img["batch_id"][i]
        jobs.append({"seed": seed, "index": i, "width": width, "height": height,
                     "image_file": str(folder / "images" / f"{img['image_id'][i]}.jpg"),
                     "mask_file": str(folder / "meta_masks" / "semantic_masks" / f"{img['image_id'][i]}.png")
                     if has_masks[i] else None})
        if has_masks[i]:
            write_classes(folder / "meta_masks" / "semantic_masks", _classes(SPECIES))
    results = sorted(_run_jobs(jobs, workers, "demo images"), key=lambda r: r["index"])
    core = _core_from_images(img, [r["cutouts"] for r in results], np.full(images, width), np.full(images, height),
                             has_masks)
    semif = _semif_with_measured(core, np.random.default_rng([seed, 2]))
    n_field = field_images if field_images is not None else max(2, images // 8)
    field = _field_table(out, n_field, seed, max(64, width * 3 // 4), max(64, height * 3 // 4))
    write_duckdb(out / DB_NAME, {"semif": semif, "field_data": field})
    ious = [r["exg_iou"] for r in results]
    species_counts: dict[str, int] = {}
    for name in semif.column("category_common_name").to_pylist():
        species_counts[name] = species_counts.get(name, 0) + 1
    summary = {
        "database": str(out / DB_NAME), "storage": str(storage), "images": images, "cutouts": semif.num_rows,
        "field_images": field.num_rows, "seed": seed, "size": [width, height],
        "images_with_masks": int(has_masks.sum()), "species": dict(sorted(species_counts.items())),
        "exg_otsu_iou_mean": round(float(np.mean(ious)), 4), "exg_otsu_iou_min": round(float(np.min(ious)), 4),
        "exg_otsu_iou_max": round(float(np.max(ious)), 4),
        "io_roots": {v: str(storage / v) for v in sorted(set(img["volume"]))},
        "field_storage_dir": str(storage / "field"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "demo_summary.json", summary)
    log.info("demo data: %d images, %d cutouts, %d field images in %s (ExG+Otsu IoU %.3f) in %.1f s",
             images, semif.num_rows, field.num_rows, out, summary["exg_otsu_iou_mean"], summary["seconds"])
    return summary


# Species of the real example files that are not in the painted catalogue.
EXTRA_SPECIES = {
    "maize": ("ZEA", "ZEAMX", "cash crop", "Poaceae", "Zea", "mays", "L.", "graminoid", "annual"),
    "winter wheat": ("TRAE", "TRZAX", "cover crop", "Poaceae", "Triticum", "aestivum", "L.", "graminoid", "annual"),
}


def _species_for(name: str, color: str, next_id: int) -> Species:
    from agir.demo.species import BY_NAME

    if name in BY_NAME:
        return dataclasses.replace(BY_NAME[name], hex=color)
    usda, eppo, group, fam, genus, spp, auth, habit, dur = EXTRA_SPECIES.get(
        name, (None, None, None, None, None, None, None, None, None))
    grass = fam == "Poaceae"
    return Species(next_id, name, usda, eppo, group, "Liliopsida" if grass else None, None, None, fam, genus, spp,
                   auth, habit, dur, color, 1.0, 500.0, "grass" if grass else "broad", (90, 140, 60))


def _read_mask_resized(path: Path, w: int, h: int) -> np.ndarray:
    """A colour-painted mask, resized (nearest) to the image size before colour conversion (speed)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise AgirError(f"{path}: unreadable mask image; replace it or remove the pair")
    return cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_NEAREST), cv2.COLOR_BGR2RGB)


def _dominant_color(rgb: np.ndarray) -> str:
    rgb = rgb[::4, ::4]  # a subsample is plenty to find the painted colour
    sel = rgb.max(axis=2) > 60
    if not sel.any():
        return "#00ff00"
    px = (rgb[sel] // 16).astype(np.int32)
    keys, counts = np.unique(px[:, 0] * 256 + px[:, 1] * 16 + px[:, 2], return_counts=True)
    k = keys[counts.argmax()]
    bucket = (rgb[sel][(px[:, 0] * 256 + px[:, 1] * 16 + px[:, 2]) == k]).mean(axis=0)
    return rgb_to_hex([round(float(v)) for v in bucket])


def import_examples(examples_dir: Path, out: Path, seed: int = 0) -> dict:
    """Turn `{species}.jpg` + `{species}_mask.*` pairs into demo-layout rows, images and class-index masks."""
    started = time.perf_counter()
    examples_dir, out = Path(examples_dir), Path(out)
    if not examples_dir.is_dir():
        raise AgirError(f"{examples_dir}: examples folder not found; give a folder of <species>.jpg + <species>_mask.png")
    pairs = []
    for img_file in sorted(examples_dir.glob("*.jpg")):
        if img_file.stem.endswith("_mask"):
            continue
        masks = sorted(p for p in examples_dir.glob(f"{img_file.stem}_mask.*") if p.suffix.lower() in (".png", ".jpg"))
        if masks:
            pairs.append((img_file, masks[0]))
    if not pairs:
        raise AgirError(f"{examples_dir}: no <species>.jpg with a <species>_mask.png|jpg beside it")
    rng = np.random.default_rng([seed, 3])
    img = images_frame(rng, len(pairs), images_per_batch=len(pairs))
    img["volume"] = np.array(["longterm_images2"] * len(pairs), dtype=object)
    species: list[Species] = []
    per_image, widths, heights, ious = [], [], [], []
    next_id = max(s.class_id for s in SPECIES) + 1
    for i, (img_file, mask_file) in enumerate(tqdm(pairs, desc="examples", unit="img")):
        name = img_file.stem.replace("_", " ").lower()
        rgb = read_image(img_file)
        h, w = rgb.shape[:2]
        colour_mask = _read_mask_resized(mask_file, w, h)
        color = _dominant_color(colour_mask)
        sp = _species_for(name, color, next_id)
        if sp.class_id == next_id:
            next_id += 1
        species.append(sp)
        # JPEG masks carry noise: anything clearly brighter than black is plant
        plant = colour_mask.max(axis=2) > 60
        mask = np.where(plant, sp.class_id, 0).astype(np.uint8)
        folder = out / "storage" / img["volume"][i] / SEMIF_DIR / img["batch_id"][i]
        write_bytes(folder / "images" / f"{img['image_id'][i]}.jpg", img_file.read_bytes())
        mdir = folder / "meta_masks" / "semantic_masks"
        write_mask(mdir / f"{img['image_id'][i]}.png", mask, [{"index": sp.class_id, "name": name, "color": color}])
        write_classes(mdir, [{"index": sp.class_id, "name": name, "color": color}])
        # one cutout per plant: leaves of one plant are joined by a closing before labelling
        # (at quarter resolution: a 41 px closing on the full frame is slow)
        small = cv2.resize(plant.astype(np.uint8), (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        small = cv2.morphologyEx((small > 0).astype(np.uint8), cv2.MORPH_CLOSE,
                                 cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)))
        n, labels_small = cv2.connectedComponents(small, connectivity=8)
        labels = cv2.resize(labels_small.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        # plant pixels the downscale dropped keep the label of the nearest component
        stats = np.zeros((n, 5), np.int64)
        for lab in range(1, n):
            ys, xs = np.nonzero(labels_small == lab)
            stats[lab] = (xs.min() * 4, ys.min() * 4, (xs.max() - xs.min() + 1) * 4 + 4,
                          (ys.max() - ys.min() + 1) * 4 + 4, ys.size * 16)
        cuts = []
        min_area = 0.0005 * h * w
        for lab in range(1, n):
            if stats[lab, cv2.CC_STAT_AREA] < min_area:
                continue
            bx, by, bw, bh = (int(v) for v in stats[lab, :4])
            crop = (labels[by : by + bh, bx : bx + bw] == lab) & plant[by : by + bh, bx : bx + bw]
            for c in _cutouts(crop.astype(np.int32), 1):
                c.update(x=c["x"] + bx, y=c["y"] + by, species=len(species) - 1)
                cuts.append(c)
        per_image.append(cuts)
        widths.append(w)
        heights.append(h)
        ious.append(iou(exg_otsu(rgb), plant))
    has_masks = np.ones(len(pairs), dtype=np.int64)
    core = _core_from_images(img, per_image, np.array(widths), np.array(heights), has_masks)
    semif = _semif_with_measured(core, np.random.default_rng([seed, 4]), species)
    empty_field = pa.table({c: pa.array([], type={"BIGINT": pa.int64(), "DOUBLE": pa.float64(),
                                                  "VARCHAR": pa.string()}[t]) for c, t in FIELD_COLUMNS})
    write_duckdb(out / DB_NAME, {"semif": semif, "field_data": empty_field})
    summary = {
        "database": str(out / DB_NAME), "storage": str(out / "storage"), "images": len(pairs),
        "cutouts": semif.num_rows, "species": {s.common_name: s.hex for s in species},
        "exg_otsu_iou": {s.common_name: round(v, 4) for s, v in zip(species, ious)},
        "exg_otsu_iou_mean": round(float(np.mean(ious)), 4),
        "io_roots": {"longterm_images2": str(out / "storage" / "longterm_images2")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "demo_summary.json", summary)
    log.info("imported %d example images (%d cutouts) into %s", len(pairs), semif.num_rows, out)
    return summary

