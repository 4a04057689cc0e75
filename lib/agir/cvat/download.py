"""download-cvat: finished CVAT tasks -> refined class-index masks, `cvat/download.json` and statistics.

Order of work: resolve the tasks, check the status gate for all of them (or wait), and only then
write anything, so a pending round leaves no half-written annotations. A task whose server-side
`updated_date` (task and jobs) matches the last download is not fetched again unless refreshing.

Tasks come from every upload batch of the round (`agir.cvat.upload.load_batches`), or from
`cvat_download.task_ids` / `project_id`. A record uploaded in several tasks (revisions, or batches that
share records) is taken from one task only, see `resolve_records`; every frame of every batch either
lands in `cvat/annotations/` or is listed in `download.json` under `frames_not_landed` with the reason.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cvat_sdk.core.downloading import Downloader
from tqdm import tqdm

from agir.cvat.client import CvatHttpError, CvatSession, session_from_config
from agir.cvat.decode import decode_archive, rasterise, shapes_by_frame
from agir.cvat.stats import frame_change, label_pixels, summarise_changes
from agir.cvat.upload import cvat_dir, load_batches, update_metrics
from agir.errors import AgirError
from agir.images import encode_image, read_image
from agir.logs import get_logger
from agir.masks import (
    IGNORE,
    color_for_name,
    make_classes,
    read_classes,
    read_mask,
    remap_lut,
    write_classes,
    write_mask,
)
from agir.runs import read_json, write_bytes, write_json

log = get_logger("cvat.download")

RECEIPT_VERSION = 2


# ---------------------------------------------------------------- which tasks, and are they done


def known_tasks(batches: Sequence[Mapping]) -> dict[int, tuple[dict, dict]]:
    """task id -> (its upload receipt entry, its batch) for every task of every batch, all revisions."""
    out: dict[int, tuple[dict, dict]] = {}
    for b in batches:
        for t in b.get("tasks", []):
            out[int(t["id"])] = (t, b)
    return out


def resolve_tasks(session: CvatSession, cfg: Mapping[str, Any], batches: Sequence[Mapping]) -> tuple[list[int], str]:
    d = cfg.get("cvat_download") or {}
    if d.get("task_ids"):
        return list(dict.fromkeys(int(t) for t in d["task_ids"])), "cvat_download.task_ids"
    if d.get("project_id"):
        rows = session.list_all(f"list tasks of project {d['project_id']}", session.api.tasks_api.list, project_id=int(d["project_id"]))
        if not rows:
            raise AgirError(f"CVAT {session.host}: project {d['project_id']} (cvat_download.project_id) has no tasks")
        return sorted(int(t["id"]) for t in rows), "cvat_download.project_id"
    if not any(b.get("tasks") for b in batches):
        raise AgirError(
            "cvat/upload.json missing or without tasks; run upload-cvat first, or set cvat_download.task_ids or "
            "cvat_download.project_id to download tasks created elsewhere"
        )
    elsewhere = [b for b in batches if b.get("server") and b["server"] != session.host and b.get("tasks")]
    if elsewhere:
        b = elsewhere[0]
        raise AgirError(
            f"cvat/upload.json: batch {b['batch']} was uploaded to {b['server']} but the CVAT host is now {session.host}; "
            "set CVAT_HOST/cvat.host back, or use cvat_download.task_ids"
        )
    return list(known_tasks(batches)), "cvat/upload.json"


def task_state(session: CvatSession, task_id: int, missing_ok: bool = False) -> dict:
    """The task and its jobs; with missing_ok a task deleted on the server is {"gone": True} instead of an error."""
    try:
        task = session.call(f"read task {task_id}", session.api.tasks_api.retrieve, task_id)
    except CvatHttpError as exc:
        if exc.status == 404 and missing_ok:
            return {"task": {"id": task_id, "status": "deleted"}, "jobs": [], "gone": True}
        raise
    jobs = session.list_all(f"list jobs of task {task_id}", session.api.jobs_api.list, task_id=task_id)
    return {"task": task, "jobs": jobs}


def touched(state: Mapping, upload_task: Mapping | None) -> bool:
    """Did people work on the task since agir uploaded it? A job left its first stage/state, or changed since."""
    recorded = {int(j["id"]): j for j in (upload_task or {}).get("jobs") or []}
    for j in state["jobs"]:
        if j.get("stage") != "annotation" or j.get("state") != "new":
            return True
        rec = recorded.get(int(j["id"]))
        if rec and rec.get("updated_date") and str(rec["updated_date"]) != str(j.get("updated_date")):
            return True
    return False


def _job_frames(j: Mapping) -> int:
    if j.get("frame_count") is not None:
        return int(j["frame_count"])
    return int(j.get("stop_frame", 0)) - int(j.get("start_frame", 0)) + 1


def pending_work(state: dict, required: str) -> list[dict]:
    """Jobs still to do under the gate; [] when the task passes."""
    task, jobs = state["task"], state["jobs"]
    if required == "completed":
        if task.get("status") == "completed":
            return []
        return [j for j in jobs if j.get("stage") != "acceptance" or j.get("state") != "completed"] or [
            {"id": None, "stage": task.get("status"), "state": "?", "frame_count": task.get("size") or 0}
        ]
    return [j for j in jobs if not (j.get("stage") == "acceptance" and j.get("state") == "completed")]


def describe_pending(states: dict[int, dict], pending: dict[int, list[dict]], required: str) -> str:
    frames = sum(_job_frames(j) for js in pending.values() for j in js)
    parts = []
    for tid, js in pending.items():
        t = states[tid]["task"]
        jobs = ", ".join(f"job {j['id']} {j.get('stage')}/{j.get('state')}" for j in js[:6] if j.get("id"))
        more = f" +{len(js) - 6} more" if len(js) > 6 else ""
        parts.append(f"task {tid} {t.get('name')!r} status {t.get('status')} ({jobs or 'no jobs'}{more})")
    gate = "task status completed" if required == "completed" else "every job in stage acceptance, state completed"
    return (
        f"{len(pending)} of {len(states)} CVAT task(s) not done ({gate}): {'; '.join(parts)}; "
        f"{frames} frame(s) remain. Finish them in CVAT, or set cvat_download.wait: true to wait"
    )


@dataclass
class Resolution:
    """Which frames of which task to write, and what blocks the download."""

    keep: dict[int, set[int] | None] = field(default_factory=dict)  # task -> frame numbers (None: all)
    pending: dict[int, list[dict]] = field(default_factory=dict)  # needed tasks not done -> their pending jobs
    not_landed: list[dict] = field(default_factory=list)  # frames that will not land, with the reason
    skipped_tasks: dict[int, str] = field(default_factory=dict)  # tasks none of whose frames are needed
    notes: list[tuple[str, str]] = field(default_factory=list)  # (level, message), logged once the gate passes
    winner: dict[str, int] = field(default_factory=dict)  # record id -> task id (receipt tasks only)


def _label(tid: int, known: Mapping[int, tuple[dict, dict]]) -> str:
    t, b = known[tid]
    return f"task {tid} {t.get('name')!r} (batch {b['batch']})"


def resolve_records(
    task_ids: Sequence[int], states: Mapping[int, dict], known: Mapping[int, tuple[dict, dict]], batches: Sequence[Mapping], required: str
) -> Resolution:
    """Per record of the receipts, the one task whose annotation lands; tasks not from the receipts are taken whole.

    The newest task (by batch, then task order) holding the record wins when it passes the gate. When it is
    untouched and not done while an older one is done, the older one wins (WARNING). Otherwise the newest
    is pending and blocks the download. Losing tasks that people touched are named in a WARNING; untouched
    ones are skipped with an INFO line. Records of a batch that never reached a task are listed.
    """
    res = Resolution()
    done = {tid: not states[tid].get("gone") and not pending_work(states[tid], required) for tid in task_ids}
    work = {tid: not states[tid].get("gone") and touched(states[tid], known.get(tid, ({}, {}))[0]) for tid in task_ids}
    for tid in task_ids:
        if tid not in known:
            if not done[tid]:
                res.pending[tid] = pending_work(states[tid], required)
            res.keep[tid] = None
    order = {int(b["batch"]): i for i, b in enumerate(batches)}
    cands: dict[str, list[tuple[int, int]]] = {}  # record -> [(task, frame)], oldest first
    for tid in sorted((t for t in task_ids if t in known), key=lambda t: (order[int(known[t][1]["batch"])], t)):
        for f in known[tid][0].get("frames", []):
            cands.setdefault(str(f["record_id"]), []).append((tid, int(f["frame"])))
    pairs: dict[tuple[int, int, str], int] = {}  # (loser, winner, why) -> records
    for rid, cs in cands.items():
        live = [c for c in cs if not states[c[0]].get("gone")]
        for tid, fr in cs:
            if states[tid].get("gone"):
                res.not_landed.append({"record_id": rid, "task": tid, "frame": fr, "batch": known[tid][1]["batch"],
                                       "reason": "task deleted in CVAT"})
        if not live:
            continue
        newest = live[-1]
        if done[newest[0]]:
            win = newest
        else:
            older_done = [c for c in live[:-1] if done[c[0]]]
            if work[newest[0]] or not older_done:
                res.pending.setdefault(newest[0], pending_work(states[newest[0]], required))
                continue
            win = older_done[-1]
        res.winner[rid] = win[0]
        res.keep.setdefault(win[0], set()).add(win[1])
        for c in live:
            if c == win:
                continue
            newer = live.index(c) > live.index(win)
            why = "newer-unstarted" if newer else ("touched" if work[c[0]] else "untouched")
            pairs[(c[0], win[0], why)] = pairs.get((c[0], win[0], why), 0) + 1
            reason = (f"task {c[0]} (newer) not started; the finished task {win[0]} was used" if newer
                      else f"superseded by task {win[0]} (batch {known[win[0]][1]['batch']})")
            res.not_landed.append({"record_id": rid, "task": c[0], "frame": c[1], "batch": known[c[0]][1]["batch"], "reason": reason})
    for (loser, win, why), n in sorted(pairs.items()):
        if why == "newer-unstarted":
            res.notes.append(("warning", f"{_label(loser, known)} is newer but nobody started it; {n} record(s) taken from the "
                                         f"finished {_label(win, known)}. Delete the newer task in CVAT if it is not needed"))
        elif why == "touched":
            res.notes.append(("warning", f"people worked on {n} record(s) in both {_label(loser, known)} and "
                                         f"{_label(win, known)}; keeping the newest, task {win}"))
        else:
            res.notes.append(("info", f"{_label(loser, known)} was superseded by {_label(win, known)} and never touched; "
                                      f"{n} record(s) skipped there"))
    for tid in task_ids:
        if tid in known and tid not in res.keep and tid not in res.pending:
            res.skipped_tasks[tid] = "deleted in CVAT" if states[tid].get("gone") else "every record is taken from another task"
    # records of a batch that never reached any task (an interrupted upload)
    for b in batches:
        sent = {str(f["record_id"]) for t in b.get("tasks", []) for f in t.get("frames", [])}
        lost = [r for r in b.get("record_ids") or [] if r not in sent and r not in cands]
        if lost:
            for r in lost:
                res.not_landed.append({"record_id": r, "task": None, "frame": None, "batch": b["batch"],
                                       "reason": "never uploaded: the upload of this batch was interrupted"})
            res.notes.append(("warning", f"batch {b['batch']}: {len(lost)} record(s) never reached CVAT (its upload was "
                                         "interrupted); rerun upload-cvat on that inference to send them"))
    return res


def gate(
    session: CvatSession, task_ids: list[int], dcfg: Mapping[str, Any], known: Mapping[int, tuple[dict, dict]] | None = None,
    batches: Sequence[Mapping] = (),
) -> tuple[dict[int, dict], Resolution]:
    known = known or {}
    required = dcfg.get("required_status", "completed")
    wait = bool(dcfg.get("wait", False))
    poll = float(dcfg.get("poll_seconds", 30))
    deadline = time.monotonic() + 60 * float(dcfg.get("timeout_minutes", 60))
    while True:
        states = {tid: task_state(session, tid, missing_ok=tid in known) for tid in task_ids}
        res = resolve_records(task_ids, states, known, batches, required)
        if not res.pending:
            return states, res
        message = describe_pending(states, res.pending, required)
        if not wait:
            raise AgirError(message)
        if time.monotonic() + poll > deadline:
            raise AgirError(f"gave up waiting after {dcfg.get('timeout_minutes')} min (cvat_download.timeout_minutes): {message}")
        log.info("waiting %gs: %s", poll, message)
        time.sleep(poll)


def signature(state: dict) -> str:
    """What changes whenever people touch a task: its and its jobs' updated dates."""
    dates = [str(state["task"].get("updated_date"))] + sorted(str(j.get("updated_date")) for j in state["jobs"])
    return "|".join(dates)


