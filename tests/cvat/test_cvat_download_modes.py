"""Download: export archives, foreign tasks, no work when nothing changed, refresh, path traversal."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from cvat_server.synth import make_infer_outputs

from agir.cvat.decode import safe_extract
from agir.cvat.download import run_download_stage
from agir.cvat.upload import run_upload_stage
from agir.errors import AgirError
from agir.images import read_image
from agir.masks import read_mask
from agir.runs import read_json


def _uploaded_and_edited(server, cfg, run, n=6):
    masks = make_infer_outputs(run, n=n)
    run_upload_stage(cfg, run)
    receipt = read_json(run / "cvat" / "upload.json")
    a = server.annotator
    t0 = receipt["tasks"][0]["id"]
    a.add_polygon(t0, 1, "cereal rye", [5, 5, 30, 5, 30, 20, 5, 20], z_order=2)
    bm = np.zeros((64, 80), bool)
    bm[30:50, 40:70] = True
    a.paint_mask(t0, 0, "hairy vetch", bm)
    a.delete_frames(t0, [2])
    for t in receipt["tasks"]:
        a.finish_task(t["id"])
    return masks


def _decoded(run):
    return {p.stem: read_mask(p) for p in sorted((run / "cvat" / "annotations" / "masks").glob("*.png"))}


@pytest.mark.parametrize("fmt", ["Segmentation mask 1.1", "CamVid 1.0", "COCO 1.0"])
def test_export_archives_decode_like_the_api(cvat_env, cfg_factory, fmt):
    cfg, run = cfg_factory()
    _uploaded_and_edited(cvat_env, cfg, run)
    api = run_download_stage(cfg, run)
    via_api = _decoded(run)
    cfg["cvat_download"]["format"] = fmt
    arch = run_download_stage(cfg, run)
    via_archive = _decoded(run)
    assert arch["tasks_decoded"] == 2 and arch["format"] == fmt  # a format change is not "unchanged"
    assert sorted(via_archive) == sorted(via_api) and len(via_api) == 5
    for rid, m in via_api.items():
        assert np.array_equal(via_archive[rid], m), f"{fmt} {rid}"
    assert arch["changed_fraction_mean"] == pytest.approx(api["changed_fraction_mean"])
    assert cvat_env.count("POST", r"/dataset/export") == 2


def test_unchanged_server_means_no_work_and_refresh_forces(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    _uploaded_and_edited(cvat_env, cfg, run)
    first = run_download_stage(cfg, run)
    before = cvat_env.count("GET", r"/annotations")
    receipt = (run / "cvat" / "download.json").read_bytes()
    second = run_download_stage(cfg, run)
    assert first["tasks_decoded"] == 2 and second["tasks_unchanged"] == 2 and second["tasks_decoded"] == 0
    assert cvat_env.count("GET", r"/annotations") == before
    assert (run / "cvat" / "download.json").read_bytes() == receipt
    assert second["per_task"] == first["per_task"]

    # people reopen and change one task: only that task is fetched again
    tid = read_json(run / "cvat" / "upload.json")["tasks"][1]["id"]
    cvat_env.annotator.delete_shapes(tid, 0)
    third = run_download_stage(cfg, run)
    assert third["tasks_decoded"] == 1 and third["tasks_unchanged"] == 1
    forced = run_download_stage(cfg, run, refresh=True)
    assert forced["tasks_decoded"] == 2


def test_frame_deleted_after_an_earlier_download_is_removed(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    _uploaded_and_edited(cvat_env, cfg, run)
    run_download_stage(cfg, run)
    receipt = read_json(run / "cvat" / "upload.json")
    gone = receipt["tasks"][1]["frames"][0]["record_id"]
    assert (run / "cvat" / "annotations" / "masks" / f"{gone}.png").exists()
    cvat_env.annotator.delete_frames(receipt["tasks"][1]["id"], [0])
    run_download_stage(cfg, run)
    assert not (run / "cvat" / "annotations" / "masks" / f"{gone}.png").exists()
    assert not (run / "cvat" / "annotations" / "images" / f"{gone}.jpg").exists()


def test_foreign_tasks_by_id_fetch_images_from_the_server(cvat_env, cfg_factory, tmp_path):
    cfg, run = cfg_factory()
    _uploaded_and_edited(cvat_env, cfg, run)
    ids = sorted(cvat_env.tasks)
    other = tmp_path / "other_round"
    cfg2 = {**cfg, "cvat_download": {**cfg["cvat_download"], "task_ids": ids}}
    m = run_download_stage(cfg2, other)
    assert m["frames"] == 5 and m["changed_fraction_mean"] is None  # no pre-labels to compare with
    run_download_stage(cfg, run)
    own = _decoded(run)
    for p in (other / "cvat" / "annotations" / "masks").glob("*.png"):
        img_path = other / "cvat" / "annotations" / "images" / f"{p.stem}.jpg"
        assert read_image(img_path).shape[:2] == read_mask(p).shape
        # frame names are the record ids; the server hands back the uploaded JPEG bytes
        assert img_path.read_bytes() == (run / "infer" / "images" / f"{p.stem}.jpg").read_bytes()
        assert np.array_equal(read_mask(p), own[p.stem])
    by_project = {**cfg, "cvat_download": {**cfg["cvat_download"], "project_id": 1}}
    assert run_download_stage(by_project, tmp_path / "third")["tasks"] == 2


def test_download_without_receipt_or_ids_says_what_to_do(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    with pytest.raises(AgirError, match="run upload-cvat first, or set cvat_download.task_ids"):
        run_download_stage(cfg, run)


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_path_traversal_archive_is_rejected(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("labelmap.txt", "background:0,0,0::\n")
        zf.writestr(member, "gotcha")
    with pytest.raises(AgirError, match="escapes the extraction folder"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "labelmap.txt").exists()


def test_symlink_member_is_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("SegmentationClass/link.png")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(AgirError, match="escapes"):
        safe_extract(archive, tmp_path / "out")
