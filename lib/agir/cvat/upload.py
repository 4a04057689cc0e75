"""upload-cvat: inference outputs -> CVAT tasks with pre-annotations, and the `cvat/upload.json` receipt.

Idempotent by construction:
- every task's inputs (frame ids, image and mask bytes, upload settings) are fingerprinted; a task in
  the receipt with the same fingerprint is left alone;
- the receipt is rewritten after finished tasks (each task, or at most ~5 % of the upload's time in a big
  round), and on any error, so a crash loses at most the tasks in flight (found by name on the rerun, below);
- a task that exists on the server under the planned name but is missing from the receipt (crash
  between creation and receipt) is found by name and reused when its frames are right (its
  annotations are replaced with PUT), or deleted and recreated when its data never arrived;
- changed inputs start a new revision: new tasks with an `-r{N}` suffix; the old ones stay untouched
  on the server and are listed under `superseded` in the receipt.

Several uploads in one round accumulate. Each upload is a *batch* with its own receipt
`cvat/batches/{k:03d}.json` (written atomically after every task, never deleted here: Snakemake deletes
the declared `cvat/upload.json` before rerunning the rule, so the history cannot live there). A batch is
identified by its record ids (in order) plus the fingerprint of its inputs: the same records with the same
inputs resume that batch, the same records with changed pre-labels make a new batch that is the next
revision of the same *group*, other records make a new group. `cvat/upload.json` is rebuilt from all
batch receipts after every task (see `agir.cvat.receipts.combined_receipt`). Every uploaded image and pre-label mask is
kept (hard link, or copy) under `cvat/uploaded/`, so the download finds the exact pixels and pre-labels
of a batch after a later inference replaced `infer/`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agir.cvat import REVIEW_LABEL
from agir.cvat.client import CvatSession, session_from_config
from agir.cvat.plan import (
    base_task_name,
    choose_batch,
    collect_frames,
    plan_tasks,
    project_label_specs,
    selected_ids,
    task_name,
    upload_settings,
)
from agir.cvat.preannotate import shape_models as _shape_models  # noqa: F401 - benchmarks/cvat_bench.py imports it here
from agir.cvat.preannotate import upload_annotations
from agir.cvat.receipts import (  # noqa: F401 - re-exported: the upload's public names stay importable from here
    RECEIPT_VERSION,
    base_names,
    batch_path,
    batches_dir,
    combined_receipt,
    current_batches,
    cvat_dir,
    frame_entries,
    frames_key,
    keep_uploaded,
    load_batches,
    round_classes,
    update_metrics,
    uploaded_dir,
)
from agir.cvat.tasks import (  # noqa: F401 - re-exported
    create_task,
    delete_task,
    ensure_project,
    find_tasks,
    frame_names,
    project_labels,
    still_there,
    task_jobs,
    verify_order,
)
from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import file_lock, write_json

log = get_logger("cvat.upload")


def run_upload_stage(
    cfg: Mapping[str, Any],
    run: str | os.PathLike,
    *,
    session: CvatSession | None = None,
    classes: str | os.PathLike | Sequence[Mapping] | None = None,
) -> dict:
    """Upload this round's inference outputs to CVAT as one batch.

    `classes`: the round's class set (the rule's input `{run}/classes.json`, or a class list); every class becomes
    a project label. Without it `{run}/classes.json` when present, else the pre-labels' classes (infer/masks).
    Writes cvat/batches/{k:03d}.json, the combined cvat/upload.json, cvat/uploaded/ and cvat/metrics.json["upload"].
    """
    run = Path(run)
    with file_lock(cvat_dir(run) / ".upload.lock"):
        return _upload(cfg, run, session, round_classes(run, classes))


def _upload(cfg: Mapping[str, Any], run: Path, session: CvatSession | None, round_set: list[dict] | None) -> dict:
    t_start = time.perf_counter()
    frames, classes, skipped = collect_frames(run, selected_ids(cfg, run))
    hints = bool((cfg.get("cvat_upload") or {}).get("review_hints"))
    label_specs = project_label_specs(round_set, classes, hints)
    plans = plan_tasks(frames, cfg, classes)
    receipt_path = cvat_dir(run) / "upload.json"
    batches = load_batches(run)
    if batches and batches[0].get("legacy") and not batches_dir(run).exists():
        for b in batches:  # keep the history before upload.json is rewritten
            write_json(batch_path(run, int(b["batch"])), b)
    timing = {"encode_seconds": 0.0}
    fixed_name = (cfg.get("cvat_upload") or {}).get("task_name")

    own = session is None
    session = session or session_from_config(cfg)
    saving = {"at": 0.0, "cost": 0.0, "pending": False}
    try:
        http0, req0 = session.http_seconds, session.requests
        project, labels, labels_added = ensure_project(session, cfg, label_specs)
        pid = int(project["id"])
        label_by_index = {int(c["index"]): labels[c["name"]] for c in classes}
        review_label = labels[REVIEW_LABEL] if hints else None
        fingerprint = hashlib.sha256("".join(p["fingerprint"] for p in plans).encode()).hexdigest()[:20]
        record_ids = [f["id"] for f in frames]
        key = frames_key(record_ids)
        resumed, k, group, revision = choose_batch(batches, session.host, pid, key, fingerprint, receipt_path)
        done = {t["n"]: t for t in (resumed or {}).get("tasks", []) if t.get("fingerprint")}
        others = [b for b in batches if int(b["batch"]) != k]
        taken = set().union(*(base_names(b) for b in others if int(b.get("group", b["batch"])) < group))

        batch = {
            "version": RECEIPT_VERSION,
            "batch": k,
            "group": group,
            "revision": revision,
            "server": session.host,
            "server_version": session.server_version,
            "organization": session.creds.organization,
            "project_id": pid,
            "project_name": project.get("name"),
            "labels": labels,
            "classes": classes,  # the pre-labels' classes (indices of the kept masks under cvat/uploaded/)
            "round_classes": round_set,
            "record_ids": record_ids,
            "frames_key": key,
            "inputs_fingerprint": fingerprint,
            "settings": upload_settings(cfg),
            "started": (resumed or {}).get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tasks": [],
        }

        def save(complete: bool, every_task: bool = True) -> None:
            # Rewriting the whole receipt after every task is quadratic in a round of thousands of frames: between
            # tasks, save only when the time since the last save is >= 20x what it cost (<= ~5 % of the upload).
            # Tasks finished since are saved on any exception (finally below), or found by name on a rerun.
            started = time.perf_counter()
            if not every_task and started - saving["at"] < 20 * saving["cost"]:
                saving["pending"] = True
                return
            # one line: json's C encoder, 10x faster than indented output on receipts of thousands of frames
            write_json(batch_path(run, k), {**batch, "complete": complete}, indent=None)
            write_json(receipt_path, combined_receipt([*others, {**batch, "complete": complete}]), indent=None)
            saving.update(at=time.perf_counter(), cost=time.perf_counter() - started, pending=False)

        counts = {"created": 0, "reused": 0, "unchanged": 0}
        shapes_total = bytes_total = 0
        for plan in tqdm(plans, desc="upload-cvat tasks", unit="task", disable=None):
            base, _ = base_task_name(cfg, plan["n"], revision, group=group, parts=len(plans))
            name = task_name(cfg, plan["n"], revision, group=group, parts=len(plans), taken=taken)
            expected = [f["name"] for f in plan["frames"]]
            prev = done.get(plan["n"])
            if prev and prev.get("fingerprint") == plan["fingerprint"] and prev.get("name") == name:
                if still_there(session, int(prev["id"])):
                    prev["frames"] = frame_entries(run, plan["frames"])  # the kept copies (re-made if removed)
                    batch["tasks"].append(prev)
                    counts["unchanged"] += 1
                    log.info("task %s %r unchanged: %s", prev["id"], name, prev.get("url"))
                    continue
                log.warning("task %s %r from the receipt is gone from the server; creating it again", prev["id"], name)
            tid = None
            for t in find_tasks(session, pid, name):
                # left over by a run that crashed before writing its receipt
                if int(t.get("size") or 0) == 0:
                    delete_task(session, int(t["id"]), f"{name!r} has no data (an interrupted upload)")
                    continue
                names = frame_names(session, int(t["id"]))
                if names != expected:
                    key_hint = "cvat_upload.task_name" if fixed_name else "cvat_upload.task_name_template"
                    raise AgirError(
                        f"CVAT {session.host}: task {t['id']} is named {name!r} but holds other frames; "
                        f"rename or delete it, or change {key_hint}"
                    )
                if tid is not None:
                    delete_task(session, int(t["id"]), f"duplicate of task {tid} {name!r}")
                    continue
                tid = int(t["id"])
                counts["reused"] += 1
                log.info("reusing task %s %r found on the server (its annotations are replaced)", tid, name)
            if tid is None:
                tid = create_task(session, cfg, pid, name, plan["frames"])
                counts["created"] += 1
                verify_order(session, tid, expected)
            stats = upload_annotations(session, cfg, tid, plan["frames"], label_by_index, timing, review_label)
            shapes_total += stats["shapes"]
            bytes_total += stats["bytes"] + sum(f["image"].stat().st_size for f in plan["frames"])
            entry = {
                "n": plan["n"],
                "id": tid,
                "name": name,
                "base_name": base,
                "revision": revision,
                "url": session.task_url(tid),
                "fingerprint": plan["fingerprint"],
                "frames": frame_entries(run, plan["frames"]),
                "jobs": task_jobs(session, tid),
                "shapes": stats["shapes"],
                "review_boxes": stats.get("review_boxes", 0),
            }
            batch["tasks"].append(entry)
            # the receipts after each task (throttled, see save): a crash later never orphans this one
            save(False, every_task=False)
            print(f"CVAT task {tid} {name}: {entry['url']}", flush=True)
            log.info("task %s %r ready: %d frames, %d shapes: %s", tid, name, len(plan["frames"]), stats["shapes"], entry["url"])
        save(True)
        http = session.http_seconds - http0
        nreq = session.requests - req0
    finally:
        if saving["pending"]:
            save(False)
        if own:
            session.close()

    seconds = time.perf_counter() - t_start
    uploaded = sum(len(p["frames"]) for p, t in zip(plans, batch["tasks"]))
    metrics = {
        "server": batch["server"],
        "server_version": batch["server_version"],
        "project_id": batch["project_id"],
        "batch": k,
        "batches": len(others) + 1,
        "group": group,
        "revision": revision,
        "tasks": len(batch["tasks"]),
        "tasks_created": counts["created"],
        "tasks_reused": counts["reused"],
        "tasks_unchanged": counts["unchanged"],
        "frames": uploaded,
        "frames_sent": sum(len(p["frames"]) for p in plans if not (done.get(p["n"]) and done[p["n"]].get("fingerprint") == p["fingerprint"])),
        "skipped": skipped,
        "shapes": sum(t.get("shapes", 0) for t in batch["tasks"]),
        "shapes_sent": shapes_total,
        "review_boxes": sum(t.get("review_boxes", 0) for t in batch["tasks"]),
        "labels_added": labels_added,
        "bytes": bytes_total,
        "requests": nreq,
        "seconds": round(seconds, 3),
        "encode_seconds": round(timing["encode_seconds"], 3),
        "http_seconds": round(http, 3),
        "frames_per_s": round(uploaded / seconds, 3) if seconds > 0 else None,
        "task_urls": [t["url"] for t in batch["tasks"]],
    }
    update_metrics(run, "upload", metrics)
    return metrics