# ---------------------------------------------------------------- classes of the annotations folder


def folder_classes(batches: Sequence[Mapping], labels: list[dict]) -> list[dict]:
    """The newest batch's classes first (same indices as its pre-labels), then other batches', then other labels."""
    names: list[str] = []
    colors: dict[str, Any] = {}
    for b in reversed(batches):
        for c in b.get("classes") or []:
            if c["name"] not in names:
                names.append(c["name"])
                colors[c["name"]] = c.get("color")
    for lab in labels:
        if lab["name"] not in names:
            names.append(lab["name"])
            colors[lab["name"]] = lab.get("color") or color_for_name(lab["name"])
    return make_classes(names, colors)


# ---------------------------------------------------------------- per task


def _frame_ids(task_id: int, frames: list[dict], upload_task: dict | None, taken: dict[str, int]) -> list[str]:
    if upload_task:
        by_frame = {int(f["frame"]): str(f["record_id"]) for f in upload_task.get("frames", [])}
        ids = [by_frame.get(i, Path(f["name"]).stem) for i, f in enumerate(frames)]
    else:
        ids = [Path(str(f["name"])).stem for f in frames]
    out = []
    for rid in ids:
        if taken.get(rid, task_id) != task_id:
            rid = f"t{task_id}_{rid}"  # the same file name in two foreign tasks
        taken[rid] = task_id
        out.append(rid)
    return out


