"""Several upload batches in one round, revisions, downloads without an upload, task_name, refused connections."""

from __future__ import annotations

import shutil
import socket
import time

import numpy as np
import pytest
from cvat_server.synth import make_infer_outputs

import agir.cvat.upload as upload_mod
from agir.cvat.download import run_download_stage
from agir.cvat.upload import run_upload_stage
from agir.errors import AgirError
from agir.masks import read_classes, read_mask, write_mask
from agir.runs import read_json, write_json


def _batch(cvat_env, cfg, run, prefix, n, name=None, seed=0):
    """Replace infer/ with a new inference of `n` records and upload it; returns (masks, images bytes, metrics)."""
    shutil.rmtree(run / "infer", ignore_errors=True)
    masks = make_infer_outputs(run, n=n, prefix=prefix, seed=seed)
    images = {rid: (run / "infer" / "images" / f"{rid}.jpg").read_bytes() for rid in masks}
    up = dict(cfg["cvat_upload"], task_name=name)
    return masks, images, run_upload_stage({**cfg, "cvat_upload": up}, run)


def _where(run):
    """record id -> (task id, frame) over every task of every batch (newest revision last)."""
    receipt = read_json(run / "cvat" / "upload.json")
    return {f["record_id"]: (t["id"], f["frame"]) for b in receipt["batches"] for t in b["tasks"] for f in t["frames"]}


def _brush(server, run, rid, label="cereal rye"):
    tid, fr = _where(run)[rid]
    bm = np.zeros((64, 80), bool)
    bm[5:25, 10:40] = True
    server.annotator.paint_mask(tid, fr, label, bm)
    return bm


def _finish(server, task_ids):
    for tid in task_ids:
        server.annotator.finish_task(tid)


