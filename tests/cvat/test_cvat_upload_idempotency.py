"""Upload reruns: nothing new when nothing changed, no duplicates after a crash, new revision on new inputs."""

from __future__ import annotations

import numpy as np
import pytest
from cvat_server.synth import make_infer_outputs

import agir.cvat.tasks as tasks_mod
import agir.cvat.upload as upload_mod
from agir.cvat.upload import run_upload_stage
from agir.errors import AgirError
from agir.masks import read_classes, write_mask
from agir.runs import read_json

TASK_CREATE = r"^/api/tasks/?$"


def _task_names(server):
    return sorted(t["name"] for t in server.tasks.values())


def test_rerun_with_same_inputs_creates_nothing(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=7)
    first = run_upload_stage(cfg, run)
    receipt = (run / "cvat" / "upload.json").read_bytes()
    posts = len(cvat_env.log)
    second = run_upload_stage(cfg, run)
    assert first["tasks_created"] == 2 and second["tasks_created"] == 0 and second["tasks_unchanged"] == 2
    assert second["frames_sent"] == 0 and second["shapes_sent"] == 0
    assert cvat_env.count("POST", TASK_CREATE) == 2
    # the rerun only read: no write of any kind
    assert all(m == "GET" or p.startswith("/api/auth/") for m, p, _ in cvat_env.log[posts:])
    assert (run / "cvat" / "upload.json").read_bytes() == receipt


def test_crash_after_task_creation_leaves_no_duplicate(cvat_env, cfg_factory, monkeypatch):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=12)
    real = upload_mod.upload_annotations
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed between task creation and the receipt")
        return real(*args, **kwargs)

    monkeypatch.setattr(upload_mod, "upload_annotations", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_upload_stage(cfg, run)
    partial = read_json(run / "cvat" / "upload.json")
    assert not partial["complete"] and len(partial["tasks"]) == 1
    assert len(cvat_env.tasks) == 2  # task 2 exists on the server but not in the receipt

    monkeypatch.setattr(upload_mod, "upload_annotations", real)
    again = run_upload_stage(cfg, run)
    assert again["tasks_unchanged"] == 1 and again["tasks_reused"] == 1 and again["tasks_created"] == 1
    assert _task_names(cvat_env) == [f"demo/round_001/part-00{i}" for i in (1, 2, 3)]
    receipt = read_json(run / "cvat" / "upload.json")
    assert receipt["complete"] and [t["id"] for t in receipt["tasks"]] == sorted(cvat_env.tasks)
    # the reused task carries exactly one set of pre-labels
    tid = receipt["tasks"][1]["id"]
    assert len(cvat_env.tasks[tid]["shapes"]) == receipt["tasks"][1]["shapes"]


def test_crash_during_image_upload_is_replaced(cvat_env, cfg_factory, monkeypatch):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=4)

    class Broken(tasks_mod.DataUploader):
        def upload_files(self, *a, **k):
            raise KeyboardInterrupt("killed during the image upload")

    real = tasks_mod.DataUploader
    monkeypatch.setattr(tasks_mod, "DataUploader", Broken)  # the image upload lives in agir.cvat.tasks
    with pytest.raises(KeyboardInterrupt):
        run_upload_stage(cfg, run)
    assert [t["frames"] for t in cvat_env.tasks.values()] == [[]]
    monkeypatch.setattr(tasks_mod, "DataUploader", real)
    again = run_upload_stage(cfg, run)
    assert again["tasks_created"] == 1 and len(cvat_env.tasks) == 1
    assert len(next(iter(cvat_env.tasks.values()))["frames"]) == 4


