"""upload-cvat: inference outputs -> CVAT tasks with pre-annotations, and the `cvat/upload.json` receipt.

Idempotent by construction:
- every task's inputs (frame ids, image and mask bytes, upload settings) are fingerprinted; a task in
  the receipt with the same fingerprint is left alone;
- the receipt is rewritten after each finished task, so a crash loses at most the task in flight;
- a task that exists on the server under the planned name but is missing from the receipt (crash
  between creation and receipt) is found by name and reused when its frames are right (its
  annotations are replaced with PUT), or deleted and recreated when its data never arrived;
- changed inputs start a new revision: new tasks with an `-r{N}` suffix; the old ones stay untouched
  on the server and are listed under `superseded` in the receipt.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cvat_sdk.api_client import models
from cvat_sdk.core.uploading import DataUploader
from tqdm import tqdm

from agir.cvat.client import CvatHttpError, CvatSession, session_from_config
from agir.cvat.shapes import mask_shapes
from agir.errors import AgirError
from agir.logs import get_logger
from agir.masks import read_classes, read_mask
from agir.runs import file_lock, read_json, read_jsonl, write_json

log = get_logger("cvat.upload")

RECEIPT_VERSION = 1
TASK_OPTION_KEYS = ("overlap", "subset", "bug_tracker", "assignee_id")
DATA_OPTION_KEYS = ("chunk_size", "use_cache", "copy_data", "use_zip_chunks", "storage_method")


def cvat_dir(run: Path) -> Path:
    return Path(run) / "cvat"


def update_metrics(run: Path, key: str, values: Mapping[str, Any]) -> Path:
    """Upload and download keep their statistics under their own key of the shared cvat/metrics.json."""
    path = cvat_dir(run) / "metrics.json"
    with file_lock(cvat_dir(run) / ".metrics.lock"):
        current = read_json(path) if path.exists() else {}
        current[key] = dict(values)
        write_json(path, current)
    return path


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload_settings(cfg: Mapping[str, Any]) -> dict:
    """The settings that change what lands in CVAT (part of every task fingerprint)."""
    up = cfg.get("cvat_upload") or {}
    return {
        k: up.get(k)
        for k in ("segment_size", "image_quality", "shape", "instances", "polygon_tolerance", "task_options", "data_options")
    }


def collect_frames(run: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(frames to upload, classes of infer/masks, skipped records with reasons) from the infer outputs."""
    infer = Path(run) / "infer"
    manifest = infer / "manifest.jsonl"
    if not manifest.exists():
        raise AgirError(f"{manifest}: missing; run infer-seg for this round first (agir-cvtoolkit infer-seg)")
    classes = read_classes(infer / "masks")
    frames, skipped, seen = [], [], set()
    for rec in read_jsonl(manifest):
        rid = str(rec.get("id", ""))
        if rec.get("status") != "ok":
            continue
        image, mask = infer / "images" / f"{rid}.jpg", infer / "masks" / f"{rid}.png"
        if rid in seen:
            skipped.append({"id": rid, "reason": "duplicate id in infer/manifest.jsonl"})
            continue
        missing = [p.name for p in (image, mask) if not p.exists()]
        if missing:
            skipped.append({"id": rid, "reason": f"missing {', '.join(missing)} under {infer}"})
            continue
        seen.add(rid)
        frames.append({"id": rid, "name": image.name, "image": image, "mask": mask})
    if skipped:
        log.warning("%d inference record(s) skipped: %s", len(skipped), "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:5]))
    if not frames:
        raise AgirError(f"{manifest}: no record with status ok and its image+mask; nothing to upload")
    return frames, classes, skipped


def plan_tasks(frames: list[dict], cfg: Mapping[str, Any], classes: list[dict]) -> list[dict]:
    size = int((cfg.get("cvat_upload") or {}).get("max_frames_per_task", 50))
    settings = json.dumps(upload_settings(cfg), sort_keys=True, default=str)
    class_key = json.dumps([(c["index"], c["name"]) for c in classes])
    plans = []
    for n, start in enumerate(range(0, len(frames), size), start=1):
        chunk = frames[start : start + size]
        h = hashlib.sha256((settings + class_key).encode())
        for f in chunk:
            h.update(f"{f['id']}|{_sha1_file(f['image'])}|{_sha1_file(f['mask'])}\n".encode())
        plans.append({"n": n, "frames": chunk, "fingerprint": h.hexdigest()[:20]})
    return plans


def task_name(cfg: Mapping[str, Any], n: int, revision: int) -> str:
    tmpl = (cfg.get("cvat_upload") or {}).get("task_name_template") or "{project}/{subname}/part-{n:03d}"
    proj = cfg.get("project") or {}
    try:
        name = tmpl.format(project=proj.get("name"), subname=proj.get("subname"), n=n, rev=revision)
    except (KeyError, IndexError, ValueError) as exc:
        raise AgirError(
            f"cvat_upload.task_name_template {tmpl!r}: {exc}; use the fields {{project}}, {{subname}}, {{n}}, {{rev}}"
        ) from None
    if revision > 1 and "{rev" not in tmpl:
        name += f"-r{revision}"
    return name


# ---------------------------------------------------------------- project and labels


def ensure_project(session: CvatSession, cfg: Mapping[str, Any], classes: Sequence[Mapping]) -> tuple[dict, dict[str, int]]:
    """The project (by id, or get-or-create by name) with every class as a label; returns (project, name->label id)."""
    api = session.api
    ccfg = cfg.get("cvat") or {}
    if ccfg.get("project_id"):
        project = session.call(f"open project {ccfg['project_id']} (cvat.project_id)", api.projects_api.retrieve, int(ccfg["project_id"]))
    else:
        name = ccfg.get("project_name")
        if not name:
            raise AgirError("cvat.project_id and cvat.project_name are both empty; set one of them in config")
        found = [p for p in session.list_all(f"find project {name!r}", api.projects_api.list, name=name) if p.get("name") == name]
        if len(found) > 1:
            ids = ", ".join(str(p["id"]) for p in found)
            raise AgirError(f"CVAT {session.host}: several projects are named {name!r} ({ids}); set cvat.project_id")
        if found:
            project = found[0]
        else:
            spec = models.ProjectWriteRequest(
                name=name,
                labels=[models.PatchedLabelRequest(name=c["name"], color=c["color"], type="any") for c in classes],
            )
            project = session.call(f"create project {name!r}", api.projects_api.create, spec)
            log.info("created CVAT project %s (%s)", project["id"], name)
    labels = project_labels(session, int(project["id"]))
    missing = [c for c in classes if c["name"] not in labels]
    if missing:
        # adding labels through a partial update never deletes or renames the existing ones
        spec = models.PatchedProjectWriteRequest(
            labels=[models.PatchedLabelRequest(name=c["name"], color=c["color"], type="any") for c in missing]
        )
        session.call(f"add labels to project {project['id']}", api.projects_api.partial_update, int(project["id"]), patched_project_write_request=spec)
        log.info("added labels %s to project %s", ", ".join(c["name"] for c in missing), project["id"])
        labels = project_labels(session, int(project["id"]))
        still = [c["name"] for c in missing if c["name"] not in labels]
        if still:
            raise AgirError(f"CVAT {session.host}: project {project['id']} did not accept labels {still}; check your rights on it")
    return project, labels


def project_labels(session: CvatSession, project_id: int) -> dict[str, int]:
    rows = session.list_all(f"list labels of project {project_id}", session.api.labels_api.list, project_id=project_id)
    return {r["name"]: int(r["id"]) for r in rows if not r.get("parent_id")}


# ---------------------------------------------------------------- tasks


def find_tasks(session: CvatSession, project_id: int, name: str) -> list[dict]:
    rows = session.list_all(f"find task {name!r}", session.api.tasks_api.list, project_id=project_id, name=name)
    return [t for t in rows if t.get("name") == name]


def frame_names(session: CvatSession, task_id: int) -> list[str]:
    meta = session.call(f"read frames of task {task_id}", session.api.tasks_api.retrieve_data_meta, task_id)
    return [os.path.basename(str(f["name"])) for f in meta.get("frames") or []]


def delete_task(session: CvatSession, task_id: int, why: str) -> None:
    log.warning("deleting CVAT task %s: %s", task_id, why)
    session.call(f"delete task {task_id}", session.api.tasks_api.destroy, task_id)


def create_task(session: CvatSession, cfg: Mapping[str, Any], project_id: int, name: str, frames: list[dict]) -> int:
    up = cfg.get("cvat_upload") or {}
    api = session.api
    options = {k: v for k, v in (up.get("task_options") or {}).items() if k in TASK_OPTION_KEYS and v is not None}
    spec = models.TaskWriteRequest(name=name, project_id=project_id, segment_size=int(up.get("segment_size", 10)), **options)
    task = session.call(f"create task {name!r}", api.tasks_api.create, spec)
    tid = int(task["id"])
    log.info("created task %s %r; uploading %d images", tid, name, len(frames))
    data = {k: v for k, v in (up.get("data_options") or {}).items() if k in DATA_OPTION_KEYS and v is not None}
    data.setdefault("use_cache", True)
    url = session.client.api_map.make_endpoint_url(api.tasks_api.create_data_endpoint.path, kwsub={"id": tid})

    def send():
        return DataUploader(session.client).upload_files(
            url,
            [Path(f["image"]) for f in frames],
            image_quality=int(up.get("image_quality", 90)),
            # predefined: the server keeps our order (the SDK sends upload_file_order for it)
            sorting_method="predefined",
            **data,
        )

    try:
        resp = session._timed(send)
    except AgirError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise session._error(f"upload images of task {tid}", exc) from None
    rq_id = (json.loads(resp.data or b"{}") or {}).get("rq_id")
    try:
        if not rq_id:
            raise CvatHttpError("no request id", 404)
        session.wait_request(rq_id, f"creation of task {tid}")
    except CvatHttpError as exc:
        if exc.status != 404:
            raise
        # servers without /api/requests for task creation: watch the task until its frames appear
        _wait_task_size(session, tid, len(frames))
    return tid


def _wait_task_size(session: CvatSession, task_id: int, size: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        task = session.call(f"read task {task_id}", session.api.tasks_api.retrieve, task_id)
        if int(task.get("size") or 0) >= size:
            return
        if time.monotonic() > deadline:
            raise AgirError(f"CVAT {session.host}: task {task_id} still has no data after {timeout:.0f}s; check the server")
        time.sleep(session.poll_seconds)


def verify_order(session: CvatSession, task_id: int, expected: list[str]) -> None:
    got = frame_names(session, task_id)
    if got == expected:
        return
    where = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    detail = (
        f"frame {where} is {got[where]!r}, expected {expected[where]!r}"
        if where < min(len(got), len(expected))
        else f"{len(got)} frames, expected {len(expected)}"
    )
    delete_task(session, task_id, "frame order mismatch")
    raise AgirError(
        f"CVAT {session.host}: task {task_id} frames are not in upload order ({detail}); the task was deleted. "
        "The server did not honour sorting_method=predefined; check its version and rerun"
    )


def _shape_models(shapes: list[dict]) -> list:
    # _check_type=False: the points lists are ours (ints/floats) and the per-element type check
    # of the generated models costs ~15 ms per RLE shape
    return [
        models.LabeledShapeRequest(
            type=models.ShapeType(s["type"]),
            frame=s["frame"],
            label_id=s["label_id"],
            points=s["points"],
            occluded=False,
            z_order=0,
            source="auto",
            attributes=[],
            _check_type=False,
        )
        for s in shapes
    ]


def upload_annotations(
    session: CvatSession,
    cfg: Mapping[str, Any],
    task_id: int,
    frames: list[dict],
    label_by_index: Mapping[int, int],
    timing: dict,
) -> dict:
    """Encode pre-labels and send them in chunks: PUT (replace) first, then PATCH create."""
    up = cfg.get("cvat_upload") or {}
    chunk = int(up.get("chunk_size", 20))
    api = session.api
    stats = {"shapes": 0, "bytes": 0}
    first = True
    for start in range(0, len(frames), chunk):
        t0 = time.perf_counter()
        shapes: list[dict] = []
        for i, f in enumerate(frames[start : start + chunk], start=start):
            shapes.extend(
                mask_shapes(
                    read_mask(f["mask"]),
                    i,
                    label_by_index,
                    shape=up.get("shape", "mask"),
                    instances=bool(up.get("instances", False)),
                    polygon_tolerance=float(up.get("polygon_tolerance", 1.5)),
                )
            )
        body = _shape_models(shapes)
        timing["encode_seconds"] += time.perf_counter() - t0
        stats["shapes"] += len(shapes)
        stats["bytes"] += sum(len(json.dumps(s["points"])) + 120 for s in shapes)  # JSON body (+ per-shape fields)
        if first:
            data = models.LabeledDataRequest(version=0, shapes=body, tags=[], tracks=[], _check_type=False)
            session.call(f"set annotations of task {task_id}", api.tasks_api.update_annotations, task_id, labeled_data_request=data)
            first = False
        elif body:
            data = models.PatchedLabeledDataRequest(version=0, shapes=body, tags=[], tracks=[], _check_type=False)
            session.call(
                f"add annotations to task {task_id}",
                api.tasks_api.partial_update_annotations,
                "create",
                task_id,
                patched_labeled_data_request=data,
            )
    return stats


def task_jobs(session: CvatSession, task_id: int) -> list[dict]:
    rows = session.list_all(f"list jobs of task {task_id}", session.api.jobs_api.list, task_id=task_id)
    return [{"id": int(j["id"]), "start_frame": j.get("start_frame"), "stop_frame": j.get("stop_frame")} for j in rows]


# ---------------------------------------------------------------- the stage


def _still_there(session: CvatSession, task_id: int) -> bool:
    try:
        session.call(f"read task {task_id}", session.api.tasks_api.retrieve, task_id)
    except CvatHttpError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _load_receipt(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        log.warning("%s is unreadable; starting a new receipt", path)
        return None


def run_upload_stage(cfg: Mapping[str, Any], run: str | os.PathLike, *, session: CvatSession | None = None) -> dict:
    """Upload this round's inference outputs to CVAT; writes cvat/upload.json and cvat/metrics.json["upload"]."""
    t_start = time.perf_counter()
    run = Path(run)
    frames, classes, skipped = collect_frames(run)
    plans = plan_tasks(frames, cfg, classes)
    receipt_path = cvat_dir(run) / "upload.json"
    old = _load_receipt(receipt_path)
    timing = {"encode_seconds": 0.0}

    own = session is None
    session = session or session_from_config(cfg)
    try:
        http0, req0 = session.http_seconds, session.requests
        project, labels = ensure_project(session, cfg, classes)
        pid = int(project["id"])
        label_by_index = {int(c["index"]): labels[c["name"]] for c in classes}
        fingerprint = hashlib.sha256("".join(p["fingerprint"] for p in plans).encode()).hexdigest()[:20]

        same_target = old and old.get("server") == session.host and old.get("project_id") == pid
        if same_target and old.get("inputs_fingerprint") == fingerprint:
            revision, superseded = int(old.get("revision", 1)), old.get("superseded", [])
            done = {t["n"]: t for t in old.get("tasks", []) if t.get("fingerprint")}
        elif same_target:
            revision = int(old.get("revision", 1)) + 1
            superseded = old.get("superseded", []) + [{"revision": old.get("revision", 1), "tasks": old.get("tasks", [])}]
            done = {}
            log.warning(
                "inputs changed since the last upload (revision %s); creating new tasks as revision %d — "
                "the earlier tasks stay on the server and are listed under 'superseded' in %s",
                old.get("revision", 1), revision, receipt_path,
            )
        else:
            revision, superseded, done = 1, [], {}

        receipt = {
            "version": RECEIPT_VERSION,
            "server": session.host,
            "server_version": session.server_version,
            "organization": session.creds.organization,
            "project_id": pid,
            "project_name": project.get("name"),
            "labels": labels,
            "classes": classes,
            "revision": revision,
            "inputs_fingerprint": fingerprint,
            "settings": upload_settings(cfg),
            "tasks": [],
            "superseded": superseded,
        }
        counts = {"created": 0, "reused": 0, "unchanged": 0}
        shapes_total = bytes_total = 0
        for plan in tqdm(plans, desc="upload-cvat tasks", unit="task", disable=None):
            name = task_name(cfg, plan["n"], revision)
            expected = [f["name"] for f in plan["frames"]]
            prev = done.get(plan["n"])
            if prev and prev.get("fingerprint") == plan["fingerprint"] and prev.get("name") == name:
                if _still_there(session, int(prev["id"])):
                    receipt["tasks"].append(prev)
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
                    raise AgirError(
                        f"CVAT {session.host}: task {t['id']} is named {name!r} but holds other frames; "
                        "rename or delete it, or change cvat_upload.task_name_template"
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
            stats = upload_annotations(session, cfg, tid, plan["frames"], label_by_index, timing)
            shapes_total += stats["shapes"]
            bytes_total += stats["bytes"] + sum(f["image"].stat().st_size for f in plan["frames"])
            entry = {
                "n": plan["n"],
                "id": tid,
                "name": name,
                "url": session.task_url(tid),
                "fingerprint": plan["fingerprint"],
                "frames": [{"frame": i, "name": f["name"], "record_id": f["id"]} for i, f in enumerate(plan["frames"])],
                "jobs": task_jobs(session, tid),
                "shapes": stats["shapes"],
            }
            receipt["tasks"].append(entry)
            # the receipt after each task: a crash later never orphans this one
            write_json(receipt_path, {**receipt, "complete": False})
            print(f"CVAT task {tid} {name}: {entry['url']}", flush=True)
            log.info("task %s %r ready: %d frames, %d shapes: %s", tid, name, len(plan["frames"]), stats["shapes"], entry["url"])
        receipt["complete"] = True
        write_json(receipt_path, receipt)
        http = session.http_seconds - http0
        nreq = session.requests - req0
    finally:
        if own:
            session.close()

    seconds = time.perf_counter() - t_start
    uploaded = sum(len(p["frames"]) for p, t in zip(plans, receipt["tasks"]))
    metrics = {
        "server": receipt["server"],
        "server_version": receipt["server_version"],
        "project_id": receipt["project_id"],
        "revision": revision,
        "tasks": len(receipt["tasks"]),
        "tasks_created": counts["created"],
        "tasks_reused": counts["reused"],
        "tasks_unchanged": counts["unchanged"],
        "frames": uploaded,
        "frames_sent": sum(len(p["frames"]) for p in plans if not (done.get(p["n"]) and done[p["n"]].get("fingerprint") == p["fingerprint"])),
        "skipped": skipped,
        "shapes": sum(t.get("shapes", 0) for t in receipt["tasks"]),
        "shapes_sent": shapes_total,
        "bytes": bytes_total,
        "requests": nreq,
        "seconds": round(seconds, 3),
        "encode_seconds": round(timing["encode_seconds"], 3),
        "http_seconds": round(http, 3),
        "frames_per_s": round(uploaded / seconds, 3) if seconds > 0 else None,
        "task_urls": [t["url"] for t in receipt["tasks"]],
    }
    update_metrics(run, "upload", metrics)
    return metrics
