"""A round's class set: the one artefact (`{run}/classes.json`) every stage of the round reads.

In species mode a round's classes are the ordered union of
  1. the classes of the project's earlier rounds (their indices are kept),
  2. `classes.names` when set (an explicit order for names not seen before),
  3. the classes of the checkpoint the round pre-labels with,
  4. the species of the round's query records (sorted), unless `classes.names` restricts the set.
Old classes keep their indices; new ones are appended. In binary mode the set is `["plant"]`.

A round's set only grows: a new query in the same run folder (several batches in one round, the old tool's
Example 3) adds its species to the round's earlier set (`previous`: its classes.json before, and its
dataset/classes.json, which also covers a round pre-labelling with its own model) instead of replacing it.
When no species is known at all (photos from `seg_inference.source.images` and no species model) the set is
`["plant"]`.

The file:
  {"mode": "species", "classes": [{"index": 1, "name": "barley", "color": "#d66edd"}, ...],
   "new": ["cereal rye"],             # names no earlier round had (every name in a project's first round)
   "earlier": ["barley"],             # the earlier rounds' union, in index order
   "previous": ["barley"],            # this round's own set before this build (earlier batches of the round)
   "from_checkpoint": ["barley"],     # the pre-labelling checkpoint's classes ([] without one)
   "from_records": ["cereal rye"],    # the query records' species
   "checkpoint": "…/best.pth" | null}
`classes` has the same entries as every mask folder's `classes.json` (masks.py), so `class_list(doc)` can be
written next to masks as it is.

The rule `round_classes` (workflow/rules/classes.smk) builds it with `build_round_classes`; consumers declare
it as input `classes` except in rounds built before class sets existed (`built_before_class_sets`), which
keep working as they were instead of rebuilding.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.errors import AgirError
from agir.masks import BINARY_CLASS, check_class_indices, color_for_name, make_classes
from agir.runs import read_json, write_json

ROUND_CLASSES = "classes.json"  # relative to the run folder


def _names(seq: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for n in seq:
        name = str(n).strip().lower()
        if name and name not in out:
            out.append(name)
    return out


def round_class_set(
    cfg: Mapping[str, Any],
    *,
    earlier: Sequence[Sequence[Mapping]] = (),
    checkpoint_classes: Sequence[str] | None = None,
    record_species: Iterable[str] = (),
    colors: Mapping[str, str] | None = None,
    checkpoint: str | None = None,
    previous: Sequence[Mapping] = (),
) -> dict:
    """The class-set document of a round (see the module docstring).

    `earlier`: the `classes` lists of earlier rounds (oldest first); their colours are kept too.
    `previous`: this round's own `classes` list from an earlier build (kept, in its order, after `earlier`).
    `colors`: database colours by species name, for names without an earlier colour.
    """
    ccfg = cfg.get("classes") or {}
    mode = ccfg.get("mode", "species")
    if mode == "binary":
        names = [BINARY_CLASS]
        return {
            "mode": "binary",
            "classes": make_classes(names),
            "new": [] if earlier else names,
            "earlier": [BINARY_CLASS] if earlier else [],
            "previous": [BINARY_CLASS] if previous else [],
            "from_checkpoint": _names(checkpoint_classes or []),
            "from_records": [],
            "checkpoint": checkpoint,
        }
    known_colors: dict[str, str] = {}

    def ordered(lists: Iterable[Sequence[Mapping]]) -> list[str]:
        out: list[str] = []
        for classes in lists:
            for c in sorted(classes, key=lambda c: int(c["index"])):
                name = str(c["name"]).strip().lower()
                if name not in out:
                    out.append(name)
                if c.get("color"):
                    known_colors.setdefault(name, str(c["color"]))
        return out

    earlier_names = ordered(earlier)
    previous_names = ordered([previous] if previous else [])
    ckpt_names = [n for n in _names(checkpoint_classes or []) if n != BINARY_CLASS or mode == "binary"]
    rec_names = sorted(set(_names(record_species)))
    explicit = _names(ccfg.get("names") or [])
    names = list(earlier_names)
    for group in (previous_names, explicit, ckpt_names, [] if explicit else rec_names):
        for n in group:
            if n not in names:
                names.append(n)
    if not names:
        # no species known anywhere (photos without records, a binary or no model): plants are just plants
        names = [BINARY_CLASS]
    if len(names) > 254:
        raise AgirError(f"{len(names)} classes: a mask holds at most 254 (indices 1..254); narrow the query or set classes.names")
    palette = {**{k: v for k, v in (colors or {}).items()}, **known_colors}
    return {
        "mode": "species",
        "classes": make_classes(names, {n: palette.get(n) or color_for_name(n) for n in names}),
        "new": [n for n in names if n not in earlier_names],
        "earlier": earlier_names,
        "previous": previous_names,
        "from_checkpoint": ckpt_names,
        "from_records": rec_names,
        "checkpoint": checkpoint,
    }


def write_round_classes(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    return write_json(Path(path), dict(doc))


def read_round_classes(path: str | os.PathLike) -> dict:
    """The class-set document at `path` (a run folder or its classes.json), checked."""
    p = Path(path)
    if p.is_dir():
        p = p / ROUND_CLASSES
    if not p.exists():
        raise AgirError(f"{p}: the round's class set is missing; build it with `snakemake {p}` or rerun the round's stage")
    doc = read_json(p)
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
        raise AgirError(f"{p}: not a round class set (expected an object with a 'classes' list); delete it and rerun")
    check_class_indices(doc["classes"], p)
    return doc


def class_list(doc: Mapping[str, Any]) -> list[dict]:
    """The `[{"index", "name", "color"}]` entries (the format of a mask folder's classes.json)."""
    return [{"index": int(c["index"]), "name": str(c["name"]), "color": str(c["color"])} for c in doc["classes"]]


def class_names(doc: Mapping[str, Any]) -> list[str]:
    return [c["name"] for c in sorted(doc["classes"], key=lambda c: int(c["index"]))]


# ---------------------------------------------------------------- building a round's set (rule round_classes)

# The outputs of the stages that read the round's set: a round that has one of them but no classes.json was
# built before class sets existed.
CONSUMER_OUTPUTS = ("infer/manifest.jsonl", "cvat/upload.json", "cvat/download.json", "dataset/index.csv",
                    "model/best.pth")
# Where a round built before class sets keeps its classes (dataset first: what its model was trained on).
LEGACY_CLASS_FILES = ("dataset/classes.json", "infer/masks/classes.json")


def built_before_class_sets(run: str | os.PathLike) -> bool:
    """True for a run folder with stage outputs but no classes.json (built before class sets existed).

    Its stages do not declare the set as an input (that would rebuild the whole round, CVAT upload
    included); they keep their own class lists. `snakemake {run}/classes.json` moves it onto a set.
    """
    run = Path(run)
    if (run / ROUND_CLASSES).exists():
        return False
    return any((run / rel).exists() for rel in CONSUMER_OUTPUTS) or any(run.glob("infer/shards/*/manifest.jsonl"))


def class_set_sources(round_dirs: Iterable[str | os.PathLike]) -> list[str]:
    """Per earlier round (oldest first): its classes.json, or for a round built before class sets the
    class lists it has (dataset/classes.json, infer/masks/classes.json). Only existing files."""
    out: list[str] = []
    for d in round_dirs:
        d = Path(d)
        if (d / ROUND_CLASSES).is_file():
            out.append(str(d / ROUND_CLASSES))
            continue
        out.extend(str(d / rel) for rel in LEGACY_CLASS_FILES if (d / rel).is_file())
    return out


def read_class_entries(path: str | os.PathLike) -> list[dict]:
    """The class entries of a round's classes.json or of a mask folder's classes.json (a plain list)."""
    p = Path(path)
    doc = read_json(p)
    if isinstance(doc, dict):
        return class_list(read_round_classes(p))
    if not isinstance(doc, list) or not all(isinstance(c, Mapping) and "index" in c and "name" in c for c in doc):
        raise AgirError(f"{p}: not a class list (expected [{{\"index\", \"name\", \"color\"}}, ...]); fix or delete it")
    return [{"index": int(c["index"]), "name": str(c["name"]), "color": str(c.get("color") or color_for_name(str(c["name"])))}
            for c in doc]


def _merged(files: Iterable[str | os.PathLike]) -> list[dict]:
    """One class list from several files (first occurrence of a name wins, re-indexed 1..K in that order)."""
    seen: dict[str, dict] = {}
    for f in files:
        for c in sorted(read_class_entries(f), key=lambda c: c["index"]):
            seen.setdefault(c["name"].strip().lower(), c)
    return [{**c, "index": i} for i, c in enumerate(seen.values(), start=1)]


def earlier_class_lists(round_dirs: Iterable[str | os.PathLike]) -> list[list[dict]]:
    """The class list of each earlier round (oldest first) that has one (see `class_set_sources`).

    The rule passes these as params, read when the workflow's DAG is built: a changed earlier set rebuilds this
    round's, while an earlier round is never a job of this round's DAG (its settings may differ now).
    """
    out = []
    for d in round_dirs:
        files = class_set_sources([d])
        if files:
            out.append(_merged(files))
    return out


def class_set_config(cfg: Mapping[str, Any]) -> dict:
    """The settings a round's set depends on (the rule's params: a change rebuilds the set). Only `classes`: the
    checkpoint comes in as an input, and an earlier round evaluated in a later round's DAG (for its model) must
    not look changed because the config file now names another checkpoint."""
    return {
        "project": {k: cfg["project"][k] for k in ("name", "subname")},
        "io": {"out_root": cfg["io"]["out_root"]},
        "classes": dict(cfg.get("classes") or {}),
    }


def checkpoint_class_names(path: str | os.PathLike, cfg: Mapping[str, Any],
                           records: Sequence[Mapping] | None = None) -> list[str]:
    """The classes a checkpoint names. An old-tool model without class names of its own ([]): inference names
    its classes from classes.names or the records, which are in the set anyway."""
    from agir.checkpoint import load_checkpoint  # torch: only when a model is involved

    try:
        return [str(n) for n in load_checkpoint(path)["classes"]]
    except AgirError as exc:
        if "seg_inference.model.arch" in str(exc) or "classes.names" in str(exc):
            return []
        raise


def build_round_classes(
    cfg: Mapping[str, Any],
    run: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    query: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
    prelabeler: str | os.PathLike | None = None,
    earlier: Sequence[Sequence[Mapping]] = (),
) -> dict:
    """Write the round's class set to `out` (default `{run}/classes.json`) and return it.

    `query`: the round's query.json (None for `seg_inference.source.images` rounds and binary mode); `ckpt` /
    `prelabeler`: the rule's checkpoint input (a round pre-labelling with its own model has none: that model's
    classes are the round's own dataset classes, read below); `earlier`: earlier rounds' class lists
    (`earlier_class_lists`), oldest first. The round's existing set and its dataset's classes are kept (same
    mode only): the set grows.
    """
    from agir import records as recs
    from agir.logs import get_logger

    log = get_logger("classes")
    run = Path(run)
    out = Path(out) if out else run / ROUND_CLASSES
    records = None
    if query:
        records = read_json(query)
        if not isinstance(records, list):
            raise AgirError(f"{query}: expected a JSON list of records; rerun the query stage")
    mode = (cfg.get("classes") or {}).get("mode", "species")
    own: list[str] = []
    if out.is_file():
        try:
            if read_round_classes(out).get("mode", "species") == mode:
                own.append(str(out))
        except (AgirError, ValueError) as exc:
            log.warning("classes: %s is unreadable (%s); building the round's set afresh", out, exc)
    if mode != "binary" and (run / LEGACY_CLASS_FILES[0]).is_file():
        own.append(str(run / LEGACY_CLASS_FILES[0]))  # names this round's annotations added (its model has them)
    previous = _merged(own)
    path = None
    if ckpt:
        path = str(ckpt)
    elif prelabeler:
        chosen = read_json(prelabeler).get("chosen")
        path = None if chosen in (None, "baseline") else str(chosen)
    ckpt_names = checkpoint_class_names(path, cfg, records) if path else []
    species = [recs.class_for_record(r, cfg) for r in records] if records else []
    colors = recs.class_colors_for(records) if records else {}
    doc = round_class_set(cfg, earlier=[list(e) for e in earlier], checkpoint_classes=ckpt_names,
                          record_species=species, colors=colors, checkpoint=path, previous=previous)
    write_round_classes(out, doc)
    listing = ", ".join(f"{c['index']} {c['name']}" for c in doc["classes"])
    log.info("classes: round %s has %d class(es) [%s]; new this round: %s", run.name, len(doc["classes"]), listing,
             ", ".join(doc["new"]) or "none")
    return doc
