"""Where labelled samples come from: the database's own masks or refined CVAT rounds.

Gathering only looks at metadata and file names; pixels are read later, in worker processes,
through `read_source_mask`. A source that cannot become a sample is returned as a reject with
its reason, and the rest go on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from agir.errors import AgirError
from agir.images import read_image
from agir.logs import get_logger
from agir.masks import color_mask_to_index, read_classes, read_mask
from agir.records import (
    image_id,
    image_path,
    load_query_records,
    mask_path,
    record_id,
    species_color,
    species_name,
)
from agir.runs import read_json, read_jsonl

log = get_logger("agir.data.sources")

DB_ROUND = "db"  # `round` of samples labelled by the database's masks
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Colour-painted DB masks: channel distance to a class colour (and darkness of background) tolerated,
# wide enough for JPEG-compressed masks such as the repository's palmer amaranth example.
COLOUR_TOLERANCE = 48


@dataclass
class LabelledSample:
    record_id: str  # unit of "newest round wins"; names the dataset files
    image_id: str  # source photograph: the split group
    image: str
    mask: str
    classes: list[dict]  # what each mask value means: [{"index", "name", "color"}]
    round: str
    source: str  # db_masks | cvat
    colour_masks: bool = False  # DB masks may be painted in species colours instead of class ids
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"record_id": self.record_id, "image_id": self.image_id, "round": self.round, "image": self.image, "mask": self.mask}


def reject(sample_or_ids: LabelledSample | Mapping, reason: str) -> dict:
    base = sample_or_ids.describe() if isinstance(sample_or_ids, LabelledSample) else dict(sample_or_ids)
    return {**base, "reason": reason}


def _class_id(rec: Mapping) -> int | None:
    try:
        value = int(float(rec.get("category_class_id")))
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 254 else None


# ---------------------------------------------------------------- database masks


def _active_selection(rnd: Path) -> dict | None:
    """A round's select/selection.json when it narrowed the pool (strategy other than all), else None."""
    path = rnd / "select" / "selection.json"
    if not path.is_file():
        return None
    sel = read_json(path)
    if not isinstance(sel, Mapping) or sel.get("strategy", "all") == "all":
        return None
    return dict(sel)


def _selected_images(rnd: Path, sel: Mapping, records: list[dict], cfg: Mapping) -> set[str]:
    """Image ids a selection chose: its selected_images, else its item ids mapped through the manifests."""
    if sel.get("selected_images") is not None:
        return {str(i) for i in sel["selected_images"]}
    ids = {str(i) for i in sel.get("selected") or []}
    out: set[str] = set()
    for rel in ("infer/manifest.jsonl", "select/pool/manifest.jsonl"):
        for line in read_jsonl(rnd / rel, missing_ok=True):
            if str(line.get("id")) in ids and line.get("image_id") is not None:
                out.add(str(line["image_id"]))
    # items named by record id (cutout mode) or image id without a manifest line
    for rec in records:
        if record_id(rec, cfg) in ids or image_id(rec, cfg) in ids:
            out.add(image_id(rec, cfg))
    return out


def db_mask_records(cfg: Mapping, run: Path) -> list[dict]:
    """The query records whose database masks label this round's dataset.

    Without an active selection (select.strategy other than all) in any round up to this one: this round's
    query, unchanged. With one: the union over the rounds (preprocess.rounds, else every round of the
    project up to this one that has query/query.json) of each round's selected images (all records of a
    selected image, so its mask's classes are complete), or its whole query where it selected nothing
    (strategy all = every candidate). Records of the same id: the newest round's wins.
    """
    run = Path(run)
    project = run.parent
    listed = (cfg.get("preprocess") or {}).get("rounds")
    if listed:
        rounds = [project / str(r) for r in sorted(set(map(str, listed)))]
    else:
        rounds = sorted(p for p in project.iterdir() if p.is_dir() and p.name <= run.name) if project.is_dir() else []
    if run not in rounds:
        rounds.append(run)
    active = {r: _active_selection(r) for r in rounds}
    if not any(active.values()):
        return load_query_records(run)
    chosen: dict[str, dict] = {}
    for rnd in rounds:
        if not (rnd / "query" / "query.json").is_file():
            if rnd == run or active[rnd]:
                load_query_records(rnd)  # raises the usual "run the query stage first"
            continue
        records = load_query_records(rnd)
        sel = active[rnd]
        if sel is not None:
            images = _selected_images(rnd, sel, records, cfg)
            kept = [r for r in records if image_id(r, cfg) in images]
            found = {image_id(r, cfg) for r in kept}
            if images - found:
                log.warning("round %s: %d selected image(s) not in its query.json: %s", rnd.name,
                            len(images - found), ", ".join(sorted(images - found)[:5]))
            records = kept
        for rec in records:
            chosen[record_id(rec, cfg)] = rec
        log.info("db_masks: round %s contributes %d record(s)%s", rnd.name, len(records),
                 f" of its {sel['strategy']} selection" if sel else " (its whole query)")
    return [chosen[k] for k in sorted(chosen)]


