"""Query records: the hand-off between the query stage and everything after it.

A record is one row of `query/query.json` (a SemiF cutout or a Field image). These helpers
resolve its files through `io.roots` and read the few fields later stages need, with one clear
error when a record lacks them.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.errors import AgirError
from agir.masks import BINARY_CLASS, color_for_name, rgb_to_hex
from agir.runs import read_json

MISSING_STRINGS = {"", "none", "null", "nan"}
# Columns tried in order for each role; SemiF first, then Field.
ID_COLUMNS = ("cutout_id", "id")
SPECIES_COLUMNS = ("category_common_name", "common_name")


def is_missing(value: Any) -> bool:
    """NULL, NaN and the literal strings 'None'/'null'/'' that real path columns contain."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_STRINGS


def load_query_records(run: str | os.PathLike) -> list[dict]:
    path = Path(run) / "query" / "query.json"
    if not path.exists():
        raise AgirError(f"{path} not found; run the query stage first (agir-cvtoolkit query)")
    records = read_json(path)
    if not isinstance(records, list):
        raise AgirError(f"{path}: expected a JSON list of records")
    return records


def _db_entry(cfg: Mapping) -> Mapping:
    name = (cfg.get("query") or {}).get("db", "semif")
    return (cfg.get("db") or {}).get(name) or {}


def record_id(rec: Mapping, cfg: Mapping | None = None) -> str:
    cols = ((_db_entry(cfg).get("id_column"),) if cfg else ()) + ID_COLUMNS
    for col in cols:
        if col and not is_missing(rec.get(col)):
            return str(rec[col])
    raise AgirError(f"record {dict(list(rec.items())[:3])}: no id column ({', '.join(c for c in cols if c)}); keep it in query.projection")


def _rel(path: str) -> str:
    return path.lstrip("/\\")


def _root(cfg: Mapping, volume: Any, rec: Mapping) -> Path:
    roots = (cfg.get("io") or {}).get("roots") or {}
    if is_missing(volume):
        raise AgirError(f"record {record_id(rec, cfg)}: storage volume column is empty; cannot resolve its files")
    if str(volume) not in roots:
        raise AgirError(
            f"record {record_id(rec, cfg)}: storage volume {volume!r} has no folder in io.roots; add io.roots.{volume}=/path"
        )
    return Path(roots[str(volume)])


def is_field_record(rec: Mapping) -> bool:
    return "ncsu_nfs" not in rec and any(k in rec for k in ("developed_image_path", "raw_image_path"))


def image_path(rec: Mapping, cfg: Mapping) -> Path:
    """Full-resolution image of a record."""
    if is_field_record(rec):
        base = (cfg.get("io") or {}).get("field_storage_dir")
        for col in ("developed_image_path", "raw_image_path", "cutout_image_path", "final_cutout_path"):
            if not is_missing(rec.get(col)):
                if not base:
                    raise AgirError("io.field_storage_dir is not set; Field image paths are relative to it")
                return Path(base) / _rel(str(rec[col]))
        raise AgirError(f"record {record_id(rec, cfg)}: no image path column is filled")
    if is_missing(rec.get("image_path")):
        raise AgirError(f"record {record_id(rec, cfg)}: image_path is empty (keep image_path and ncsu_nfs in query.projection)")
    return _root(cfg, rec.get("ncsu_nfs"), rec) / _rel(str(rec["image_path"]))


def mask_path(rec: Mapping, cfg: Mapping) -> Path | None:
    """The repository's full-image semantic mask, or None when the record has none."""
    if is_field_record(rec):
        val = rec.get("final_mask_path")
        base = (cfg.get("io") or {}).get("field_storage_dir")
        return None if is_missing(val) or not base else Path(base) / _rel(str(val))
    val = rec.get("mask_path")
    if is_missing(val):
        return None
    return _root(cfg, rec.get("ncsu_nfs"), rec) / _rel(str(val))


def parse_list(value: Any) -> list | None:
    """'[1, 2, 3]' (list stored as text) -> [1, 2, 3]."""
    if is_missing(value):
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    try:
        out = json.loads(text)
    except json.JSONDecodeError:
        try:
            out = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out = [p for p in text.strip("[]()").replace(",", " ").split()]
    return list(out) if isinstance(out, (list, tuple)) else None


def bbox_xywh(rec: Mapping) -> tuple[int, int, int, int] | None:
    vals = parse_list(rec.get("bbox_xywh"))
    if not vals or len(vals) != 4:
        return None
    try:
        x, y, w, h = (int(round(float(v))) for v in vals)
    except (TypeError, ValueError):
        return None
    return (x, y, w, h) if w > 0 and h > 0 else None


def image_id(rec: Mapping, cfg: Mapping | None = None) -> str:
    val = rec.get("image_id")
    return record_id(rec, cfg) if is_missing(val) else str(val)


def species_name(rec: Mapping) -> str:
    for col in SPECIES_COLUMNS:
        if not is_missing(rec.get(col)):
            return str(rec[col]).strip().lower()
    return "unknown"


def species_color(rec: Mapping) -> str:
    hexval = rec.get("category_hex")
    if not is_missing(hexval) and str(hexval).startswith("#") and len(str(hexval)) == 7:
        return str(hexval).lower()
    for col in ("category_rgb", "rgb"):
        vals = parse_list(rec.get(col))
        if vals and len(vals) >= 3:
            try:
                return rgb_to_hex([float(v) for v in vals[:3]])
            except (TypeError, ValueError):
                pass
    return color_for_name(species_name(rec))


def class_names_for(records: Iterable[Mapping], cfg: Mapping) -> list[str]:
    """Foreground class names (index 1..K) for these records under classes.mode / classes.names."""
    classes = cfg.get("classes") or {}
    if classes.get("mode", "species") == "binary":
        return [BINARY_CLASS]
    if classes.get("names"):
        return [str(n).lower() for n in classes["names"]]
    return sorted({species_name(r) for r in records})


def class_colors_for(records: Iterable[Mapping]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in records:
        out.setdefault(species_name(r), species_color(r))
    return out


def class_for_record(rec: Mapping, cfg: Mapping) -> str:
    classes = cfg.get("classes") or {}
    return BINARY_CLASS if classes.get("mode", "species") == "binary" else species_name(rec)


def group_by_image(records: Sequence[Mapping], cfg: Mapping | None = None) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = {}
    for r in records:
        out.setdefault(image_id(r, cfg), []).append(r)
    return out
