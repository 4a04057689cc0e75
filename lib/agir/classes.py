"""A round's class set: the one artefact (`{run}/classes.json`) every stage of the round reads.

In species mode a round's classes are the ordered union of
  1. the classes of the project's earlier rounds (their indices are kept),
  2. `classes.names` when set (an explicit order for names not seen before),
  3. the classes of the checkpoint the round pre-labels with,
  4. the species of the round's query records (sorted), unless `classes.names` restricts the set.
Old classes keep their indices; new ones are appended. In binary mode the set is `["plant"]`.

The file:
  {"mode": "species", "classes": [{"index": 1, "name": "barley", "color": "#d66edd"}, ...],
   "new": ["cereal rye"],             # names no earlier round had (every name in a project's first round)
   "earlier": ["barley"],             # the earlier rounds' union, in index order
   "from_checkpoint": ["barley"],     # the pre-labelling checkpoint's classes ([] without one)
   "from_records": ["cereal rye"],    # the query records' species
   "checkpoint": "…/best.pth" | null}
`classes` has the same entries as every mask folder's `classes.json` (masks.py), so `class_list(doc)` can be
written next to masks as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.errors import AgirError
from agir.masks import BINARY_CLASS, color_for_name, make_classes
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
) -> dict:
    """The class-set document of a round (see the module docstring).

    `earlier`: the `classes` lists of earlier rounds (oldest first); their colours are kept too.
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
            "from_checkpoint": _names(checkpoint_classes or []),
            "from_records": [],
            "checkpoint": checkpoint,
        }
    known_colors: dict[str, str] = {}
    earlier_names: list[str] = []
    for classes in earlier:
        for c in sorted(classes, key=lambda c: int(c["index"])):
            name = str(c["name"]).strip().lower()
            if name not in earlier_names:
                earlier_names.append(name)
            if c.get("color"):
                known_colors.setdefault(name, str(c["color"]))
    ckpt_names = [n for n in _names(checkpoint_classes or []) if n != BINARY_CLASS or mode == "binary"]
    rec_names = sorted(set(_names(record_species)))
    explicit = _names(ccfg.get("names") or [])
    names = list(earlier_names)
    for group in (explicit, ckpt_names, [] if explicit else rec_names):
        for n in group:
            if n not in names:
                names.append(n)
    if len(names) > 254:
        raise AgirError(f"{len(names)} classes: a mask holds at most 254 (indices 1..254); narrow the query or set classes.names")
    palette = {**{k: v for k, v in (colors or {}).items()}, **known_colors}
    return {
        "mode": "species",
        "classes": make_classes(names, {n: palette.get(n) or color_for_name(n) for n in names}),
        "new": [n for n in names if n not in earlier_names],
        "earlier": earlier_names,
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
    seen: set[int] = set()
    for c in doc["classes"]:
        idx = int(c["index"])
        if not (1 <= idx <= 254) or idx in seen:
            raise AgirError(f"{p}: class index {idx} invalid or repeated (use 1..254, unique)")
        seen.add(idx)
    return doc


def class_list(doc: Mapping[str, Any]) -> list[dict]:
    """The `[{"index", "name", "color"}]` entries (the format of a mask folder's classes.json)."""
    return [{"index": int(c["index"]), "name": str(c["name"]), "color": str(c["color"])} for c in doc["classes"]]


def class_names(doc: Mapping[str, Any]) -> list[str]:
    return [c["name"] for c in sorted(doc["classes"], key=lambda c: int(c["index"]))]
