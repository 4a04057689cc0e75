"""The download's status gate: which tasks to download, whether people finished them, and which task each
uploaded record lands from (revisions and batches that share records). Reads the server, writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agir.cvat.client import CvatHttpError, CvatSession
from agir.errors import AgirError
from agir.logs import get_logger

log = get_logger("cvat.download")


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
