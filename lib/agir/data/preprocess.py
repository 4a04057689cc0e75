"""The preprocess stage: labelled images -> `dataset/` (DESIGN.md §3) for training.

Two passes over the sources, both in a process pool with a progress bar:
1. analyse: read each mask, check it against its image, remap its classes by name and count
   class pixels (the dominant class stratifies the split);
2. cut: tile (or resize) image and mask, drop near-empty tiles except a seeded fraction, write
   `{split}/images|masks`, and summarise pixels for `stats.json`.
Rejected sources are listed in `metrics.json` with a reason; the rest finish. Every finished
source is journalled in `dataset/.journal.jsonl` under a fingerprint of its files and the
settings, so a rerun (or a resume after a crash) only redoes what changed, and a rerun with
nothing changed returns at once. `index.csv` is written last: it is the rule's declared output.

Classes: with the round's class set (`classes`, `{run}/classes.json`) `dataset/classes.json` is that set in
its order with its indices, and every source mask is remapped into it by name; a species found in the
annotations but missing from the set is appended (WARNING naming it), never dropped or relabelled. With an
explicit `classes.names` (the user restricted the classes) such names become ignore (255) as before.
Without a set (rounds built before class sets) the classes are the found names under classes.mode/names.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.classes import class_list, read_round_classes
from agir.data.geometry import Geometry, cut, geometry_from_config
from agir.data.remap import (
    dataset_class_names,
    dataset_classes,
    names_with_round_set,
    norm_name,
    remap_mask,
    target_index_by_name,
)
from agir.data.sources import (
    DB_ROUND,
    LabelledSample,
    cvat_round_samples,
    db_mask_samples,
    read_source_mask,
    reject,
)
from agir.data.splits import SPLITS, assign_splits, check_split_ratios, unit_hash
from agir.data.stats import class_pixel_counts, dataset_stats, merge_moments, pixel_moments
from agir.errors import AgirError, ConfigError
from agir.images import image_size, read_image, write_image
from agir.logs import get_logger
from agir.masks import write_classes, write_mask
from agir.names import file_stem
from agir.runs import append_jsonl, dumps_json, read_json, read_jsonl, write_json, write_jsonl, write_text

log = get_logger("agir.data.preprocess")

FORMAT_VERSION = 2  # bump when the output of a source changes for the same settings
JOURNAL = ".journal.jsonl"


# ---------------------------------------------------------------- helpers


def _digest(obj: Any) -> str:
    return hashlib.sha256(dumps_json(obj, indent=None).encode()).hexdigest()


def _file_stamp(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def _pool_map(fn: Callable[[dict], dict], jobs: Sequence[dict], workers: int, desc: str) -> Iterator[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="image", dynamic_ncols=True)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(job)
                bar.update()
            return
        # fork, not spawn: spawn re-runs the caller's main script (Snakemake rule scripts are not
        # guarded by `if __name__ == "__main__"`).
        ctx = mp.get_context("fork")
        # No cv2.setNumThreads in the children: reconfiguring OpenCV's thread pool inherited
        # through fork deadlocks once the parent has used it.
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for res in pool.imap_unordered(fn, jobs):
                yield res
                bar.update()
    finally:
        bar.close()


def _run_guarded(fn: Callable[[dict], dict], job: dict) -> dict:
    """Turn a per-source failure into a reason, so one bad file never stops the stage."""
    try:
        return {"key": job["key"], **fn(job)}
    except AgirError as exc:
        return {"key": job["key"], "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - unexpected decoder errors etc. are per-file problems too
        return {"key": job["key"], "error": f"{type(exc).__name__}: {exc}"}


def _labels(sample: LabelledSample, dst: Mapping[str, int]) -> tuple:
    src, unmatched = read_source_mask(sample)
    mask, unknown_values, unplaced = remap_mask(src, sample.classes, dst)
    return mask, unknown_values, unplaced, unmatched


# ---------------------------------------------------------------- pass 1: analyse


def _analyse_impl(job: dict) -> dict:
    sample: LabelledSample = job["sample"]
    try:
        width, height = image_size(sample.image)
    except (OSError, ValueError) as exc:
        raise AgirError(f"{sample.image}: image missing or unreadable ({exc})") from exc
    mask, unknown_values, unplaced, unmatched = _labels(sample, job["dst"])
    if mask.shape != (height, width):
        raise AgirError(
            f"mask {mask.shape[1]}x{mask.shape[0]} px but image {width}x{height} px; a mask must match its image"
        )
    return {
        "height": height,
        "width": width,
        "counts": class_pixel_counts(mask, job["num_classes"]),
        "unknown_values": {str(k): v for k, v in unknown_values.items()},
        "unplaced_names": unplaced,
        "unmatched_colour_pixels": unmatched,
    }


def analyse_source(job: dict) -> dict:  # module level: pool workers receive it by name
    return _run_guarded(_analyse_impl, job)


# ---------------------------------------------------------------- pass 2: cut and write


def _cut_impl(job: dict) -> dict:
    sample: LabelledSample = job["sample"]
    geom: Geometry = job["geometry"]
    out = Path(job["out"])
    split, k, seed = job["split"], job["num_classes"], job["seed"]
    names = ["background"] + [c["name"] for c in job["classes"]]
    image = read_image(sample.image)
    mask = _labels(sample, job["dst"])[0]
    if mask.shape != image.shape[:2]:
        raise AgirError(f"mask {mask.shape[::-1]} px but decoded image {image.shape[1::-1]} px; a mask must match its image")
    stem = file_stem(sample.record_id)
    ext = job["image_format"]
    rows, moments = [], []
    dropped = Counter()
    for piece in cut(image, mask, geom):
        sid = stem if geom.mode == "resize" else f"{stem}_{piece.y0}_{piece.x0}"
        counts = class_pixel_counts(piece.mask, k)
        valid = sum(counts[: k + 1])
        if valid == 0:
            dropped["empty"] += 1  # nothing to learn from: all padding / ignore
            continue
        fraction = sum(counts[1 : k + 1]) / valid
        kept = "foreground"
        if fraction < job["min_foreground"]:
            # Seeded per tile id: the same tiles are kept on every rerun, whatever the worker order.
            if unit_hash(seed, f"background:{sid}") >= job["keep_background_fraction"]:
                dropped["background"] += 1
                continue
            kept = "background_sample"
        image_rel = f"{split}/images/{sid}.{ext}"
        mask_rel = f"{split}/masks/{sid}.png"
        write_image(out / image_rel, piece.image, quality=job["jpeg_quality"])
        write_mask(out / mask_rel, piece.mask, job["classes"])
        moments.append(pixel_moments(piece.image, piece.mask))
        row = {
            "sample_id": sid,
            "split": split,
            "image": image_rel,
            "mask": mask_rel,
            "record_id": sample.record_id,
            "image_id": sample.image_id,
            "round": sample.round,
            "source_image": sample.image,
            "source_mask": sample.mask,
            "y0": piece.y0,
            "x0": piece.x0,
            "y1": piece.y1,
            "x1": piece.x1,
            "scale": round(piece.scale, 6),
            "foreground_fraction": round(fraction, 6),
            "kept": kept,
        }
        row.update({f"px_{n}": c for n, c in zip(names, counts)})
        row["px_ignore"] = counts[k + 1]
        rows.append(row)
    return {"rows": rows, "moments": merge_moments(moments), "dropped": dict(dropped), "tiles": len(rows) + sum(dropped.values())}


def cut_source(job: dict) -> dict:
    return _run_guarded(_cut_impl, job)


# ---------------------------------------------------------------- the stage


def _index_columns(classes: Sequence[Mapping]) -> list[str]:
    base = ["sample_id", "split", "image", "mask", "record_id", "image_id", "round", "source_image", "source_mask",
            "y0", "x0", "y1", "x1", "scale", "foreground_fraction", "kept"]
    return base + ["px_background"] + [f"px_{c['name']}" for c in classes] + ["px_ignore"]


def _csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _up_to_date(out: Path, fingerprint: str) -> dict | None:
    metrics_file, index_file = out / "metrics.json", out / "index.csv"
    if not (metrics_file.exists() and index_file.exists()):
        return None
    try:
        metrics = read_json(metrics_file)
    except (OSError, json.JSONDecodeError):
        return None
    if metrics.get("fingerprint") != fingerprint:
        return None
    with open(index_file, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != metrics.get("counts", {}).get("samples"):
        return None
    if not all((out / r["image"]).exists() and (out / r["mask"]).exists() for r in rows):
        return None
    return metrics


def _remove_stale(out: Path, keep: set[str]) -> int:
    """Delete dataset files no row refers to (earlier settings, changed splits, crashed temporaries)."""
    removed = 0
    for split in SPLITS:
        for sub in ("images", "masks"):
            folder = out / split / sub
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.name == "classes.json" or f"{split}/{sub}/{f.name}" in keep:
                    continue
                f.unlink()
                removed += 1
    return removed


def _round_entries(classes: str | os.PathLike | Sequence[Mapping]) -> list[dict]:
    if isinstance(classes, (str, os.PathLike)):
        return class_list(read_round_classes(classes))
    return [dict(c) for c in classes]


def gather_samples(cfg: Mapping, run: Path) -> tuple[list[LabelledSample], list[dict], list[dict], list[str]]:
    source = (cfg.get("preprocess") or {}).get("label_source", "db_masks")
    if source == "db_masks":
        samples, rejects = db_mask_samples(cfg, run)
        return samples, rejects, [], [DB_ROUND]
    if source == "cvat":
        return cvat_round_samples(cfg, run)
    raise ConfigError(f"preprocess.label_source={source!r}: use db_masks or cvat")


def run_preprocess_stage(cfg: Mapping, run: str | os.PathLike, workers: int | None = None, force: bool | None = None,
                         classes: str | os.PathLike | Sequence[Mapping] | None = None) -> dict:
    """Build `run/dataset/`; returns the metrics written to `dataset/metrics.json`.

    workers: processes (default preprocess.workers); force: rebuild every source even if journalled;
    classes: the round's class set (path to `{run}/classes.json` or its entries), see the module docstring.
    """
    started = time.time()
    run = Path(run)
    out = run / "dataset"
    pp = cfg.get("preprocess") or {}
    mode = (cfg.get("classes") or {}).get("mode", "species")
    ratios = check_split_ratios(pp.get("split") or {})
    seed = int((pp.get("split") or {}).get("seed", 42))
    geom = geometry_from_config(pp)
    image_format = pp.get("image_format", "jpg")
    if image_format not in ("jpg", "png"):
        raise ConfigError(f"preprocess.image_format={image_format!r}: use jpg or png")
    workers = max(1, int(workers or pp.get("workers") or 1))
    force = bool(pp.get("force", False)) if force is None else bool(force)

    samples, rejects, replaced, rounds = gather_samples(cfg, run)
    gather_rejects = len(rejects)
    if not samples:
        first = f" (first: {rejects[0]['record_id']}: {rejects[0]['reason']})" if rejects else ""
        raise AgirError(f"{run}: no labelled images to build a dataset from; {len(rejects)} rejected{first}")

    colors: dict[str, str] = {}
    for s in samples:
        for c in s.classes:
            colors.setdefault(norm_name(c["name"]), c.get("color"))
    found = sorted(colors)
    appended: list[str] = []
    if classes is None:
        names = dataset_class_names(found, cfg)
        classes = dataset_classes(names, {n: c for n, c in colors.items() if c})
    else:
        classes, appended = names_with_round_set(_round_entries(classes), found, colors, cfg)
        for name in appended:
            log.warning("class %r is in the annotations but not in the round's class set; appended as index %d "
                        "(rebuild classes.json so every stage knows it)", name,
                        next(int(c["index"]) for c in classes if c["name"] == name))
    dst = target_index_by_name(classes, found, mode)
    settings = {
        "version": FORMAT_VERSION,
        "label_source": pp.get("label_source", "db_masks"),
        "rounds": rounds,
        "classes_mode": mode,
        "classes": classes,
        "geometry": geom.describe(),
        "min_foreground": float(pp.get("min_foreground", 0.0)),
        "keep_background_fraction": float(pp.get("keep_background_fraction", 0.0)),
        "image_format": image_format,
        "jpeg_quality": int(pp.get("jpeg_quality", 95)),
        "split": {**ratios, "seed": seed},
    }
    pixel_settings = {k: v for k, v in settings.items() if k not in ("split", "rounds")} | {"seed": seed, "dst": dst}
    fp_of = {
        s.record_id: _digest([pixel_settings, s.describe(), s.classes, _file_stamp(s.image), _file_stamp(s.mask)])
        for s in samples
    }
    fingerprint = _digest([settings, sorted(fp_of.values())])
    if not force:
        done = _up_to_date(out, fingerprint)
        if done is not None:
            log.info("preprocess: %s is up to date (%d samples); nothing rewritten", out, done["counts"]["samples"])
            return done
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.csv").unlink(missing_ok=True)  # a killed run must not leave an index that looks finished

    journal_file = out / JOURNAL
    analyses: dict[str, dict] = {}
    cuts: dict[tuple[str, str], dict] = {}
    if not force:
        for entry in read_jsonl(journal_file, missing_ok=True):
            if entry.get("type") == "analysis":
                analyses[entry["fp"]] = entry
            elif entry.get("type") == "cut":
                cuts[(entry["fp"], entry["split"])] = entry
    else:
        journal_file.unlink(missing_ok=True)
    by_key = {s.record_id: s for s in samples}
    common = {"dst": dst, "num_classes": len(classes), "classes": classes}

    # pass 1: masks -> class pixel counts (for stratification) and validation
    todo = [s for s in samples if fp_of[s.record_id] not in analyses]
    jobs = [{"key": s.record_id, "sample": s, **common} for s in todo]
    for res in _pool_map(analyse_source, jobs, workers, "preprocess: check masks"):
        entry = {"type": "analysis", "fp": fp_of[res["key"]], **res}
        append_jsonl(journal_file, entry)
        analyses[entry["fp"]] = entry

    accepted: list[LabelledSample] = []
    unknown_values: dict[str, dict[str, int]] = defaultdict(lambda: {"samples": 0, "pixels": 0})
    unplaced: dict[str, dict[str, int]] = defaultdict(lambda: {"samples": 0, "pixels": 0})
    unmatched_colour = {"samples": 0, "pixels": 0}
    for s in samples:
        a = analyses[fp_of[s.record_id]]
        if "error" in a:
            rejects.append(reject(s, a["error"]))
            continue
        accepted.append(s)
        for v, px in a["unknown_values"].items():
            unknown_values[v]["samples"] += 1
            unknown_values[v]["pixels"] += px
        for n, px in a["unplaced_names"].items():
            unplaced[n]["samples"] += 1
            unplaced[n]["pixels"] += px
        if a["unmatched_colour_pixels"]:
            unmatched_colour["samples"] += 1
            unmatched_colour["pixels"] += a["unmatched_colour_pixels"]
        for note in s.notes:
            log.warning("%s: %s", s.record_id, note)
    for v, info in sorted(unknown_values.items()):
        log.warning("mask value %s is no known class in %d sample(s), %d px: set to ignore (255)", v, info["samples"], info["pixels"])
    for n, info in sorted(unplaced.items()):
        log.warning("class %r is not in the dataset classes (%d sample(s), %d px): set to ignore (255)", n, info["samples"], info["pixels"])

    # split by photograph, stratified by the dominant class of its pixels
    group_counts: dict[str, list[int]] = {}
    for s in accepted:
        counts = analyses[fp_of[s.record_id]]["counts"]
        acc = group_counts.setdefault(s.image_id, [0] * len(counts))
        for i, c in enumerate(counts):
            acc[i] += c
    strata = {}
    for img_id, counts in group_counts.items():
        fg = counts[1 : len(classes) + 1]
        strata[img_id] = classes[max(range(len(fg)), key=lambda i: (fg[i], -i))]["name"] if any(fg) else "background"
    split_of = assign_splits(strata, ratios, seed)

    # pass 2: cut and write
    def cut_ok(s: LabelledSample) -> bool:
        entry = cuts.get((fp_of[s.record_id], split_of[s.image_id]))
        return entry is not None and "error" not in entry and all(
            (out / r["image"]).exists() and (out / r["mask"]).exists() for r in entry["rows"]
        )

    geometry_job = {
        "geometry": geom, "out": str(out), "seed": seed, "image_format": image_format,
        "jpeg_quality": settings["jpeg_quality"], "min_foreground": settings["min_foreground"],
        "keep_background_fraction": settings["keep_background_fraction"],
    }
    jobs = [
        {"key": s.record_id, "sample": s, "split": split_of[s.image_id], **common, **geometry_job}
        for s in accepted
        if not cut_ok(s)
    ]
    if len(jobs) < len(accepted):
        log.info("preprocess: %d of %d sources unchanged since the last run; reusing their files", len(accepted) - len(jobs), len(accepted))
    for res in _pool_map(cut_source, jobs, workers, "preprocess: write tiles"):
        s = by_key[res["key"]]
        entry = {"type": "cut", "fp": fp_of[s.record_id], "split": split_of[s.image_id], **res}
        append_jsonl(journal_file, entry)
        cuts[(entry["fp"], entry["split"])] = entry

    rows: list[dict] = []
    train_moments, train_counts = [], [0] * (len(classes) + 2)
    dropped = Counter()
    tiles_total = 0
    final_accepted = []
    journal_keep = []
    for s in accepted:
        fp = fp_of[s.record_id]
        journal_keep.append(analyses[fp])
        entry = cuts[(fp, split_of[s.image_id])]
        journal_keep.append(entry)
        if "error" in entry:
            rejects.append(reject(s, entry["error"]))
            continue
        final_accepted.append(s)
        rows.extend(entry["rows"])
        dropped.update(entry["dropped"])
        tiles_total += entry["tiles"]
        if split_of[s.image_id] == "train":
            train_moments.append(entry["moments"])
            for r in entry["rows"]:
                for i, key in enumerate(["px_background"] + [f"px_{c['name']}" for c in classes] + ["px_ignore"]):
                    train_counts[i] += r[key]
    journal_keep.extend(analyses[fp_of[s.record_id]] for s in samples if "error" in analyses[fp_of[s.record_id]])
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["sample_id"]))
    ids = Counter(r["sample_id"] for r in rows)
    if any(n > 1 for n in ids.values()):
        dup = next(k for k, n in ids.items() if n > 1)
        raise AgirError(f"sample id {dup} produced twice; record ids must be unique across rounds")

    removed = _remove_stale(out, {r["image"] for r in rows} | {r["mask"] for r in rows})
    write_classes(out, classes)
    for split in SPLITS:
        write_classes(out / split / "masks", classes)
    stats = dataset_stats(merge_moments(train_moments), train_counts, classes)
    stats["geometry"] = geom.describe()  # what inference should tile with (read by train)
    write_json(out / "stats.json", stats)

    by_split = {}
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        by_split[split] = {
            "images": len({r["image_id"] for r in split_rows}),
            "samples": len(split_rows),
            "background_samples": sum(1 for r in split_rows if r["kept"] == "background_sample"),
        }
    metrics = {
        "stage": "preprocess",
        "fingerprint": fingerprint,
        "label_source": settings["label_source"],
        "rounds": rounds,
        "classes": [c["name"] for c in classes],
        "classes_appended": appended,
        "geometry": geom.describe(),
        "settings": settings,
        "counts": {
            "sources": len(samples) + gather_rejects,
            "accepted": len(final_accepted),
            "rejected": len(rejects),
            "images": len({s.image_id for s in final_accepted}),
            "tiles": tiles_total,
            "samples": len(rows),
            "dropped_background_tiles": dropped["background"],
            "dropped_empty_tiles": dropped["empty"],
            "replaced_by_newer_round": len(replaced),
            "stale_files_removed": removed,
            "by_split": by_split,
        },
        "dominant_class": dict(Counter(strata[s.image_id] for s in final_accepted)),
        "split_of_image": dict(sorted((k, v) for k, v in split_of.items())),
        "replaced": replaced,
        "rejects": rejects,
        "unknown_mask_values": dict(unknown_values),
        "unplaced_class_names": dict(unplaced),
        "unmatched_colour_pixels": unmatched_colour,
        "elapsed_s": round(time.time() - started, 3),
    }
    write_json(out / "metrics.json", metrics)
    write_jsonl(journal_file, journal_keep)  # compacted: only what this dataset is made of
    write_text(out / "index.csv", _csv_text(rows, _index_columns(classes)))
    log.info(
        "preprocess: %d samples from %d images (train %d / val %d / test %d), %d rejected -> %s",
        len(rows), metrics["counts"]["images"], by_split["train"]["samples"], by_split["val"]["samples"],
        by_split["test"]["samples"], len(rejects), out,
    )
    return metrics