def _export_masks(session: CvatSession, task_id: int, fmt: str, workdir: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Ask the server for an export, wait for it, download the zip and decode it.

    Request bodies are read as plain JSON (not the SDK's Request model) so that the request
    objects of older servers, which lack some of the newest fields, are accepted.
    """
    archive = workdir / f"task_{task_id}.zip"
    what = f"export task {task_id} as {fmt!r}"
    started = session.call(what, session.api.tasks_api.create_dataset_export, id=task_id, format=fmt, save_images=False)
    rq_id = (started or {}).get("rq_id")
    if not rq_id:
        raise AgirError(f"CVAT {session.host}: the server did not start the export of task {task_id}; export it by hand or use format: api")
    request = session.wait_request(rq_id, what)
    url = request.get("result_url")
    if not url:
        raise AgirError(f"CVAT {session.host}: the export of task {task_id} has no download URL; check the task's target storage is local")
    try:
        session._timed(lambda: Downloader(session.client).download_file(url, output_path=archive, timeout=session.timeout))
    except Exception as exc:  # noqa: BLE001
        raise session._error(f"download the {fmt!r} export of task {task_id}", exc) from None
    return decode_archive(archive, fmt, workdir / f"task_{task_id}")


def download_task(
    session: CvatSession,
    run: Path,
    task_id: int,
    state: dict,
    classes: list[dict],
    upload_task: dict | None,
    fmt: str,
    taken: dict[str, int],
    pre_classes: list[dict] | None,
    batch: Mapping | None = None,
    keep: set[int] | None = None,
) -> dict:
    """Decode one task; `keep` limits the frames written (others land from another task), None = all."""
    api = session.api
    out = cvat_dir(run) / "annotations"
    index_by_name = {c["name"]: int(c["index"]) for c in classes}
    names_by_index = {int(c["index"]): c["name"] for c in classes}
    labels = session.list_all(f"list labels of task {task_id}", api.labels_api.list, task_id=task_id)
    index_by_label = {int(lab["id"]): index_by_name.get(lab["name"], IGNORE) for lab in labels}
    name_by_label = {int(lab["id"]): lab["name"] for lab in labels}
    meta = session.call(f"read frames of task {task_id}", api.tasks_api.retrieve_data_meta, task_id)
    frames = meta.get("frames") or []
    deleted = {int(f) for f in meta.get("deleted_frames") or []}
    ids = _frame_ids(task_id, frames, upload_task, taken)

    shape_counts: dict[str, int] = {}
    if fmt == "api":
        anns = session.call(f"read annotations of task {task_id}", api.tasks_api.retrieve_annotations, task_id)
        by_frame = shapes_by_frame(anns)
        archive_masks, lut = None, None
    else:
        by_frame = {}
        with tempfile.TemporaryDirectory(dir=cvat_dir(run)) as tmp:
            archive_masks, archive_classes = _export_masks(session, task_id, fmt, Path(tmp))
        lut = remap_lut(archive_classes, index_by_name)
    # pre-labels: the kept copy of the upload (its batch's classes), or infer/ for receipts of agir before batches
    legacy_lut = remap_lut(pre_classes, index_by_name) if pre_classes else None
    batch_lut = remap_lut(batch["classes"], index_by_name) if batch and batch.get("classes") else None
    uploaded = {int(f["frame"]): f for f in (upload_task or {}).get("frames", [])}

    entry: dict[str, Any] = {"id": task_id, "name": state["task"].get("name"), "status": state["task"].get("status")}
    frames_out, failed, changes, pixels = [], [], [], {}
    for i, f in enumerate(tqdm(frames, desc=f"download-cvat task {task_id}", unit="frame", disable=None, leave=False)):
        if i in deleted or (keep is not None and i not in keep):
            continue
        rid = ids[i]
        up = uploaded.get(i)
        w, h = int(f["width"]), int(f["height"])
        try:
            if archive_masks is None:
                shapes = by_frame.get(i, [])
                for s in shapes:
                    if not s.get("outside"):
                        lname = name_by_label.get(int(s["label_id"]), str(s["label_id"]))
                        shape_counts[lname] = shape_counts.get(lname, 0) + 1
                mask = rasterise(shapes, w, h, index_by_label)
            else:
                stem = Path(str(f["name"])).stem
                if stem not in archive_masks:
                    raise AgirError(f"frame {f['name']!r} missing from the {fmt} export")
                mask = lut[archive_masks[stem]]
                if mask.shape != (h, w):
                    raise AgirError(f"export mask {mask.shape[::-1]} != frame size {w}x{h}")
        except (AgirError, ValueError) as exc:
            failed.append({"frame": i, "record_id": rid, "reason": str(exc)})
            log.warning("task %s frame %d (%s): %s", task_id, i, rid, exc)
            continue
        write_mask(out / "masks" / f"{rid}.png", mask, classes)
        _write_image(session, run, task_id, i, rid, up, out / "images" / f"{rid}.jpg")
        for name, n in label_pixels(mask, names_by_index).items():
            pixels[name] = pixels.get(name, 0) + n
        pre_path, pre_lut = None, None
        if up and up.get("mask"):
            pre_path, pre_lut = run / up["mask"], batch_lut
        elif up:
            pre_path, pre_lut = run / "infer" / "masks" / f"{rid}.png", legacy_lut
        if pre_lut is not None and pre_path is not None and pre_path.exists():
            change = frame_change(pre_lut[read_mask(pre_path)], mask, names_by_index)
            changes.append({"record_id": rid, **change})
        row = {"frame": i, "name": os.path.basename(str(f["name"])), "record_id": rid}
        if up and up.get("image_id"):
            row["image_id"] = up["image_id"]
        frames_out.append(row)
    entry.update(
        {
            "frames": frames_out,
            "deleted_frames": sorted(deleted),
            "failed": failed,
            "stats": {
                "frames": len(frames_out),
                "frames_deleted": len(deleted),
                "frames_failed": len(failed),
                "shapes_per_label": dict(sorted(shape_counts.items())) if fmt == "api" else None,
                "pixels_per_label": dict(sorted(pixels.items())),
                "changes": summarise_changes(changes),
                "changed_fraction_per_frame": {c["record_id"]: c["changed_fraction"] for c in changes},
            },
        }
    )
    return entry


def _write_image(session: CvatSession, run: Path, task_id: int, frame: int, rid: str, up: Mapping | None, dest: Path) -> None:
    """The exact pixels that were uploaded (CVAT's stored copy may be re-encoded): the copy kept at upload time,
    infer/ for receipts of agir before batches, else the frame from the server."""
    src = None
    if up and up.get("image"):
        src = run / up["image"]
    elif up:
        src = run / "infer" / "images" / f"{rid}.jpg"
    if src is not None and src.exists():
        write_bytes(dest, src.read_bytes())
        return
    data = session.call(
        f"download frame {frame} of task {task_id}", session.api.tasks_api.retrieve_data, task_id, type="frame", number=frame, quality="original"
    )
    if not isinstance(data, bytes | bytearray):
        raise AgirError(f"CVAT {session.host}: frame {frame} of task {task_id} came back as {type(data).__name__}, not an image")
    if data[:3] == b"\xff\xd8\xff":
        write_bytes(dest, bytes(data))
    else:
        with tempfile.NamedTemporaryFile(suffix=".img") as fh:
            fh.write(data)
            fh.flush()
            write_bytes(dest, encode_image(read_image(fh.name), ".jpg", 95))


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
    cfg: Mapping[str, Any], run: str | os.PathLike, refresh: bool = False, *, session: CvatSession | None = None
) -> dict:
    """Download refined annotations of this round; writes cvat/annotations/, cvat/download.json, metrics["download"].

    Needs no cvat/upload.json when cvat_download.task_ids or project_id is set (the upload receipts are still
    used, when present, to map frames to record ids and to find the uploaded images and pre-labels).
    """
    t0 = time.perf_counter()
    run = Path(run)
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
        classes = folder_classes(batches, labels)
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
