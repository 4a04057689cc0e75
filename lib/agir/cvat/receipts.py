"""Upload receipts: the batch receipts `cvat/batches/{k:03d}.json`, the combined `cvat/upload.json`, the kept
copies under `cvat/uploaded/`, and the shared `cvat/metrics.json`.

Upload writes these, download reads them; neither talks to the server here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.classes import ROUND_CLASSES, class_list, read_round_classes
from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import file_lock, read_json, write_json

log = get_logger("cvat.upload")

RECEIPT_VERSION = 2


def cvat_dir(run: Path) -> Path:
    return Path(run) / "cvat"


def round_classes(run: Path, classes: str | os.PathLike | Sequence[Mapping] | None = None) -> list[dict] | None:
    """The round's class set (contract C1) as `[{index, name, color}]`: `classes` is the rule's input `classes`
    (a path) or a class list; without it `{run}/classes.json` when the round has one, else None (a round built
    before class sets: callers use the pre-labels' own classes)."""
    if classes is not None and not isinstance(classes, (str, os.PathLike)):
        return [dict(c) for c in classes]
    path = Path(classes) if classes is not None else Path(run) / ROUND_CLASSES
    if classes is None and not path.exists():
        return None
    return class_list(read_round_classes(path))


def update_metrics(run: Path, key: str, values: Mapping[str, Any]) -> Path:
    """Upload and download keep their statistics under their own key of the shared cvat/metrics.json."""
    path = cvat_dir(run) / "metrics.json"
    with file_lock(cvat_dir(run) / ".metrics.lock"):
        current = read_json(path) if path.exists() else {}
        current[key] = dict(values)
        write_json(path, current)
    return path


def batches_dir(run: Path) -> Path:
    return cvat_dir(run) / "batches"


def batch_path(run: Path, k: int) -> Path:
    return batches_dir(run) / f"{k:03d}.json"


def _legacy_batches(old: Mapping[str, Any]) -> list[dict]:
    """A version-1 `cvat/upload.json` (one upload, earlier revisions under `superseded`) as batches of group 1."""
    common = {k: old.get(k) for k in ("server", "server_version", "organization", "project_id", "project_name", "labels", "classes", "settings")}
    revisions = [(int(s.get("revision", i + 1)), s.get("tasks") or [], True, None) for i, s in enumerate(old.get("superseded") or [])]
    revisions.append((int(old.get("revision", 1)), old.get("tasks") or [], bool(old.get("complete", True)), old.get("inputs_fingerprint")))
    out = []
    for k, (rev, tasks, complete, fp) in enumerate(revisions, start=1):
        rids = [str(f["record_id"]) for t in tasks for f in t.get("frames", [])]
        out.append({
            **common, "version": RECEIPT_VERSION, "batch": k, "group": 1, "revision": rev, "record_ids": rids,
            "frames_key": frames_key(rids), "inputs_fingerprint": fp, "tasks": tasks, "complete": complete, "legacy": True,
        })
    return out


def load_batches(run: str | os.PathLike) -> list[dict]:
    """Every upload batch of the round, oldest first.

    Read from `cvat/batches/*.json`; a round uploaded by an older agir (only a version-1
    `cvat/upload.json`) reads as batches of one group. An unreadable batch receipt is an error: skipping it
    would drop that batch's annotations silently.
    """
    run = Path(run)
    files = sorted(p for p in batches_dir(run).glob("*.json") if re.fullmatch(r"\d{3,}\.json", p.name))
    out = []
    for p in files:
        try:
            out.append(read_json(p))
        except (OSError, ValueError) as exc:
            raise AgirError(f"{p}: unreadable upload batch receipt ({exc}); restore it from a backup, or move it away "
                            "if that batch's CVAT tasks are abandoned") from None
    if out:
        return sorted(out, key=lambda b: int(b["batch"]))
    combined = load_receipt(cvat_dir(run) / "upload.json")
    if combined and combined.get("batches"):  # batch files lost, the combined receipt still lists them
        return sorted(combined["batches"], key=lambda b: int(b["batch"]))
    if combined and combined.get("tasks") is not None and "batches" not in combined:
        return _legacy_batches(combined)
    return []


def frames_key(record_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(record_ids).encode()).hexdigest()[:20]


def current_batches(batches: Sequence[Mapping]) -> list[Mapping]:
    """The newest revision of every group (the batches whose tasks people are expected to annotate)."""
    newest = {}
    for b in batches:
        newest[(b.get("group", b["batch"]))] = int(b["batch"])
    return [b for b in batches if newest[b.get("group", b["batch"])] == int(b["batch"])]


def combined_receipt(batches: Sequence[Mapping]) -> dict:
    """`cvat/upload.json`: the newest batch's keys where the version-1 receipt had them, plus every batch.

    `tasks` lists the tasks of the newest revision of every group (all batches of the round),
    each with its `batch`; `superseded` the older revisions (`batch`, `group`, `revision`, `tasks`);
    `batches` every batch receipt in full, oldest first.
    """
    batches = sorted(batches, key=lambda b: int(b["batch"]))
    newest = batches[-1]
    current = {int(b["batch"]) for b in current_batches(batches)}
    keys = ("server", "server_version", "organization", "project_id", "project_name", "labels", "classes", "round_classes",
            "revision", "inputs_fingerprint", "settings", "complete")
    return {
        "version": RECEIPT_VERSION,
        **{k: newest.get(k) for k in keys},
        "batch": int(newest["batch"]),
        "tasks": [{**t, "batch": int(b["batch"])} for b in batches if int(b["batch"]) in current for t in b.get("tasks", [])],
        "superseded": [
            {"batch": int(b["batch"]), "group": b.get("group"), "revision": b.get("revision"), "tasks": b.get("tasks", [])}
            for b in batches
            if int(b["batch"]) not in current
        ],
        "batches": list(batches),
    }


def uploaded_dir(run: Path) -> Path:
    return cvat_dir(run) / "uploaded"


def _keep_copy(src: Path, dest: Path) -> None:
    """A hard link (or, across file systems, a copy) of an uploaded file; infer/ rewrites by rename, never in place."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def keep_uploaded(run: Path, frame: Mapping[str, Any]) -> dict:
    """Keep the frame's image and pre-label under cvat/uploaded/ (named by record id and content); their run paths."""
    rid = frame["id"]
    image = uploaded_dir(run) / "images" / f"{rid}.{frame['image_sha1'][:12]}.jpg"
    mask = uploaded_dir(run) / "masks" / f"{rid}.{frame['mask_sha1'][:12]}.png"
    _keep_copy(Path(frame["image"]), image)
    _keep_copy(Path(frame["mask"]), mask)
    return {"image": image.relative_to(run).as_posix(), "mask": mask.relative_to(run).as_posix()}


def frame_entries(run: Path, frames: list[dict]) -> list[dict]:
    out = []
    for i, f in enumerate(frames):
        entry = {"frame": i, "name": f["name"], "record_id": f["id"], **keep_uploaded(run, f)}
        if f.get("image_id"):
            entry["image_id"] = f["image_id"]
        out.append(entry)
    return out


def base_names(batch: Mapping) -> set[str]:
    names = set()
    for t in batch.get("tasks", []):
        names.add(t.get("base_name") or re.sub(r"-r\d+$", "", str(t.get("name"))))
    return names


def load_receipt(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        log.warning("%s is unreadable; starting a new receipt", path)
        return None

