"""The `semif` (62 columns) and `field_data` (71 columns) tables of the demo database.

Rows are built column-wise from a few "core" arrays (species, state, capture time, image, bbox,
volume, has_masks) so the same code serves the painted demo (bboxes measured from real masks) and
the large synthetic tables of tests and benchmarks (`synthetic_semif`). Every derived column follows
spec/semif_schema.md: batch ids `{STATE}_{YYYY-MM-DD}`, image ids `{STATE}_{epoch}`, cutout ids
`{image_id}_{k}`, EXIF `datetime`, bbox text `[x, y, w, h]`, `estimated_bbox_area_cm2 = w*h*k`,
`estimated_area_bin` from that area, species codes/taxonomy/colours from the catalogue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from agir.demo.species import SPECIES, Species

SEMIF_COLUMNS: tuple[tuple[str, str], ...] = (
    ("season", "VARCHAR"), ("datetime", "VARCHAR"), ("bbot_version", "VARCHAR"), ("batch_id", "VARCHAR"),
    ("version", "DOUBLE"), ("image_id", "VARCHAR"), ("fullres_height", "BIGINT"), ("fullres_width", "BIGINT"),
    ("exif_meta", "VARCHAR"), ("camera_info", "VARCHAR"), ("lens_model", "VARCHAR"), ("ncsu_nfs", "VARCHAR"),
    ("image_path", "VARCHAR"), ("mask_path", "VARCHAR"), ("json_path", "VARCHAR"), ("cutout_ncsu_nfs", "VARCHAR"),
    ("cropout_path", "VARCHAR"), ("cutout_path", "VARCHAR"), ("cutout_mask_path", "VARCHAR"),
    ("cutout_json_path", "VARCHAR"), ("has_masks", "BIGINT"), ("is_primary", "BIGINT"), ("cutout_exists", "BIGINT"),
    ("cutout_id", "VARCHAR"), ("bbox_xywh", "VARCHAR"), ("category_class_id", "BIGINT"),
    ("overlapping_cutout_ids", "VARCHAR"), ("non_target_weed", "BIGINT"), ("non_target_weed_pred_conf", "DOUBLE"),
    ("local_coordinates", "VARCHAR"), ("global_coordinates", "VARCHAR"), ("pixel_area", "DOUBLE"),
    ("bbox_area_cm2", "DOUBLE"), ("estimated_bbox_area_cm2", "DOUBLE"), ("estimated_area_bin", "VARCHAR"),
    ("state", "VARCHAR"), ("category_usda_symbol", "VARCHAR"), ("category_eppo_code", "VARCHAR"),
    ("category_group", "VARCHAR"), ("category_class", "VARCHAR"), ("category_subclass", "VARCHAR"),
    ("category_order", "VARCHAR"), ("category_family", "VARCHAR"), ("category_genus", "VARCHAR"),
    ("category_species", "VARCHAR"), ("category_common_name", "VARCHAR"), ("category_authority", "VARCHAR"),
    ("category_multispecies", "VARCHAR"), ("category_growth_habit", "VARCHAR"), ("category_duration", "VARCHAR"),
    ("category_usda_link", "VARCHAR"), ("category_taxonomic_notes", "VARCHAR"), ("category_hex", "VARCHAR"),
    ("category_rgb", "VARCHAR"), ("category_alias", "VARCHAR"), ("cutout_height", "BIGINT"),
    ("cutout_width", "BIGINT"), ("blur_effect", "DOUBLE"), ("num_components", "BIGINT"),
    ("cropout_rgb_mean", "VARCHAR"), ("cropout_rgb_std", "VARCHAR"), ("extends_border", "BIGINT"),
)
_FIELD_TAXO = ("taxonomic_group", "taxonomic_class", "taxonomic_subclass", "taxonomic_order", "taxonomic_family",
               "taxonomic_genus", "taxonomic_species_name", "taxonomic_authority")
_FIELD_QC = ("mask_status", "mask_reviewer", "initial_mask_issue_tag", "final_mask_issue_tag", "refine_params",
             "processing_note", "tags", "category_note")
_FIELD_WIR = ("wirmaster_ref_id", "wirmastermeta_rowkey", "wircovercropsmeta_rowkey", "wircropsmeta_rowkey",
              "wirimagerefs_rowkey", "wirweedsmeta_rowkey", "link")
FIELD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "BIGINT"), ("alias", "VARCHAR"), ("batch_id", "VARCHAR"), ("image_id", "VARCHAR"),
    ("image_index", "BIGINT"), ("cutout_name", "VARCHAR"), ("camera_datetime", "VARCHAR"),
    ("db_insert_datetime", "VARCHAR"), ("upload_datetime_utc", "VARCHAR"), ("mask_timestamp", "DOUBLE"),
    ("us_state", "VARCHAR"), ("crop_or_fallow", "VARCHAR"), ("crop_type_secondary", "VARCHAR"),
    ("cotton_variety", "VARCHAR"), ("cover_crop_family", "VARCHAR"), ("cloud_cover", "VARCHAR"),
    ("ground_cover", "VARCHAR"), ("ground_residue", "VARCHAR"), ("image_url", "VARCHAR"),
    ("developed_image_path", "VARCHAR"), ("raw_image_path", "VARCHAR"), ("cutout_image_path", "VARCHAR"),
    ("final_mask_path", "VARCHAR"), ("final_cutout_path", "VARCHAR"), ("extension", "VARCHAR"),
    ("exif_meta", "VARCHAR"), ("height", "VARCHAR"), ("size_mib", "DOUBLE"), ("has_matching_jpg_and_raw", "BIGINT"),
    ("is_preprocessed", "BIGINT"), ("class_id", "BIGINT"), ("bbox_xywh", "VARCHAR"), ("det_pred_conf", "DOUBLE"),
    ("app_species", "VARCHAR"), ("has_mat_pred", "DOUBLE"), ("has_mat_pred_conf", "DOUBLE"),
    ("usda_symbol", "VARCHAR"), ("eppo", "VARCHAR"), ("common_name", "VARCHAR"),
    *((c, "VARCHAR") for c in _FIELD_TAXO), ("multi_species_USDA_symbol", "VARCHAR"), ("plant_type", "VARCHAR"),
    ("growth_habit", "VARCHAR"), ("duration", "VARCHAR"), ("growth_stage", "VARCHAR"),
    ("flower_fruit_or_seeds", "BIGINT"), ("stem", "VARCHAR"), ("size_class", "VARCHAR"),
    *((c, "VARCHAR") for c in _FIELD_QC), *((c, "VARCHAR") for c in _FIELD_WIR), ("rgb", "VARCHAR"),
)

STATES = ("NC", "SC", "GA", "VA", "MS")
STATE_WEIGHTS = (22456, 14892, 9234, 4567, 1698)
# (label, first day, last day, weight) from the stats doc; the capture date falls inside its season.
SEASONS = (
    ("Fall 2022", dt.date(2022, 9, 1), dt.date(2022, 11, 30), 8456),
    ("Winter 2022-23", dt.date(2022, 12, 1), dt.date(2023, 2, 28), 12345),
    ("Spring 2023", dt.date(2023, 3, 1), dt.date(2023, 5, 31), 18924),
    ("Summer 2023", dt.date(2023, 6, 1), dt.date(2023, 8, 31), 7289),
    ("Fall 2023", dt.date(2023, 9, 1), dt.date(2023, 11, 30), 4234),
    ("Winter 2023-24", dt.date(2023, 12, 1), dt.date(2024, 2, 29), 1599),
)
VOLUMES = ("longterm_images", "longterm_images2", "GROW_DATA")
# Area bins (cm²). The one label seen in a real query is `500-1000`, so bins use that form.
AREA_BINS = ((0, 100, "0-100"), (100, 500, "100-500"), (500, 1000, "500-1000"), (1000, 5000, "1000-5000"),
             (5000, float("inf"), "5000+"))
# cm² per px² of a 9560-px-wide Sony FE 55mm frame (spec §Paths); a frame W px wide shows the same bench.
K_FULLRES = 1.3289e-4
FULLRES_WIDTH = 9560


def cm2_per_px2(width: int) -> float:
    return K_FULLRES * (FULLRES_WIDTH / float(width)) ** 2


def area_bin(area: np.ndarray) -> np.ndarray:
    out = np.empty(len(area), dtype=object)
    for lo, hi, label in AREA_BINS:
        out[(area >= lo) & (area < hi)] = label
    return out


def _choice(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def images_frame(rng: np.random.Generator, n_images: int, images_per_batch: int = 6) -> dict[str, np.ndarray]:
    """Per-image core values: state, capture time (EXIF + epoch), season, batch id, image id, volume."""
    n_batches = max(1, -(-n_images // images_per_batch))
    b_state = _choice(rng, n_batches, STATE_WEIGHTS)
    b_season = _choice(rng, n_batches, [s[3] for s in SEASONS])
    b_day = np.empty(n_batches, dtype=object)
    for i, s in enumerate(b_season):
        first, last = SEASONS[s][1], SEASONS[s][2]
        b_day[i] = first + dt.timedelta(days=int(rng.integers(0, (last - first).days + 1)))
    batch = np.sort(rng.integers(0, n_batches, size=n_images))
    seconds = rng.integers(8 * 3600, 18 * 3600, size=n_images)  # daylight captures
    states = np.array([STATES[b_state[b]] for b in batch], dtype=object)
    days = b_day[batch]
    stamps = [dt.datetime.combine(d, dt.time()) + dt.timedelta(seconds=int(s)) for d, s in zip(days, seconds)]
    # The id epoch is on the capture day but not equal to `datetime` (spec row 6).
    epoch = np.array([int(t.replace(tzinfo=dt.timezone.utc).timestamp()) + int(o)
                      for t, o in zip(stamps, rng.integers(-600, 600, size=n_images))])
    image_id = np.array([f"{s}_{e}" for s, e in zip(states, epoch)], dtype=object)
    # ids must be unique: bump collisions by a second
    seen: set[str] = set()
    for i, iid in enumerate(image_id):
        while iid in seen:
            epoch[i] += 1
            iid = f"{states[i]}_{epoch[i]}"
        image_id[i] = iid
        seen.add(iid)
    return {
        "state": states,
        "datetime": np.array([t.strftime("%Y:%m:%d %H:%M:%S") for t in stamps], dtype=object),
        "season": np.array([SEASONS[b_season[b]][0] for b in batch], dtype=object),
        "batch_id": np.array([f"{s}_{d.isoformat()}" for s, d in zip(states, days)], dtype=object),
        "image_id": image_id,
        "volume": np.array(VOLUMES, dtype=object)[_choice(rng, n_images, (5, 4, 2))],
    }


def _txt(values: Any) -> pa.Array:
    return pa.array(list(values), type=pa.string())


def semif_table(core: dict[str, np.ndarray], rng: np.random.Generator,
                species: Sequence[Species] = SPECIES) -> pa.Table:
    """Build the 62-column semif table from per-cutout core arrays.

    core keys (one entry per cutout): image index fields (state, datetime, season, batch_id, image_id,
    volume), k (cutout index in its image), species (index into SPECIES), x, y, w, h (bbox, px),
    width, height (frame px), pixel_area, has_masks (0/1), overlaps (text list or None).
    """
    n = len(core["image_id"])
    sp = core["species"].astype(int)
    cat = list(species)
    x, y, w, h = (core[c].astype(np.int64) for c in ("x", "y", "w", "h"))
    width, height = core["width"].astype(np.int64), core["height"].astype(np.int64)
    k_area = np.array([cm2_per_px2(int(v)) for v in width]) if len(set(width.tolist())) > 1 else \
        np.full(n, cm2_per_px2(int(width[0])) if n else 0.0)
    est = np.round(w * h * k_area, 2)
    has_masks = core["has_masks"].astype(np.int64)
    folder = np.array([f"semifield-developed-images/{b}" for b in core["batch_id"]], dtype=object)
    image_path = [f"{f}/images/{i}.jpg" for f, i in zip(folder, core["image_id"])]
    mask_path = [f"{f}/meta_masks/semantic_masks/{i}.png" if m else ("None" if j % 3 == 0 else None)
                 for j, (f, i, m) in enumerate(zip(folder, core["image_id"], has_masks))]
    cutout_id = [f"{i}_{k}" for i, k in zip(core["image_id"], core["k"])]
    blur = np.round(rng.gamma(4.0, 6.5, size=n), 2)
    conf = np.round(np.clip(1 - rng.beta(1.0, 12.0, size=n), 0, 1), 4)
    comps = np.minimum(1 + rng.geometric(0.72, size=n) - 1, 37)
    lens = np.where(rng.random(n) < 0.92, "FE 55mm F1.8 ZA", "FE 35mm F2.8 ZA")
    border = ((x <= 0) | (y <= 0) | (x + w >= width) | (y + h >= height)).astype(np.int64)
    mean_rgb = rng.integers(60, 160, size=(n, 3))
    std_rgb = rng.integers(20, 60, size=(n, 3))

    def per_species(attr: str) -> pa.Array:
        vals = [getattr(s, attr) for s in cat]
        return _txt(vals[i] for i in sp)

    cols: dict[str, Any] = {
        "season": _txt(core["season"]),
        "datetime": _txt(core["datetime"]),
        "bbot_version": _txt(["2.0"] * n),
        "batch_id": _txt(core["batch_id"]),
        "version": pa.nulls(n, pa.float64()),
        "image_id": _txt(core["image_id"]),
        "fullres_height": pa.array(height),
        "fullres_width": pa.array(width),
        "exif_meta": _txt(f'{{"Make": "SONY", "Model": "ILCE-7RM4", "LensModel": "{lm}", "DateTimeOriginal": "{d}"}}'
                          for lm, d in zip(lens, core["datetime"])),
        "camera_info": _txt(["SONY ILCE-7RM4"] * n),
        "lens_model": _txt(lens),
        "ncsu_nfs": _txt(core["volume"]),
        "image_path": _txt(image_path),
        "mask_path": _txt(mask_path),
        "json_path": pa.nulls(n, pa.string()),
        "cutout_ncsu_nfs": _txt(core["volume"]),
        # No cropout/cutout files are generated: consumers crop image_path with bbox_xywh (spec).
        "cropout_path": _txt("None" if j % 2 else None for j in range(n)),
        "cutout_path": pa.nulls(n, pa.string()),
        "cutout_mask_path": pa.nulls(n, pa.string()),
        "cutout_json_path": pa.nulls(n, pa.string()),
        "has_masks": pa.array(has_masks),
        "is_primary": pa.array((rng.random(n) < 0.943).astype(np.int64)),
        "cutout_exists": pa.array(np.zeros(n, dtype=np.int64)),
        "cutout_id": _txt(cutout_id),
        "bbox_xywh": _txt(f"[{a}, {b}, {c}, {d}]" for a, b, c, d in zip(x, y, w, h)),
        "category_class_id": pa.array(np.array([cat[i].class_id for i in sp], dtype=np.int64)),
        "overlapping_cutout_ids": _txt(core["overlaps"]),
        "non_target_weed": pa.array((conf < 0.5).astype(np.int64)),
        "non_target_weed_pred_conf": pa.array(conf),
        "local_coordinates": pa.nulls(n, pa.string()),
        "global_coordinates": pa.nulls(n, pa.string()),
        "pixel_area": pa.array(core["pixel_area"].astype(float)),
        "bbox_area_cm2": pa.array(np.zeros(n)),
        "estimated_bbox_area_cm2": pa.array(est),
        "estimated_area_bin": _txt(area_bin(est)),
        "state": _txt(core["state"]),
        "category_usda_symbol": per_species("usda"),
        "category_eppo_code": per_species("eppo"),
        "category_group": per_species("group"),
        "category_class": per_species("klass"),
        "category_subclass": per_species("subclass"),
        "category_order": per_species("order"),
        "category_family": per_species("family"),
        "category_genus": per_species("genus"),
        "category_species": per_species("species"),
        "category_common_name": per_species("common_name"),
        "category_authority": per_species("authority"),
        "category_multispecies": pa.nulls(n, pa.string()),
        "category_growth_habit": per_species("growth_habit"),
        "category_duration": per_species("duration"),
        "category_usda_link": per_species("usda_link"),
        "category_taxonomic_notes": pa.nulls(n, pa.string()),
        "category_hex": per_species("hex"),
        "category_rgb": per_species("rgb_text"),
        "category_alias": pa.nulls(n, pa.string()),
        "cutout_height": pa.array(h),
        "cutout_width": pa.array(w),
        "blur_effect": pa.array(blur),
        "num_components": pa.array(comps.astype(np.int64)),
        "cropout_rgb_mean": _txt(f"[{a}, {b}, {c}]" for a, b, c in mean_rgb),
        "cropout_rgb_std": _txt(f"[{a}, {b}, {c}]" for a, b, c in std_rgb),
        "extends_border": pa.array(border),
    }
    return pa.table([cols[c] for c, _ in SEMIF_COLUMNS], names=[c for c, _ in SEMIF_COLUMNS])


def synthetic_semif(n_rows: int, seed: int = 0, width: int = FULLRES_WIDTH, height: int = 6368) -> pa.Table:
    """A `semif` table of `n_rows` cutouts with realistic marginals and no image files (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    per_image = np.minimum(1 + rng.poisson(2.0, size=max(1, n_rows)), 9)
    starts = np.concatenate([[0], np.cumsum(per_image)])
    n_images = int(np.searchsorted(starts, n_rows, side="left"))
    n_images = max(n_images, 1)
    img = images_frame(rng, n_images)
    owner = np.repeat(np.arange(n_images), per_image[:n_images])[:n_rows]
    if len(owner) < n_rows:
        owner = np.concatenate([owner, np.full(n_rows - len(owner), n_images - 1)])
    k = np.arange(n_rows) - starts[owner]
    sp = _choice(rng, n_rows, [s.weight for s in SPECIES])
    median = np.array([s.median_cm2 for s in SPECIES])[sp]
    kpx = cm2_per_px2(width)
    area = np.clip(median * np.exp(rng.normal(0, 0.8, size=n_rows)), 0.5, 12450)
    aspect = np.exp(rng.normal(0, 0.3, size=n_rows))
    w = np.clip(np.round(np.sqrt(area / kpx * aspect)), 4, width).astype(np.int64)
    h = np.clip(np.round(area / kpx / w), 4, height).astype(np.int64)
    x = (rng.random(n_rows) * (width - w + 1)).astype(np.int64)
    y = (rng.random(n_rows) * (height - h + 1)).astype(np.int64)
    image_masks = (rng.random(n_images) < 0.916).astype(np.int64)
    core = {key: val[owner] for key, val in img.items()}
    core.update(k=k, species=sp, x=x, y=y, w=w, h=h, width=np.full(n_rows, width), height=np.full(n_rows, height),
                pixel_area=np.round(w * h * rng.uniform(0.35, 0.8, size=n_rows)), has_masks=image_masks[owner],
                overlaps=np.array([None] * n_rows, dtype=object))
    return semif_table(core, rng)


def write_duckdb(path: Path, tables: dict[str, pa.Table]) -> Path:
    """Write tables into a fresh DuckDB file atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, table in tables.items():
            con.register("agir_new", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM agir_new')
            con.unregister("agir_new")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    tmp.replace(path)
    return path
