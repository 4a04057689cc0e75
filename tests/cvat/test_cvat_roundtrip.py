"""Full round trip with the real cvat_sdk client against the test server: upload, people edit, download."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from cvat_server.synth import make_infer_outputs

from agir.cvat.download import run_download_stage
from agir.cvat.upload import run_upload_stage
from agir.errors import AgirError
from agir.masks import read_classes, read_mask
from agir.runs import read_json


def _frame_map(run):
    """record id -> (task id, frame number) from the upload receipt."""
    receipt = read_json(run / "cvat" / "upload.json")
    return {f["record_id"]: (t["id"], f["frame"]) for t in receipt["tasks"] for f in t["frames"]}


def _edit_like_people(server, run, masks):
    """Annotator edits through the API; returns the expected refined masks (None = frame deleted)."""
    a = server.annotator
    where = _frame_map(run)
    idx = {c["name"]: c["index"] for c in read_classes(run / "infer" / "masks")}
    truth = {rid: m.copy() for rid, m in masks.items()}
    rids = sorted(masks)

    # brush a rectangle-shaped mask of "cereal rye" over frame 0
    tid, fr = where[rids[0]]
    bm = np.zeros_like(masks[rids[0]], dtype=bool)
    bm[5:30, 10:50] = True
    a.paint_mask(tid, fr, "cereal rye", bm)
    truth[rids[0]][bm] = idx["cereal rye"]

    # a polygon of "hairy vetch" with integer vertices on frame 2
    tid, fr = where[rids[2]]
    a.add_polygon(tid, fr, "hairy vetch", [10, 10, 40, 10, 40, 30, 10, 30])
    cv2.fillPoly(truth[rids[2]], [np.array([[10, 10], [40, 10], [40, 30], [10, 30]], np.int32)], idx["hairy vetch"])

    # every shape of frame 3 deleted: all background
    tid, fr = where[rids[3]]
    assert a.delete_shapes(tid, fr) > 0
    truth[rids[3]][:] = 0

    # one label's shapes deleted on frame 7, then a barley brush underneath an existing shape (z below)
    tid, fr = where[rids[7]]
    a.delete_shapes(tid, fr, "barley")
    truth[rids[7]][truth[rids[7]] == idx["barley"]] = 0
    bm = np.zeros_like(bm)
    bm[40:60, 0:20] = True
    a.paint_mask(tid, fr, "barley", bm, z_order=-1)
    truth[rids[7]][bm & (truth[rids[7]] == 0)] = idx["barley"]

    # frame 6 deleted in CVAT
    tid, fr = where[rids[6]]
    a.delete_frames(tid, [fr])
    truth[rids[6]] = None
    return truth


def test_round_trip_decoded_masks_equal_the_edited_truth(cvat_env, tmp_path, cfg_factory):
    cfg, run = cfg_factory()
    masks = make_infer_outputs(run, n=13, failed=1)
    up = run_upload_stage(cfg, run)
    assert up["frames"] == 13 and up["tasks"] == 3 and up["tasks_created"] == 3
    assert up["shapes"] > 13 and up["frames_per_s"] > 0 and up["bytes"] > 0
    receipt = read_json(run / "cvat" / "upload.json")
    assert receipt["complete"] and set(receipt["labels"]) == {"barley", "cereal rye", "hairy vetch"}
    assert [len(t["frames"]) for t in receipt["tasks"]] == [5, 5, 3]
    assert len(receipt["tasks"][0]["jobs"]) == 2  # segment_size 3 over 5 frames

    truth = _edit_like_people(cvat_env, run, masks)
    for t in receipt["tasks"]:
        cvat_env.annotator.finish_task(t["id"])
    down = run_download_stage(cfg, run)

    out = run / "cvat" / "annotations"
    classes = read_classes(out / "masks")
    assert [c["name"] for c in classes] == ["barley", "cereal rye", "hairy vetch"]
    for rid, expected in truth.items():
        p = out / "masks" / f"{rid}.png"
        if expected is None:
            assert not p.exists()
            continue
        got = read_mask(p)
        assert np.array_equal(got, expected), f"{rid}: {(got != expected).sum()} pixels differ"
        assert (out / "images" / f"{rid}.jpg").read_bytes() == (run / "infer" / "images" / f"{rid}.jpg").read_bytes()
    assert down["frames"] == 12 and down["frames_deleted"] == 1 and down["frames_failed"] == 0
    per_frame = {rid: fr for t in down["per_task"].values() for rid, fr in t["changed_fraction_per_frame"].items()}
    rids = sorted(masks)
    assert per_frame[rids[1]] == 0.0
    for k in (0, 2, 3, 7):
        expected = (masks[rids[k]] != truth[rids[k]]).mean()
        assert per_frame[rids[k]] == pytest.approx(expected)
    assert down["changed_fraction_per_label"]["cereal rye"] > 0
    metrics = read_json(run / "cvat" / "metrics.json")
    assert set(metrics) == {"upload", "download"}
    first = next(iter(metrics["download"]["per_task"].values()))
    assert set(first["shapes_per_label"]) <= {"barley", "cereal rye", "hairy vetch"} and first["pixels_per_label"]


def test_pending_work_is_a_clear_error_and_writes_nothing(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=6)
    run_upload_stage(cfg, run)
    receipt = read_json(run / "cvat" / "upload.json")
    cvat_env.annotator.finish_task(receipt["tasks"][0]["id"])
    with pytest.raises(AgirError) as err:
        run_download_stage(cfg, run)
    msg = str(err.value)
    assert "1 of 2 CVAT task(s) not done" in msg and "1 frame(s) remain" in msg and "wait" in msg
    assert f"task {receipt['tasks'][1]['id']}" in msg and "\n" not in msg
    assert not (run / "cvat" / "download.json").exists()
    assert not (run / "cvat" / "annotations").exists()


def test_acceptance_gate_needs_every_job_accepted(cvat_env, cfg_factory):
    cfg, run = cfg_factory(cvat_download={"required_status": "acceptance"})
    make_infer_outputs(run, n=4)
    run_upload_stage(cfg, run)
    tid = read_json(run / "cvat" / "upload.json")["tasks"][0]["id"]
    jobs = cvat_env.annotator.jobs(tid)
    cvat_env.annotator.set_job(jobs[0].id, "acceptance", "completed")
    cvat_env.annotator.set_job(jobs[1].id, "acceptance", "in progress")
    with pytest.raises(AgirError, match=rf"job {jobs[1].id} acceptance/in progress"):
        run_download_stage(cfg, run)
    cvat_env.annotator.set_job(jobs[1].id, "acceptance", "completed")
    assert run_download_stage(cfg, run)["frames"] == 4


def test_wait_mode_polls_until_people_finish(cvat_env, cfg_factory):
    cfg, run = cfg_factory(cvat_download={"wait": True, "poll_seconds": 0.1, "timeout_minutes": 0.5})
    make_infer_outputs(run, n=4)
    run_upload_stage(cfg, run)
    tid = read_json(run / "cvat" / "upload.json")["tasks"][0]["id"]

    def finish_later():
        time.sleep(0.5)
        cvat_env.annotator.finish_task(tid)

    worker = threading.Thread(target=finish_later)
    worker.start()
    t0 = time.monotonic()
    down = run_download_stage(cfg, run)
    worker.join()
    assert down["frames"] == 4 and time.monotonic() - t0 >= 0.4


def test_wait_mode_times_out_with_the_pending_list(cvat_env, cfg_factory):
    cfg, run = cfg_factory(cvat_download={"wait": True, "poll_seconds": 0.1, "timeout_minutes": 0.005})
    make_infer_outputs(run, n=2)
    run_upload_stage(cfg, run)
    with pytest.raises(AgirError, match="gave up waiting.*not done"):
        run_download_stage(cfg, run)
