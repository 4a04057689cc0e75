"""Class remapping by name: every source folder's local indices -> the one dataset class list.

Names are compared lower-cased and stripped (DESIGN.md §4 names are lower-case; users type
`classes.names` by hand). Values and names that the dataset cannot place become ignore (255) and
are counted, so nothing is silently relabelled as background or plant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from agir.errors import AgirError
from agir.masks import BACKGROUND, BINARY_CLASS, IGNORE, color_for_name, make_classes, remap_lut
from agir.records import class_names_for


def norm_name(name: str) -> str:
    return str(name).strip().lower()


def dataset_class_names(found_names: Iterable[str], cfg: Mapping) -> list[str]:
    """Foreground names 1..K under classes.mode / classes.names (the same rule inference uses)."""
    # class_names_for reads species names from records; wrap the names so the rule stays in one place.
    return class_names_for([{"category_common_name": norm_name(n)} for n in found_names], cfg)


def dataset_classes(names: Sequence[str], colors: Mapping[str, str]) -> list[dict]:
    colors = {norm_name(k): v for k, v in colors.items()}
    return make_classes(names, colors)


def names_with_round_set(round_set: Sequence[Mapping], found_names: Iterable[str], colors: Mapping[str, str | None],
                         cfg: Mapping) -> tuple[list[dict], list[str]]:
    """(dataset classes, appended names): the round's class set in its order and indices, plus every found
    name it lacks appended (sorted), unless classes.names restricts the set (then those become ignore).

    Binary mode: the set as it is (every name maps to `plant`).
    """
    classes = [{"index": int(c["index"]), "name": norm_name(c["name"]), "color": c.get("color")} for c in round_set]
    classes.sort(key=lambda c: c["index"])
    ccfg = cfg.get("classes") or {}
    if ccfg.get("mode", "species") == "binary" or ccfg.get("names"):
        appended: list[str] = []
    else:
        have = {c["name"] for c in classes}
        appended = sorted({norm_name(n) for n in found_names} - have)
    top = max((c["index"] for c in classes), default=0)
    if top + len(appended) > 254:
        raise AgirError(f"{top + len(appended)} classes: a mask holds at most 254; set classes.names to narrow them")
    extra = dataset_classes(appended, {norm_name(k): v for k, v in colors.items() if v})
    classes += [{**c, "index": top + i} for i, c in enumerate(extra, start=1)]
    for c in classes:
        c["color"] = c["color"] or colors.get(c["name"]) or color_for_name(c["name"])
    return classes, appended


def target_index_by_name(classes: Sequence[Mapping], source_names: Iterable[str], mode: str) -> dict[str, int]:
    """name -> dataset index. Binary mode maps every source name to the single plant class."""
    if mode == "binary":
        plant = next(int(c["index"]) for c in classes if c["name"] == BINARY_CLASS)
        out = {norm_name(n): plant for n in source_names}
        out[BINARY_CLASS] = plant
        return out
    return {norm_name(c["name"]): int(c["index"]) for c in classes}


def remap_mask(
    mask: np.ndarray, src_classes: Sequence[Mapping], dst_index_by_name: Mapping[str, int]
) -> tuple[np.ndarray, dict[int, int], dict[str, int]]:
    """Remap a class-index mask; return (mask, unknown value -> pixels, unplaced name -> pixels).

    Unknown values are mask values that `src_classes` does not name (besides 0 and 255);
    unplaced names are named source classes the dataset has no class for (e.g. outside
    `classes.names`). Both become ignore.
    """
    src = [{"index": int(c["index"]), "name": norm_name(c["name"])} for c in src_classes]
    lut = remap_lut(src, dst_index_by_name, unknown=IGNORE)
    present = np.bincount(mask.ravel(), minlength=256)
    by_index = {c["index"]: c["name"] for c in src}
    unknown_values: dict[int, int] = {}
    unplaced: dict[str, int] = {}
    for value in np.flatnonzero(present):
        value = int(value)
        if value in (BACKGROUND, IGNORE):
            continue
        if value not in by_index:
            unknown_values[value] = int(present[value])
        elif by_index[value] not in dst_index_by_name:
            unplaced[by_index[value]] = unplaced.get(by_index[value], 0) + int(present[value])
    return lut[mask], unknown_values, unplaced
