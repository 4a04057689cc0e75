"""One finished task -> refined class-index masks and images under cvat/annotations/, with its statistics.

Decodes the API annotations (agir.cvat.decode) or a server export; compares each frame with its uploaded
pre-label (agir.cvat.stats).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cvat_sdk.core.downloading import Downloader
from tqdm import tqdm

from agir.cvat import REVIEW_LABEL
from agir.cvat.client import CvatSession
from agir.cvat.decode import decode_archive, rasterise, shapes_by_frame
from agir.cvat.receipts import cvat_dir
from agir.cvat.stats import frame_change, label_pixels, summarise_changes
from agir.errors import AgirError
from agir.images import encode_image, read_image
from agir.logs import get_logger
from agir.masks import IGNORE, read_mask, remap_lut, write_mask
from agir.runs import write_bytes

log = get_logger("cvat.download")


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
    # review hints are never part of a mask: their shapes are left out before painting
    review_ids = {int(lab["id"]) for lab in labels if lab["name"] == REVIEW_LABEL}
    if review_ids and fmt != "api":
        log.info("task %s has %r hints, which a %s export would paint into the masks; decoding it through the API",
                 task_id, REVIEW_LABEL, fmt)
        fmt = "api"
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
                shapes = [s for s in by_frame.get(i, []) if int(s["label_id"]) not in review_ids]
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

