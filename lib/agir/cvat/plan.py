"""Planning an upload: which frames (infer/ + the selection), their split into tasks with content fingerprints,
task names, and which batch of the round this upload is. No server calls here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from agir.cvat import REVIEW_COLOR, REVIEW_LABEL
from agir.errors import AgirError
from agir.logs import get_logger
from agir.masks import color_for_name, read_classes
from agir.runs import read_jsonl

log = get_logger("cvat.upload")


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload_settings(cfg: Mapping[str, Any]) -> dict:
    """The settings that change what lands in CVAT (part of every task fingerprint)."""
    up = cfg.get("cvat_upload") or {}
    out = {
        k: up.get(k)
        for k in ("segment_size", "image_quality", "shape", "instances", "polygon_tolerance", "task_options", "data_options")
    }
    if up.get("review_hints"):
        # only when on: the fingerprints of tasks uploaded before the key existed stay the same
        out["review_hints"] = True
    return out


def project_label_specs(round_classes: Sequence[Mapping] | None, mask_classes: Sequence[Mapping], hints: bool) -> list[dict]:
    """The labels the CVAT project must have: the round's class set (index order), then any pre-label class missing
    from it (WARNING), then `review` when hints are on. A class may not be named `review` (download ignores it)."""
    specs: list[dict] = []
    for c in sorted(round_classes or [], key=lambda c: int(c["index"])):
        specs.append({"name": str(c["name"]), "color": c.get("color") or color_for_name(str(c["name"])), "type": "any"})
    names = {s["name"] for s in specs}
    extra = [c for c in mask_classes if c["name"] not in names]
    if extra and round_classes is not None:
        log.warning("pre-label class(es) %s are not in the round's class set; adding them as CVAT labels too",
                    ", ".join(c["name"] for c in extra))
    specs += [{"name": c["name"], "color": c.get("color") or color_for_name(c["name"]), "type": "any"} for c in extra]
    if any(s["name"] == REVIEW_LABEL for s in specs):
        raise AgirError(f"a class is named {REVIEW_LABEL!r}, the label of review hints that download ignores; rename it "
                        "(classes.names) so its annotations are kept")
    if hints:
        specs.append({"name": REVIEW_LABEL, "color": REVIEW_COLOR, "type": "rectangle"})
    return specs


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
        frame = {"id": rid, "name": image.name, "image": image, "mask": mask, "review_regions": rec.get("review_regions") or []}
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
    settings_map = upload_settings(cfg)
    hints = bool(settings_map.get("review_hints"))
    settings = json.dumps(settings_map, sort_keys=True, default=str)
    class_key = json.dumps([(c["index"], c["name"]) for c in classes])
    plans = []
    for n, start in enumerate(range(0, len(frames), size), start=1):
        chunk = frames[start : start + size]
        h = hashlib.sha256((settings + class_key).encode())
        for f in chunk:
            f["image_sha1"], f["mask_sha1"] = _sha1_file(f["image"]), _sha1_file(f["mask"])
            h.update(f"{f['id']}|{f['image_sha1']}|{f['mask_sha1']}\n".encode())
            if hints:
                h.update(f"review {json.dumps(f.get('review_regions') or [])}\n".encode())
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


def choose_batch(batches: list[dict], host: str, pid: int, key: str, fingerprint: str, receipt_path: Path) -> tuple[dict | None, int, int, int]:
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

