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

Several uploads in one round accumulate. Each upload is a *batch* with its own receipt
`cvat/batches/{k:03d}.json` (written atomically after every task, never deleted here: Snakemake deletes
the declared `cvat/upload.json` before rerunning the rule, so the history cannot live there). A batch is
identified by its record ids (in order) plus the fingerprint of its inputs: the same records with the same
inputs resume that batch, the same records with changed pre-labels make a new batch that is the next
revision of the same *group*, other records make a new group. `cvat/upload.json` is rebuilt from all
batch receipts after every task (see `combined_receipt`). Every uploaded image and pre-label mask is
kept (hard link, or copy) under `cvat/uploaded/`, so the download finds the exact pixels and pre-labels
of a batch after a later inference replaced `infer/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Collection, Mapping, Sequence
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

RECEIPT_VERSION = 2
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


def selected_ids(cfg: Mapping[str, Any], run: Path) -> list[str] | None:
    """The ids the round's selection stage chose (select.strategy other than all), in pick order; else None."""
    if str((cfg.get("select") or {}).get("strategy", "all")) == "all":
        return None
    path = Path(run) / "select" / "selection.json"
    if not path.exists():
        raise AgirError(f"{path}: missing; select.strategy is set, run the selection first (agir-cvtoolkit select)")
    return [str(i) for i in json.loads(path.read_text()).get("selected", [])]


def collect_frames(run: Path, only: list[str] | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """(frames to upload, classes of infer/masks, skipped records with reasons) from the infer outputs.

    `only`: the selected ids (active selection): just those images go to people, in pick order.
    """
    infer = Path(run) / "infer"
    manifest = infer / "manifest.jsonl"
    if not manifest.exists():
        raise AgirError(f"{manifest}: missing; run infer-seg for this round first (agir-cvtoolkit infer-seg)")
    classes = read_classes(infer / "masks")
    frames, skipped, seen = [], [], set()
    lines = read_jsonl(manifest)
    if only is not None:
        by_id = {str(rec.get("id", "")): rec for rec in lines}
        missing_sel = [i for i in only if i not in by_id]
        if missing_sel:
            raise AgirError(f"{manifest}: selected image(s) {', '.join(missing_sel[:5])} have no pre-label; "
                            "rerun infer-seg for this round (agir-cvtoolkit infer-seg)")
        lines = [by_id[i] for i in only]
    for rec in lines:
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
        frame = {"id": rid, "name": image.name, "image": image, "mask": mask}
        if rec.get("image_id") not in (None, "", rid):
            frame["image_id"] = str(rec["image_id"])
        frames.append(frame)
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
            f["image_sha1"], f["mask_sha1"] = _sha1_file(f["image"]), _sha1_file(f["mask"])
            h.update(f"{f['id']}|{f['image_sha1']}|{f['mask_sha1']}\n".encode())
        plans.append({"n": n, "frames": chunk, "fingerprint": h.hexdigest()[:20]})
    return plans


def task_name(
    cfg: Mapping[str, Any], n: int, revision: int, *, group: int = 1, parts: int | None = None, taken: Collection[str] = ()
) -> str:
    """The CVAT task name of part `n` of a batch; see `base_task_name` and the `-b`/`-r` suffix rules."""
    base, has_rev = base_task_name(cfg, n, revision, group=group, parts=parts)
    if base in taken:
        # an earlier batch of this round already used the name (same template or task_name)
        base += f"-b{group}"
    if revision > 1 and not has_rev:
        base += f"-r{revision}"
    return base


def base_task_name(cfg: Mapping[str, Any], n: int, revision: int, *, group: int = 1, parts: int | None = None) -> tuple[str, bool]:
    """(name before the batch/revision suffixes, whether it already holds the revision).

    `cvat_upload.task_name` (a fixed name, the old tool's key) wins over `task_name_template`: `<name>` for a
    one-part batch, `<name>-part-001`, `-part-002`, ... for several parts.
    """
    up = cfg.get("cvat_upload") or {}
    fixed = up.get("task_name")
    if fixed:
        return (str(fixed) if parts == 1 else f"{fixed}-part-{n:03d}"), False
    tmpl = up.get("task_name_template") or "{project}/{subname}/part-{n:03d}"
    proj = cfg.get("project") or {}
    try:
        name = tmpl.format(project=proj.get("name"), subname=proj.get("subname"), n=n, rev=revision, batch=group)
    except (KeyError, IndexError, ValueError) as exc:
        raise AgirError(
            f"cvat_upload.task_name_template {tmpl!r}: {exc}; use the fields {{project}}, {{subname}}, {{n}}, {{rev}}, {{batch}}"
        ) from None
    return name, "{rev" in tmpl


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
    """Jobs as they are right after the upload; the download compares stage/state/date to tell whether people touched them."""
    rows = session.list_all(f"list jobs of task {task_id}", session.api.jobs_api.list, task_id=task_id)
    keys = ("start_frame", "stop_frame", "stage", "state", "updated_date")
    return [{"id": int(j["id"]), **{k: j.get(k) for k in keys}} for j in rows]


# ---------------------------------------------------------------- batches and the combined receipt


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
    combined = _load_receipt(cvat_dir(run) / "upload.json")
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
    keys = ("server", "server_version", "organization", "project_id", "project_name", "labels", "classes",
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


def _frame_entries(run: Path, frames: list[dict]) -> list[dict]:
    out = []
    for i, f in enumerate(frames):
        entry = {"frame": i, "name": f["name"], "record_id": f["id"], **keep_uploaded(run, f)}
        if f.get("image_id"):
            entry["image_id"] = f["image_id"]
        out.append(entry)
    return out


def _base_names(batch: Mapping) -> set[str]:
    names = set()
    for t in batch.get("tasks", []):
        names.add(t.get("base_name") or re.sub(r"-r\d+$", "", str(t.get("name"))))
    return names


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


def _choose_batch(batches: list[dict], host: str, pid: int, key: str, fingerprint: str, receipt_path: Path) -> tuple[dict | None, int, int, int]:
    """(batch to resume or None, batch number, group, revision) for this upload."""
    same = [b for b in batches if b.get("server") == host and b.get("project_id") == pid and b.get("frames_key") == key]
    next_k = max((int(b["batch"]) for b in batches), default=0) + 1
    if same and same[-1].get("inputs_fingerprint") == fingerprint:
        b = same[-1]
        return b, int(b["batch"]), int(b.get("group", 1)), int(b.get("revision", 1))
    if same:
        last = same[-1]
        revision = int(last.get("revision", 1)) + 1
        log.warning(
            "inputs changed since the last upload of these records (batch %s, revision %s); creating new tasks as "
            "revision %d (batch %d) — the earlier tasks stay on the server and are listed under 'superseded' in %s",
            last["batch"], last.get("revision", 1), revision, next_k, receipt_path,
        )
        return None, next_k, int(last.get("group", 1)), revision
    group = max((int(b.get("group", b["batch"])) for b in batches), default=0) + 1
    if batches:
        log.info(
            "this round already has %d upload batch(es); these records are batch %d (group %d) — every batch is downloaded",
            len(batches), next_k, group,
        )
    return None, next_k, group, 1


def run_upload_stage(cfg: Mapping[str, Any], run: str | os.PathLike, *, session: CvatSession | None = None) -> dict:
    """Upload this round's inference outputs to CVAT as one batch.

    Writes cvat/batches/{k:03d}.json, the combined cvat/upload.json, cvat/uploaded/ and cvat/metrics.json["upload"].
    """
    run = Path(run)
    with file_lock(cvat_dir(run) / ".upload.lock"):
        return _upload(cfg, run, session)


def _upload(cfg: Mapping[str, Any], run: Path, session: CvatSession | None) -> dict:
    t_start = time.perf_counter()
    frames, classes, skipped = collect_frames(run, selected_ids(cfg, run))
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
    try:
        http0, req0 = session.http_seconds, session.requests
        project, labels = ensure_project(session, cfg, classes)
        pid = int(project["id"])
        label_by_index = {int(c["index"]): labels[c["name"]] for c in classes}
        fingerprint = hashlib.sha256("".join(p["fingerprint"] for p in plans).encode()).hexdigest()[:20]
        record_ids = [f["id"] for f in frames]
        key = frames_key(record_ids)
        resumed, k, group, revision = _choose_batch(batches, session.host, pid, key, fingerprint, receipt_path)
        done = {t["n"]: t for t in (resumed or {}).get("tasks", []) if t.get("fingerprint")}
        others = [b for b in batches if int(b["batch"]) != k]
        taken = set().union(*(_base_names(b) for b in others if int(b.get("group", b["batch"])) < group))

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
            "classes": classes,
            "record_ids": record_ids,
            "frames_key": key,
            "inputs_fingerprint": fingerprint,
            "settings": upload_settings(cfg),
            "started": (resumed or {}).get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tasks": [],
        }

        def save(complete: bool) -> None:
            write_json(batch_path(run, k), {**batch, "complete": complete})
            write_json(receipt_path, combined_receipt([*others, {**batch, "complete": complete}]))

        counts = {"created": 0, "reused": 0, "unchanged": 0}
        shapes_total = bytes_total = 0
        for plan in tqdm(plans, desc="upload-cvat tasks", unit="task", disable=None):
            base, _ = base_task_name(cfg, plan["n"], revision, group=group, parts=len(plans))
            name = task_name(cfg, plan["n"], revision, group=group, parts=len(plans), taken=taken)
            expected = [f["name"] for f in plan["frames"]]
            prev = done.get(plan["n"])
            if prev and prev.get("fingerprint") == plan["fingerprint"] and prev.get("name") == name:
                if _still_there(session, int(prev["id"])):
                    prev["frames"] = _frame_entries(run, plan["frames"])  # the kept copies (re-made if removed)
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
            stats = upload_annotations(session, cfg, tid, plan["frames"], label_by_index, timing)
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
                "frames": _frame_entries(run, plan["frames"]),
                "jobs": task_jobs(session, tid),
                "shapes": stats["shapes"],
            }
            batch["tasks"].append(entry)
            # the receipts after each task: a crash later never orphans this one
            save(False)
            print(f"CVAT task {tid} {name}: {entry['url']}", flush=True)
            log.info("task %s %r ready: %d frames, %d shapes: %s", tid, name, len(plan["frames"]), stats["shapes"], entry["url"])
        save(True)
        http = session.http_seconds - http0
        nreq = session.requests - req0
    finally:
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