def test_three_batches_in_one_round_all_reach_the_download(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    batches = [_batch(cvat_env, cfg, run, p, n, name, seed=i)
               for i, (p, n, name) in enumerate([("a", 3, "weeds-a"), ("b", 7, "weeds-b"), ("c", 2, "weeds-c")])]
    assert [m["batch"] for _, _, m in batches] == [1, 2, 3] and batches[-1][2]["batches"] == 3
    assert sorted(t["name"] for t in cvat_env.tasks.values()) == [
        "weeds-a", "weeds-b-part-001", "weeds-b-part-002", "weeds-c"]
    receipt = read_json(run / "cvat" / "upload.json")
    assert receipt["version"] == 2 and receipt["batch"] == 3 and receipt["complete"]
    assert [len(b["record_ids"]) for b in receipt["batches"]] == [3, 7, 2]
    assert sorted(t["id"] for t in receipt["tasks"]) == sorted(cvat_env.tasks) and receipt["superseded"] == []
    assert sorted(p.name for p in (run / "cvat" / "batches").iterdir()) == ["001.json", "002.json", "003.json"]

    # people edit one record of every batch, then finish everything; infer/ now holds batch 3 only
    classes = read_classes(run / "infer" / "masks")
    idx = {c["name"]: c["index"] for c in classes}
    truth = {}
    for masks, _, _ in batches:
        truth.update({rid: m.copy() for rid, m in masks.items()})
    for rid in ("a0001", "b0006", "c0000"):
        bm = _brush(cvat_env, run, rid)
        truth[rid][bm] = idx["cereal rye"]
    _finish(cvat_env, cvat_env.tasks)
    down = run_download_stage(cfg, run)

    out = run / "cvat" / "annotations"
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(truth)
    for rid, expected in truth.items():
        assert np.array_equal(read_mask(out / "masks" / f"{rid}.png"), expected), rid
    for _, images, _ in batches:  # the uploaded pixels, although infer/ was replaced twice
        for rid, data in images.items():
            assert (out / "images" / f"{rid}.jpg").read_bytes() == data
    assert down["frames"] == 12 and down["frames_not_landed"] == 0 and down["batches"] == 3
    per_frame = {rid: fr for t in down["per_task"].values() for rid, fr in t["changed_fraction_per_frame"].items()}
    assert per_frame["a0000"] == 0.0 and per_frame["a0001"] > 0  # compared with batch 1's own pre-labels
    got = read_json(run / "cvat" / "download.json")
    assert [(b["records"], b["records_landed"]) for b in got["batches"]] == [(3, 3), (7, 7), (2, 2)]


def _revise(run, masks, rid):
    changed = masks[rid].copy()
    changed[:10, :10] = 2
    write_mask(run / "infer" / "masks" / f"{rid}.png", changed, read_classes(run / "infer" / "masks"))


def test_revision_with_annotated_old_tasks(cvat_env, cfg_factory, caplog):
    cfg, run = cfg_factory(cvat_upload={"max_frames_per_task": 10})
    masks = make_infer_outputs(run, n=4)
    run_upload_stage(cfg, run)
    (r1,) = list(cvat_env.tasks)
    bm = _brush(cvat_env, run, "rec0001")
    _finish(cvat_env, [r1])
    _revise(run, masks, "rec0002")
    again = run_upload_stage(cfg, run)
    assert again["revision"] == 2 and again["batch"] == 2 and again["group"] == 1
    r2 = max(cvat_env.tasks)
    receipt = read_json(run / "cvat" / "upload.json")
    assert [t["id"] for t in receipt["tasks"]] == [r2] and receipt["superseded"][0]["tasks"][0]["id"] == r1

    # nobody opened revision 2: the finished revision 1 lands, with a warning naming both
    with caplog.at_level("INFO"):
        down = run_download_stage(cfg, run)
    assert f"task {r2}" in caplog.text and f"task {r1}" in caplog.text and "nobody started it" in caplog.text
    assert down["frames"] == 4 and set(down["per_task"]) == {str(r1)}
    expected = masks["rec0001"].copy()
    expected[bm] = read_classes(run / "infer" / "masks")[1]["index"]
    assert np.array_equal(read_mask(run / "cvat" / "annotations" / "masks" / "rec0001.png"), expected)
    nl = read_json(run / "cvat" / "download.json")["frames_not_landed"]
    assert {(f["record_id"], f["task"]) for f in nl} == {(f"rec000{i}", r2) for i in range(4)}

    # people work on revision 2 without finishing it: that work must not be dropped, so the download refuses
    cvat_env.annotator.set_job(cvat_env.annotator.jobs(r2)[0].id, "annotation", "in progress")
    with pytest.raises(AgirError, match=rf"1 of 2 CVAT task\(s\) not done.*task {r2}"):
        run_download_stage(cfg, run)

    # revision 2 finished: it wins everywhere, the warning names both tasks
    cvat_env.annotator.delete_shapes(r2, 3)
    _finish(cvat_env, [r2])
    caplog.clear()
    with caplog.at_level("INFO"):
        down = run_download_stage(cfg, run)
    assert "people worked on 4 record(s) in both" in caplog.text and f"keeping the newest, task {r2}" in caplog.text
    assert set(down["per_task"]) == {str(r2)} and down["tasks_skipped"] == 1
    assert not read_mask(run / "cvat" / "annotations" / "masks" / "rec0003.png").any()  # r2's edit, not r1's


def test_untouched_old_revision_is_skipped_not_waited_for(cvat_env, cfg_factory, caplog):
    cfg, run = cfg_factory(cvat_upload={"max_frames_per_task": 10})
    masks = make_infer_outputs(run, n=3)
    run_upload_stage(cfg, run)
    _revise(run, masks, "rec0000")
    run_upload_stage(cfg, run)
    r1, r2 = sorted(cvat_env.tasks)
    with pytest.raises(AgirError, match=rf"1 of 2 CVAT task\(s\) not done.*task {r2}"):
        run_download_stage(cfg, run)  # only the newest revision is waited for
    _finish(cvat_env, [r2])
    with caplog.at_level("INFO"):
        down = run_download_stage(cfg, run)
    assert f"task {r1}" in caplog.text and "never touched" in caplog.text
    assert set(down["per_task"]) == {str(r2)} and down["frames"] == 3


def test_task_deleted_in_cvat_is_listed_not_silent(cvat_env, cfg_factory):
    cfg, run = cfg_factory(cvat_upload={"max_frames_per_task": 2})
    make_infer_outputs(run, n=4)
    run_upload_stage(cfg, run)
    t1, t2 = sorted(cvat_env.tasks)
    cvat_env.annotator.client.tasks.remove_by_ids([t1])
    _finish(cvat_env, [t2])
    down = run_download_stage(cfg, run)
    got = read_json(run / "cvat" / "download.json")
    assert down["frames"] == 2 and got["skipped_tasks"] == {str(t1): "deleted in CVAT"}
    assert sorted((f["record_id"], f["reason"]) for f in got["frames_not_landed"]) == [
        ("rec0000", "task deleted in CVAT"), ("rec0001", "task deleted in CVAT")]


def test_interrupted_batch_lists_the_records_it_never_sent(cvat_env, cfg_factory, monkeypatch, caplog):
    cfg, run = cfg_factory(cvat_upload={"max_frames_per_task": 2})
    make_infer_outputs(run, n=4, prefix="a")
    real = upload_mod.upload_annotations
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(upload_mod, "upload_annotations", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_upload_stage(cfg, run)
    monkeypatch.setattr(upload_mod, "upload_annotations", real)
    _batch(cvat_env, cfg, run, "b", 2, "later")
    first = read_json(run / "cvat" / "batches" / "001.json")
    assert not first["complete"] and len(first["tasks"]) == 1
    ids = [t["id"] for b in read_json(run / "cvat" / "upload.json")["batches"] for t in b["tasks"]]
    _finish(cvat_env, ids)
    with caplog.at_level("WARNING"):
        down = run_download_stage(cfg, run)
    assert down["frames"] == 4 and "batch 1: 2 record(s) never reached CVAT" in caplog.text
    nl = read_json(run / "cvat" / "download.json")["frames_not_landed"]
    assert sorted(f["record_id"] for f in nl) == ["a0002", "a0003"] and all("never uploaded" in f["reason"] for f in nl)


@pytest.mark.parametrize("by", ["task_ids", "project_id"])
def test_download_by_id_in_a_run_that_never_uploaded(cvat_env, cfg_factory, tmp_path, by):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=3)
    run_upload_stage(cfg, run)
    _finish(cvat_env, cvat_env.tasks)
    fresh = tmp_path / "runs" / "demo" / "round_009"
    assert not fresh.exists()
    value = sorted(cvat_env.tasks) if by == "task_ids" else 1
    m = run_download_stage({**cfg, "cvat_download": {**cfg["cvat_download"], by: value}}, fresh)
    got = read_json(fresh / "cvat" / "download.json")
    assert m["frames"] == 3 and got["source"] == f"cvat_download.{by}" and not (fresh / "cvat" / "upload.json").exists()
    assert sorted(p.stem for p in (fresh / "cvat" / "annotations" / "masks").glob("*.png")) == ["rec0000", "rec0001", "rec0002"]


def test_download_by_id_uses_the_batches_when_upload_json_is_gone(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    masks = make_infer_outputs(run, n=3)
    run_upload_stage(cfg, run)
    _finish(cvat_env, cvat_env.tasks)
    (run / "cvat" / "upload.json").unlink()  # as Snakemake does before rerunning upload-cvat
    shutil.rmtree(run / "infer")
    m = run_download_stage({**cfg, "cvat_download": {**cfg["cvat_download"], "project_id": 1}}, run)
    assert m["frames"] == 3 and m["changed_fraction_mean"] == 0.0  # pre-labels found in cvat/uploaded/
    for rid, mask in masks.items():
        assert np.array_equal(read_mask(run / "cvat" / "annotations" / "masks" / f"{rid}.png"), mask)


def test_legacy_single_receipt_still_downloads(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=3)
    run_upload_stage(cfg, run)
    combined = read_json(run / "cvat" / "upload.json")
    legacy = {k: v for k, v in combined.items() if k not in ("batches", "batch")}
    legacy["version"] = 1
    legacy["tasks"] = [{k: v for k, v in t.items() if k not in ("batch", "base_name", "revision")} for t in legacy["tasks"]]
    for t in legacy["tasks"]:
        t["frames"] = [{k: f[k] for k in ("frame", "name", "record_id")} for f in t["frames"]]
    write_json(run / "cvat" / "upload.json", legacy)
    shutil.rmtree(run / "cvat" / "batches")
    _finish(cvat_env, cvat_env.tasks)
    m = run_download_stage(cfg, run)
    assert m["frames"] == 3 and m["changed_fraction_mean"] == 0.0  # pre-labels from infer/, as before batches


def test_task_name_parts_and_reuse(cvat_env, cfg_factory):
    cfg, run = cfg_factory(cvat_upload={"max_frames_per_task": 2})
    _batch(cvat_env, cfg, run, "a", 2, "field-7")
    _batch(cvat_env, cfg, run, "b", 3, "field-8")
    _batch(cvat_env, cfg, run, "c", 1, "field-7")  # the same name again in this round: suffixed, never clashing
    assert sorted(t["name"] for t in cvat_env.tasks.values()) == [
        "field-7", "field-7-b3", "field-8-part-001", "field-8-part-002"]
    # the default template: later batches get -b{batch}, unless the template holds {batch}
    cfg2, run = cfg_factory(project={"subname": "round_002"})
    run2 = run.parent / "round_002"
    _batch(cvat_env, cfg2, run2, "d", 1)
    _batch(cvat_env, cfg2, run2, "e", 1)
    cfg2["cvat_upload"]["task_name_template"] = "{subname}/batch-{batch}/part-{n}"
    _batch(cvat_env, cfg2, run2, "f", 1)
    names = sorted(t["name"] for t in cvat_env.tasks.values())
    assert {"demo/round_002/part-001", "demo/round_002/part-001-b2", "round_002/batch-3/part-1"} <= set(names)


def test_same_task_name_from_another_round_is_a_clear_error(cvat_env, cfg_factory, tmp_path):
    cfg, run = cfg_factory(cvat_upload={"max_frames_per_task": 5})
    _batch(cvat_env, cfg, run, "a", 2, "fixed")
    other = tmp_path / "runs" / "demo" / "round_002"
    make_infer_outputs(other, n=2, prefix="z")
    cfg["cvat_upload"]["task_name"] = "fixed"
    with pytest.raises(AgirError, match=r"named 'fixed' but holds other frames; rename or delete it, or change cvat_upload.task_name$"):
        run_upload_stage(cfg, other)


def test_refused_connection_fails_fast_and_names_the_host(cfg_factory, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg, run = cfg_factory(cvat={"retries": 5, "backoff_seconds": 1.0, "timeout_seconds": 10})
    make_infer_outputs(run, n=1)
    monkeypatch.setenv("CVAT_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CVAT_USERNAME", "u")
    monkeypatch.setenv("CVAT_PASSWORD", "p-secret")
    t0 = time.monotonic()
    with pytest.raises(AgirError) as err:
        run_upload_stage(cfg, run)
    # with retries, 5 backoffs from 1 s would take over 30 s
    assert time.monotonic() - t0 < 3
    msg = str(err.value)
    assert f"CVAT http://127.0.0.1:{port}:" in msg and "connection refused" in msg and "\n" not in msg


def test_5xx_is_still_retried(cvat_env, cfg_factory):
    from agir.cvat.client import CvatRetry, make_retry

    retry = make_retry(5, 0.01)
    assert isinstance(retry, CvatRetry) and 503 in retry.status_forcelist and 429 in retry.status_forcelist
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=2)
    cvat_env.fault_rate = 0.3
    cvat_env.rng.seed(3)
    assert run_upload_stage(cfg, run)["frames"] == 2 and cvat_env.faults_injected > 0