def db_mask_samples(cfg: Mapping, run: Path) -> tuple[list[LabelledSample], list[dict]]:
    """One sample per image_id of the records (see `db_mask_records`): the full image and its semantic mask."""
    records = db_mask_records(cfg, run)
    by_image: dict[str, list[Mapping]] = {}
    for rec in records:
        by_image.setdefault(image_id(rec, cfg), []).append(rec)

    # Class ids seen anywhere in the query explain values of an image whose own records miss one
    # (a plant without a cutout row still carries its species id in the semantic mask).
    query_ids: dict[int, tuple[str, str]] = {}
    for rec in records:
        cid = _class_id(rec)
        if cid is not None:
            query_ids.setdefault(cid, (species_name(rec), species_color(rec)))

    samples, rejects = [], []
    for img_id in sorted(by_image):
        recs = sorted(by_image[img_id], key=lambda r: record_id(r, cfg))
        ids = {"record_id": img_id, "image_id": img_id, "round": DB_ROUND, "image": "", "mask": ""}
        try:
            img = image_path(recs[0], cfg)
            masks = [m for m in (mask_path(r, cfg) for r in recs) if m is not None]
        except AgirError as exc:
            rejects.append(reject(ids, str(exc)))
            continue
        ids["image"] = str(img)
        if not masks:
            rejects.append(reject(ids, "no mask_path in the database record(s) of this image"))
            continue
        ids["mask"] = str(masks[0])
        local: dict[int, tuple[str, str]] = {}
        notes = []
        for rec in recs:
            cid = _class_id(rec)
            if cid is None:
                continue
            name = species_name(rec)
            if cid in local and local[cid][0] != name:
                notes.append(f"class id {cid} is both {local[cid][0]!r} and {name!r} in this image; kept the first")
                continue
            local.setdefault(cid, (name, species_color(rec)))
        for cid, val in query_ids.items():
            local.setdefault(cid, val)
        classes = [{"index": cid, "name": n, "color": c} for cid, (n, c) in sorted(local.items())]
        samples.append(
            LabelledSample(img_id, img_id, str(img), str(masks[0]), classes, DB_ROUND, "db_masks", True, notes)
        )
    return samples, rejects


# ---------------------------------------------------------------- CVAT rounds


def discover_rounds(cfg: Mapping, run: Path) -> list[str]:
    """Rounds to combine: preprocess.rounds, else every sibling round <= this one with cvat/download.json."""
    project = Path(run).parent
    listed = (cfg.get("preprocess") or {}).get("rounds")
    if listed:
        missing = [r for r in listed if not (project / r / "cvat" / "download.json").exists()]
        if missing:
            raise AgirError(
                f"preprocess.rounds: {', '.join(missing)} under {project} have no cvat/download.json; "
                "run download-cvat for them or remove them from the list"
            )
        return sorted(set(map(str, listed)))
    current = Path(run).name
    found = sorted(
        p.name for p in project.iterdir() if p.is_dir() and p.name <= current and (p / "cvat" / "download.json").exists()
    ) if project.is_dir() else []
    if not found:
        raise AgirError(
            f"{project}: no round up to {current} has cvat/download.json; run download-cvat first, "
            "or set preprocess.label_source=db_masks to train on the database's masks"
        )
    return found


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.exists():
            return p
    return None


def cvat_round_samples(cfg: Mapping, run: Path) -> tuple[list[LabelledSample], list[dict], list[dict], list[str]]:
    """Refined masks of every round; when rounds label the same record the newest (last by name) wins.

    Returns (samples, rejects, replacements, rounds).
    """
    rounds = discover_rounds(cfg, run)
    project = Path(run).parent
    chosen: dict[str, LabelledSample] = {}
    replaced: list[dict] = []
    rejects: list[dict] = []
    for rnd in rounds:  # sorted oldest -> newest, so a later round overwrites
        ann = project / rnd / "cvat" / "annotations"
        mask_dir, image_dir = ann / "masks", ann / "images"
        if not mask_dir.is_dir():
            log.warning("round %s: %s missing; it contributes no samples", rnd, mask_dir)
            continue
        classes = read_classes(mask_dir)
        image_ids = {
            str(line["id"]): str(line.get("image_id") or line["id"])
            for line in read_jsonl(project / rnd / "infer" / "manifest.jsonl", missing_ok=True)
            if "id" in line
        }
        for mask_file in sorted(mask_dir.glob("*.png")):
            rid = mask_file.stem
            img = _find_image(image_dir, rid)
            sample = LabelledSample(
                rid, image_ids.get(rid, rid), str(img or image_dir / f"{rid}.jpg"), str(mask_file), classes, rnd, "cvat"
            )
            if rid in chosen:
                old = chosen[rid].round
                log.info("record %s: round %s replaces its label from round %s (newest wins)", rid, rnd, old)
                replaced.append({"record_id": rid, "round": rnd, "replaced_round": old})
            rejects = [r for r in rejects if r["record_id"] != rid]  # an older round's problem no longer counts
            if img is None:
                chosen.pop(rid, None)
                rejects.append(reject(sample, f"image {image_dir}/{rid}.jpg missing for this mask"))
                continue
            chosen[rid] = sample
    return [chosen[k] for k in sorted(chosen)], rejects, replaced, rounds


# ---------------------------------------------------------------- pixels


def read_source_mask(sample: LabelledSample) -> tuple[np.ndarray, int]:
    """The mask in the sample's own index space, plus how many painted pixels matched no class colour."""
    path = sample.mask
    if not os.path.exists(path):
        raise AgirError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            mode = im.mode
    except OSError as exc:
        raise AgirError(f"{path}: unreadable mask ({exc})") from exc
    if mode in ("P", "L", "I", "I;16") or not sample.colour_masks:
        return read_mask(path), 0
    # Colour-painted semantic mask (black background, plants in their species colour).
    rgb = read_image(path)
    index = color_mask_to_index(rgb, sample.classes, tolerance=COLOUR_TOLERANCE)
    return index, int(np.count_nonzero(index == 255))
