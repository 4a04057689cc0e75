"""Server calls of the upload: the project and its labels, tasks (find, create with images, verify order,
delete) and their jobs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cvat_sdk.api_client import models
from cvat_sdk.core.uploading import DataUploader

from agir.cvat.client import CvatHttpError, CvatSession
from agir.errors import AgirError
from agir.logs import get_logger

log = get_logger("cvat.upload")

TASK_OPTION_KEYS = ("overlap", "subset", "bug_tracker", "assignee_id")
DATA_OPTION_KEYS = ("chunk_size", "use_cache", "copy_data", "use_zip_chunks", "storage_method")


# ---------------------------------------------------------------- project and labels


def _label_request(c: Mapping) -> models.PatchedLabelRequest:
    return models.PatchedLabelRequest(name=c["name"], color=c["color"], type=c.get("type") or "any")


def ensure_project(
    session: CvatSession, cfg: Mapping[str, Any], classes: Sequence[Mapping]
) -> tuple[dict, dict[str, int], list[str]]:
    """The project (by id, or get-or-create by name) with every class as a label.

    Returns (project, label name -> id for every label of the project, names of the labels this call added).

    `classes`: `{name, color[, type]}` per label. Missing labels are added to an existing project with one partial
    update carrying only the new labels (no ids), the way CVAT 2.x adds labels: existing labels keep their ids and
    colours, nothing is renamed or deleted.
    """
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
                labels=[_label_request(c) for c in classes],
            )
            project = session.call(f"create project {name!r}", api.projects_api.create, spec)
            log.info("created CVAT project %s (%s) with labels %s", project["id"], name, ", ".join(c["name"] for c in classes))
            return project, project_labels(session, int(project["id"])), [c["name"] for c in classes]
    labels = project_labels(session, int(project["id"]))
    missing = [c for c in classes if c["name"] not in labels]
    if missing:
        # adding labels through a partial update never deletes or renames the existing ones
        spec = models.PatchedProjectWriteRequest(labels=[_label_request(c) for c in missing])
        session.call(f"add labels to project {project['id']}", api.projects_api.partial_update, int(project["id"]), patched_project_write_request=spec)
        log.info("CVAT project %s: added labels %s (existing labels kept: %s)", project["id"],
                 ", ".join(c["name"] for c in missing), ", ".join(labels) or "none")
        labels = project_labels(session, int(project["id"]))
        still = [c["name"] for c in missing if c["name"] not in labels]
        if still:
            raise AgirError(f"CVAT {session.host}: project {project['id']} did not accept labels {still}; check your rights on it")
    return project, labels, [c["name"] for c in missing]


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


def task_jobs(session: CvatSession, task_id: int) -> list[dict]:
    """Jobs as they are right after the upload; the download compares stage/state/date to tell whether people touched them."""
    rows = session.list_all(f"list jobs of task {task_id}", session.api.jobs_api.list, task_id=task_id)
    keys = ("start_frame", "stop_frame", "stage", "state", "updated_date")
    return [{"id": int(j["id"]), **{k: j.get(k) for k in keys}} for j in rows]


def still_there(session: CvatSession, task_id: int) -> bool:
    try:
        session.call(f"read task {task_id}", session.api.tasks_api.retrieve, task_id)
    except CvatHttpError as exc:
        if exc.status == 404:
            return False
        raise
    return True

