"""The round's class set in CVAT (issue 16 §1) and review hints (issue 17 §5), through the real cvat_sdk client.

- the test server adds, keeps and refuses project labels the way CVAT 2.x's project serializer does;
- a later round's new species becomes a label of the existing project (ids and colours of the others kept);
- the download orders its classes by the round's set and keeps labels people added (WARNING);
- review boxes land in CVAT as rectangles of label `review` and never reach the masks.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
from cvat_sdk.api_client import models
from cvat_sdk.api_client.exceptions import ApiException
from cvat_server.synth import CLASS_NAMES, make_infer_outputs

from agir.classes import class_list, round_class_set, write_round_classes
from agir.cvat.download import run_download_stage
from agir.cvat.plan import upload_settings
from agir.cvat.upload import run_upload_stage
from agir.masks import make_classes, read_classes, read_mask, remap_lut
from agir.runs import read_json


def _round(cfg, run, subname):
    """The config and run folder of another round of the same project."""
    cfg = copy.deepcopy(cfg)
    cfg["project"]["subname"] = subname
    return cfg, run.parent / subname


def _frames(run):
    receipt = read_json(run / "cvat" / "upload.json")
    return {f["record_id"]: (t["id"], f["frame"]) for t in receipt["tasks"] for f in t["frames"]}


def _finish_all(server, run):
    for t in read_json(run / "cvat" / "upload.json")["tasks"]:
        server.annotator.finish_task(t["id"])


def test_test_server_changes_project_labels_like_cvat(cvat_server):
    a = cvat_server.annotator
    label = models.PatchedLabelRequest(name="barley", color="#123456")
    pid = a.client.projects.create(models.ProjectWriteRequest(name="p", labels=[label])).id
    before = a.project_labels(pid)
    a.update_project_labels(pid, [{"name": "cereal rye", "color": "#2a9d8f"}, {"name": "review", "type": "rectangle"}])
    after = a.project_labels(pid)
    assert after["barley"] == before["barley"]
    assert after["cereal rye"]["color"] == "#2a9d8f" and after["review"]["type"] == "rectangle"

    # a name the project has, or one name twice in a request: 400 and nothing changes (one transaction)
    for labels in ([{"name": "barley"}], [{"name": "weed"}, {"name": "weed"}], [{"id": after["barley"]["id"], "name": "cereal rye"}]):
        with pytest.raises(ApiException) as err:
            a.update_project_labels(pid, labels)
        assert err.value.status == 400 and "All label names must be unique" in str(err.value.body)
    assert a.project_labels(pid) == after
    # another project's label id: 404; a project created with duplicate names does not exist afterwards
    other = a.client.projects.create(models.ProjectWriteRequest(name="q", labels=[models.PatchedLabelRequest(name="x")])).id
    with pytest.raises(ApiException) as err:
        a.update_project_labels(pid, [{"id": a.project_labels(other)["x"]["id"], "name": "x"}])
    assert err.value.status == 404 and "Not found label with id" in str(err.value.body)
    with pytest.raises(ApiException) as err:
        a.client.projects.create(models.ProjectWriteRequest(name="dup", labels=[label, label]))
    assert err.value.status == 400 and [p["name"] for p in cvat_server.projects.values()] == ["p", "q"]


def test_a_new_species_in_round_two_becomes_a_label_of_the_existing_project(cvat_env, cfg_factory, tmp_path, caplog):
    a = cvat_env.annotator
    cfg, run1 = cfg_factory()
    masks1 = make_infer_outputs(run1, n=3, names=["barley"])
    write_round_classes(run1 / "classes.json", round_class_set(cfg, record_species=["barley"]))
    run_upload_stage(cfg, run1)  # reads run1/classes.json
    r1 = read_json(run1 / "cvat" / "upload.json")
    pid = r1["project_id"]
    assert set(a.project_labels(pid)) == {"barley"}
    # people recoloured barley in CVAT: its colour stays theirs
    a.update_project_labels(pid, [{"id": a.project_labels(pid)["barley"]["id"], "color": "#010203"}])
    before = a.project_labels(pid)

    cfg2, run2 = _round(cfg, run1, "round_002")
    make_infer_outputs(run2, n=4, names=["barley", "cereal rye"], prefix="r2_")
    doc = round_class_set(cfg2, earlier=[r1["classes"]], checkpoint_classes=["barley"], record_species=["barley", "cereal rye"])
    assert doc["new"] == ["cereal rye"]
    write_round_classes(tmp_path / "round2-classes.json", doc)
    with caplog.at_level(logging.INFO, logger="agir"):
        up2 = run_upload_stage(cfg2, run2, classes=tmp_path / "round2-classes.json")  # the rule's input `classes`
    lines = [r.getMessage() for r in caplog.records if "added labels" in r.getMessage()]
    assert lines == [f"CVAT project {pid}: added labels cereal rye (existing labels kept: barley)"]
    after = a.project_labels(pid)
    assert after["barley"] == before["barley"] and after["barley"]["color"] == "#010203"
    assert after["cereal rye"]["color"] == class_list(doc)[1]["color"] and up2["labels_added"] == ["cereal rye"]
    r2 = read_json(run2 / "cvat" / "upload.json")
    assert r2["labels"] == {n: v["id"] for n, v in after.items()} and r2["round_classes"] == class_list(doc)
    rye = after["cereal rye"]["id"]
    assert any(s["label_id"] == rye for t in r2["tasks"] for s in cvat_env.tasks[t["id"]]["shapes"])

    # unchanged inputs: nothing sent, no label added
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agir"):
        again = run_upload_stage(cfg2, run2, classes=tmp_path / "round2-classes.json")
    assert again["frames_sent"] == 0 and again["labels_added"] == []
    assert not [r for r in caplog.records if "added labels" in r.getMessage()]

    # round 1's tasks still download; the project's new label is kept as a class after the round's own (WARNING)
    _finish_all(cvat_env, run1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agir"):
        down1 = run_download_stage(cfg, run1)
    assert down1["frames"] == 3 and any("'cereal rye'" in r.getMessage() for r in caplog.records)
    out = run1 / "cvat" / "annotations" / "masks"
    assert [(c["index"], c["name"]) for c in read_classes(out)] == [(1, "barley"), (2, "cereal rye")]
    for rid, m in masks1.items():
        assert np.array_equal(read_mask(out / f"{rid}.png"), m)


def test_download_orders_classes_by_the_round_set_and_keeps_labels_people_added(cvat_env, cfg_factory, caplog):
    a = cvat_env.annotator
    cfg, run = cfg_factory()
    masks = make_infer_outputs(run, n=3)  # pre-labels: barley 1, cereal rye 2, hairy vetch 3
    doc = round_class_set(cfg, earlier=[make_classes(["hairy vetch", "barley"])], record_species=CLASS_NAMES)
    write_round_classes(run / "classes.json", doc)
    assert [c["name"] for c in class_list(doc)] == ["hairy vetch", "barley", "cereal rye"]
    run_upload_stage(cfg, run)
    pid = read_json(run / "cvat" / "upload.json")["project_id"]
    a.update_project_labels(pid, [{"name": "weed", "color": "#00ff00"}])
    rid = sorted(masks)[0]
    tid, fr = _frames(run)[rid]
    weed = np.zeros_like(masks[rid], dtype=bool)
    weed[10:20, 10:30] = True
    a.paint_mask(tid, fr, "weed", weed)
    _finish_all(cvat_env, run)

    with caplog.at_level(logging.WARNING, logger="agir"):
        run_download_stage(cfg, run, classes=run / "classes.json")
    warned = [r.getMessage() for r in caplog.records if "not in the round's class set" in r.getMessage()]
    assert len(warned) == 1 and "'weed'" in warned[0]
    out = run / "cvat" / "annotations" / "masks"
    classes = read_classes(out)
    assert [(c["index"], c["name"]) for c in classes] == [(1, "hairy vetch"), (2, "barley"), (3, "cereal rye"), (4, "weed")]
    lut = remap_lut(make_classes(CLASS_NAMES), {c["name"]: c["index"] for c in classes})
    for r, m in masks.items():
        expected = lut[m]
        if r == rid:
            expected[weed] = 4
        assert np.array_equal(read_mask(out / f"{r}.png"), expected), r


def _edit(server, run, masks):
    """The same corrections with or without hints: a rye brush on the first frame, barley deleted on the second."""
    a = server.annotator
    where = _frames(run)
    rids = sorted(masks)
    truth = {r: m.copy() for r, m in masks.items()}
    bm = np.zeros_like(masks[rids[0]], dtype=bool)
    bm[5:30, 10:50] = True
    a.paint_mask(*where[rids[0]], "cereal rye", bm)
    truth[rids[0]][bm] = CLASS_NAMES.index("cereal rye") + 1
    a.delete_shapes(*where[rids[1]], "barley")
    truth[rids[1]][truth[rids[1]] == 1] = 0
    return truth


def test_review_hints_are_boxes_in_cvat_that_download_ignores(cvat_env, cfg_factory):
    base, base_run = cfg_factory()
    assert upload_settings(base) == upload_settings({**base, "cvat_upload": {**base["cvat_upload"], "review_hints": False}})
    got = {}
    for hints in (False, True):
        cfg, run = _round(base, base_run, "hints" if hints else "plain")
        cfg["cvat_upload"]["review_hints"] = hints
        masks = make_infer_outputs(run, n=4, size=(64, 80), review_regions=True)
        up = run_upload_stage(cfg, run)
        assert up["review_boxes"] == (8 if hints else 0)
        tid = read_json(run / "cvat" / "upload.json")["tasks"][0]["id"]
        labels = cvat_env.annotator.project_labels(read_json(run / "cvat" / "upload.json")["project_id"])
        boxes = sorted((s["frame"], s["points"]) for s in cvat_env.tasks[tid]["shapes"] if s["label_id"] == labels.get("review", {}).get("id"))
        if hints:
            assert labels["review"]["type"] == "rectangle" and labels["review"]["color"] == "#ff00ff"
            # clipped to the 80x64 frame; x1/y1 exclusive = CVAT's bottom-right corner
            assert boxes == sorted([(i, [2.0 + i, 3.0, 20.0 + i, 25.0]) for i in range(4)] + [(i, [70.0, 56.0, 80.0, 64.0]) for i in range(4)])
            assert run_upload_stage(cfg, run)["frames_sent"] == 0  # the hints are part of the fingerprint, unchanged
        else:
            assert boxes == []
        truth = _edit(cvat_env, run, masks)
        _finish_all(cvat_env, run)
        down = run_download_stage(cfg, run)
        out = run / "cvat" / "annotations" / "masks"
        assert [c["name"] for c in read_classes(out)] == CLASS_NAMES
        assert all("review" not in t["shapes_per_label"] for t in down["per_task"].values())
        got[hints] = {r: read_mask(out / f"{r}.png") for r in masks}
        for r, m in truth.items():
            assert np.array_equal(got[hints][r], m), r
        if hints:
            # an export would paint the boxes into the masks: that task is decoded through the API instead
            export = copy.deepcopy(cfg)
            export["cvat_download"]["format"] = "Segmentation mask 1.1"
            run_download_stage(export, run)
            for r in masks:
                assert np.array_equal(read_mask(out / f"{r}.png"), got[True][r]), r
    for r in got[False]:
        assert np.array_equal(got[True][r], got[False][r])
