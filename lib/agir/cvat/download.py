"""download-cvat: finished CVAT tasks -> refined class-index masks, `cvat/download.json` and statistics.

Order of work: resolve the tasks, check the status gate for all of them (or wait), and only then
write anything, so a pending round leaves no half-written annotations. A task whose server-side
`updated_date` (task and jobs) matches the last download is not fetched again unless refreshing.

Tasks come from every upload batch of the round (`agir.cvat.receipts.load_batches`), or from
`cvat_download.task_ids` / `project_id`. A record uploaded in several tasks (revisions, or batches that
share records) is taken from one task only, see `agir.cvat.gate.resolve_records`; every frame of every batch either
lands in `cvat/annotations/` or is listed in `download.json` under `frames_not_landed` with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agir.cvat import REVIEW_LABEL
from agir.cvat.annotations import download_task
from agir.cvat.client import CvatSession, session_from_config
from agir.cvat.gate import (  # noqa: F401 - re-exported: the download's public names stay importable from here
    Resolution,
    describe_pending,
    gate,
    known_tasks,
    pending_work,
    resolve_records,
    resolve_tasks,
    signature,
    task_state,
    touched,
)
from agir.cvat.receipts import cvat_dir, load_batches, round_classes, update_metrics
from agir.logs import get_logger
from agir.masks import color_for_name, make_classes, read_classes, write_classes
from agir.runs import read_json, write_json

log = get_logger("cvat.download")

RECEIPT_VERSION = 2


# ---------------------------------------------------------------- classes of the annotations folder


def folder_classes(batches: Sequence[Mapping], labels: list[dict], round_set: Sequence[Mapping] | None = None) -> list[dict]:
    """The classes of cvat/annotations/masks/classes.json; the label `review` (hints) is never a class.

    With the round's class set: its classes with their indices, then any other class of the batches or label of the
    tasks, appended with a WARNING (people's labels are never dropped). Without one (rounds built before class sets):
    the newest batch's classes first (same indices as its pre-labels), then other batches', then other labels.
    """
    names: list[str] = []
    colors: dict[str, Any] = {}
    for b in reversed(batches):
        for c in b.get("classes") or []:
            if c["name"] not in names and c["name"] != REVIEW_LABEL:
                names.append(c["name"])
                colors[c["name"]] = c.get("color")
    for lab in labels:
        if lab["name"] not in names and lab["name"] != REVIEW_LABEL:
            names.append(lab["name"])
            colors[lab["name"]] = lab.get("color") or color_for_name(lab["name"])
    if round_set is None:
        return make_classes(names, colors)
    out = [{"index": int(c["index"]), "name": str(c["name"]), "color": c.get("color") or color_for_name(str(c["name"]))}
           for c in sorted(round_set, key=lambda c: int(c["index"]))]
    known = {c["name"] for c in out}
    extra = [n for n in names if n not in known]
    if extra:
        start = max((c["index"] for c in out), default=0) + 1
        out += [{"index": start + i, "name": n, "color": colors.get(n) or color_for_name(n)} for i, n in enumerate(extra)]
        log.warning("CVAT label(s) %s are not in the round's class set; kept, appended as class(es) %s of "
                    "cvat/annotations/masks/classes.json", ", ".join(repr(n) for n in extra),
                    ", ".join(str(start + i) for i in range(len(extra))))
    return out


# ---------------------------------------------------------------- the stage


def _read_optional(path: Path) -> dict | None:
    try:
        return read_json(path) if path.exists() else None
    except (OSError, ValueError):
        log.warning("%s unreadable; ignoring it", path)
        return None


def _outputs_exist(run: Path, entry: Mapping) -> bool:
    base = cvat_dir(run) / "annotations"
    return all((base / "masks" / f"{f['record_id']}.png").exists() for f in entry.get("frames", []))


def run_download_stage(
    cfg: Mapping[str, Any],
    run: str | os.PathLike,
    refresh: bool = False,
    *,
    session: CvatSession | None = None,
    classes: str | os.PathLike | Sequence[Mapping] | None = None,
) -> dict:
    """Download refined annotations of this round; writes cvat/annotations/, cvat/download.json, metrics["download"].

    Needs no cvat/upload.json when cvat_download.task_ids or project_id is set (the upload receipts are still
    used, when present, to map frames to record ids and to find the uploaded images and pre-labels).
    `classes`: the round's class set (the rule's input `{run}/classes.json`, or a class list), which orders the
    classes of cvat/annotations/masks/classes.json; without it `{run}/classes.json` when present.
    """
    t0 = time.perf_counter()
    run = Path(run)
    round_set = round_classes(run, classes)
    dcfg = cfg.get("cvat_download") or {}
    refresh = bool(refresh or dcfg.get("refresh", False))
    fmt = dcfg.get("format", "api") or "api"
    batches = load_batches(run)
    receipt_path = cvat_dir(run) / "download.json"
    prev = _read_optional(receipt_path) or {}
    pre_classes = None
    if (run / "infer" / "masks" / "classes.json").exists():
        pre_classes = read_classes(run / "infer" / "masks")

    own = session is None
    session = session or session_from_config(cfg)
    try:
        task_ids, source = resolve_tasks(session, cfg, batches)
        every = known_tasks(batches)
        known = {tid: every[tid] for tid in task_ids if tid in every}
        if source != "cvat/upload.json":
            # only the batches the chosen tasks belong to take part
            chosen = {id(b) for _, b in known.values()}
            batches = [b for b in batches if id(b) in chosen]
        states, res = gate(session, task_ids, dcfg, known, batches)
        for level, message in res.notes:
            (log.warning if level == "warning" else log.info)("%s", message)
        todo = [tid for tid in task_ids if tid in res.keep]
        labels: list[dict] = []
        for tid in todo:
            for lab in session.list_all(f"list labels of task {tid}", session.api.labels_api.list, task_id=tid):
                if lab["name"] not in {x["name"] for x in labels} and not lab.get("parent_id"):
                    labels.append(lab)
        classes = folder_classes(batches, labels, round_set)
        same_classes = [(c["index"], c["name"]) for c in prev.get("classes", [])] == [(c["index"], c["name"]) for c in classes]
        same_format = prev.get("format") == fmt
        prev_tasks = {int(k): v for k, v in (prev.get("tasks") or {}).items()}
        # record ids of receipt tasks first, so a foreign frame with the same name gets a prefixed id
        taken: dict[str, int] = dict(res.winner)
        for tid, entry in prev_tasks.items():
            if tid in todo and tid not in known:
                for f in entry.get("frames", []):
                    taken.setdefault(f["record_id"], tid)
        write_classes(cvat_dir(run) / "annotations" / "masks", classes)

        tasks: dict[str, dict] = {}
        decoded = unchanged = 0
        for tid in tqdm(todo, desc="download-cvat tasks", unit="task", disable=None):
            sig = signature(states[tid])
            keep = res.keep[tid]
            kept = sorted(keep) if keep is not None else None
            old = prev_tasks.get(tid)
            if (not refresh and old and old.get("signature") == sig and old.get("kept") == kept and same_classes
                    and same_format and _outputs_exist(run, old)):
                tasks[str(tid)] = old
                unchanged += 1
                log.info("task %s unchanged on the server since the last download; skipped", tid)
                continue
            upload_task, batch = known.get(tid, (None, None))
            entry = download_task(session, run, tid, states[tid], classes, upload_task, fmt, taken, pre_classes, batch, keep)
            if batch is not None:
                entry["batch"] = int(batch["batch"])
            entry["kept"] = kept
            entry["signature"] = sig
            entry["updated_date"] = states[tid]["task"].get("updated_date")
            entry["url"] = session.task_url(tid)
            tasks[str(tid)] = entry
            decoded += 1
        http = session.http_seconds
    finally:
        if own:
            session.close()

    # outputs of an earlier download that did not land this time (frames deleted in CVAT, a record now taken
    # from another task under another name, tasks no longer chosen) must not linger
    landed = {f["record_id"] for e in tasks.values() for f in e["frames"]}
    for old in prev_tasks.values():
        for f in old.get("frames", []):
            if f["record_id"] not in landed:
                for p in (cvat_dir(run) / "annotations" / "masks" / f"{f['record_id']}.png",
                          cvat_dir(run) / "annotations" / "images" / f"{f['record_id']}.jpg"):
                    p.unlink(missing_ok=True)

    not_landed = list(res.not_landed)
    for tid, e in tasks.items():
        names = {int(f["frame"]): str(f["record_id"]) for f in (known.get(int(tid), ({}, {}))[0] or {}).get("frames", [])}
        for fr in e.get("deleted_frames", []):
            if e.get("kept") is None or fr in e["kept"]:
                not_landed.append({"record_id": names.get(int(fr)), "task": int(tid), "frame": fr, "batch": e.get("batch"),
                                   "reason": "frame deleted in CVAT"})
        for fl in e.get("failed", []):
            not_landed.append({"record_id": fl["record_id"], "task": int(tid), "frame": fl["frame"], "batch": e.get("batch"),
                               "reason": f"decoding failed: {fl['reason']}"})
    all_frames = [f for e in tasks.values() for f in e["frames"]]
    receipt = {
        "version": RECEIPT_VERSION,
        "server": session.host,
        "server_version": session.server_version,
        "source": source,
        "format": fmt,
        "required_status": dcfg.get("required_status", "completed"),
        "classes": classes,
        "frames_decoded": len(all_frames),
        "tasks": tasks,
        "skipped_tasks": {str(t): r for t, r in res.skipped_tasks.items()},
        "batches": [
            {
                "batch": int(b["batch"]),
                "group": b.get("group"),
                "revision": b.get("revision"),
                "tasks": [int(t["id"]) for t in b.get("tasks", [])],
                "records": len(b.get("record_ids") or []),
                "records_landed": sum(1 for r in b.get("record_ids") or [] if r in landed),
            }
            for b in batches
        ],
        "frames_not_landed": not_landed,
    }
    write_json(receipt_path, receipt)
    seconds = time.perf_counter() - t0
    changes_all = [
        {"record_id": rid, "changed_fraction": fr, "changed_pixels": 0, "pixels": 0, "labels": {}}
        for e in tasks.values()
        for rid, fr in e["stats"]["changed_fraction_per_frame"].items()
    ]
    per_label: dict[str, dict] = {}
    for e in tasks.values():
        for name, s in (e["stats"]["changes"].get("labels") or {}).items():
            acc = per_label.setdefault(name, {"changed_pixels": 0, "union": 0})
            acc["changed_pixels"] += s["changed_pixels"]
            acc["union"] += s["union"]
    metrics = {
        "server": session.host,
        "server_version": session.server_version,
        "format": fmt,
        "tasks": len(tasks),
        "tasks_decoded": decoded,
        "tasks_unchanged": unchanged,
        "frames": len(all_frames),
        "frames_deleted": sum(e["stats"]["frames_deleted"] for e in tasks.values()),
        "frames_failed": sum(e["stats"]["frames_failed"] for e in tasks.values()),
        "frames_not_landed": len(not_landed),
        "tasks_skipped": len(res.skipped_tasks),
        "batches": len(batches),
        "changed_fraction_mean": float(np.mean([c["changed_fraction"] for c in changes_all])) if changes_all else None,
        "changed_fraction_per_label": {
            n: (a["changed_pixels"] / a["union"] if a["union"] else 0.0) for n, a in sorted(per_label.items())
        },
        "per_task": {tid: {"name": e["name"], **e["stats"]} for tid, e in tasks.items()},
        "seconds": round(seconds, 3),
        "http_seconds": round(http, 3),
    }
    update_metrics(run, "download", metrics)
    return metrics