def test_changed_inputs_create_a_new_revision(cvat_env, cfg_factory, caplog):
    cfg, run = cfg_factory()
    masks = make_infer_outputs(run, n=6)
    run_upload_stage(cfg, run)
    rid = sorted(masks)[0]
    changed = masks[rid].copy()
    changed[:10, :10] = 2
    write_mask(run / "infer" / "masks" / f"{rid}.png", changed, read_classes(run / "infer" / "masks"))
    with caplog.at_level("WARNING"):
        again = run_upload_stage(cfg, run)
    assert again["revision"] == 2 and again["tasks_created"] == 2
    assert "inputs changed since the last upload" in caplog.text
    receipt = read_json(run / "cvat" / "upload.json")
    assert [t["name"] for t in receipt["tasks"]] == ["demo/round_001/part-001-r2", "demo/round_001/part-002-r2"]
    assert len(receipt["superseded"]) == 1 and len(receipt["superseded"][0]["tasks"]) == 2
    assert len(cvat_env.tasks) == 4


def test_frame_order_mismatch_aborts(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=4)
    cvat_env.shuffle_frames = True
    with pytest.raises(AgirError, match=r"not in upload order \(frame 0 is 'rec0003.jpg', expected 'rec0000.jpg'\)"):
        run_upload_stage(cfg, run)
    assert cvat_env.tasks == {}  # the misordered task was removed


def test_existing_labels_are_kept_and_missing_ones_added(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=2)
    from cvat_sdk.api_client import models

    a = cvat_env.annotator
    a.client.projects.create(
        models.ProjectWriteRequest(name="agir-test", labels=[models.PatchedLabelRequest(name="weed", color="#123456"), models.PatchedLabelRequest(name="barley", color="#000001")])
    )
    run_upload_stage(cfg, run)
    labels = {lab["name"]: lab["color"] for lab in cvat_env.labels.values()}
    assert labels["weed"] == "#123456" and labels["barley"] == "#000001"  # untouched
    assert labels["cereal rye"] == "#2a9d8f" and labels["hairy vetch"] == "#e9c46a"  # species colours


@pytest.mark.parametrize("mode", ["polygon", "instances"])
def test_polygon_and_instance_prelabels(cvat_env, cfg_factory, mode):
    up = {"shape": "polygon"} if mode == "polygon" else {"instances": True}
    cfg, run = cfg_factory(cvat_upload=up)
    masks = make_infer_outputs(run, n=3)
    m = run_upload_stage(cfg, run)
    shapes = next(iter(cvat_env.tasks.values()))["shapes"]
    assert m["shapes"] == len(shapes) > 0
    assert {s["type"] for s in shapes} == ({"polygon"} if mode == "polygon" else {"mask"})
    if mode == "instances":
        import cv2

        expected = 0
        for mk in masks.values():
            for c in range(1, 4):
                n, _ = cv2.connectedComponents((mk == c).astype(np.uint8), connectivity=8)
                expected += n - 1
        assert len(shapes) == expected


def test_task_deleted_on_the_server_is_created_again(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=7)
    run_upload_stage(cfg, run)
    gone = read_json(run / "cvat" / "upload.json")["tasks"][0]["id"]
    cvat_env.annotator.client.tasks.remove_by_ids([gone])
    again = run_upload_stage(cfg, run)
    assert again["tasks_unchanged"] == 1 and again["tasks_created"] == 1
    assert _task_names(cvat_env) == ["demo/round_001/part-001", "demo/round_001/part-002"]


def test_record_without_its_mask_is_skipped_with_a_reason(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=4, failed=1)
    (run / "infer" / "masks" / "rec0001.png").unlink()
    m = run_upload_stage(cfg, run)
    assert m["frames"] == 3
    assert m["skipped"] == [{"id": "rec0001", "reason": f"missing rec0001.png under {run / 'infer'}"}]
    names = [f["record_id"] for t in read_json(run / "cvat" / "upload.json")["tasks"] for f in t["frames"]]
    assert names == ["rec0000", "rec0002", "rec0003"]


def test_no_inference_outputs_is_a_clear_error(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    with pytest.raises(AgirError, match=r"infer/manifest.jsonl: missing; run infer-seg"):
        run_upload_stage(cfg, run)
