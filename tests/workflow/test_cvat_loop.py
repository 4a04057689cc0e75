"""The whole loop with real Snakemake against the CVAT test server: people refine the pre-labels between
upload and download, and the refined masks are what the dataset and the model learn from."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cvat_server.fixtures import cvat_env, cvat_server  # noqa: F401  (fixtures)
from wfutil import planned_rules, run_snakemake, write_config

from agir.masks import read_classes, read_mask

pytestmark = pytest.mark.slow


def test_full_loop_with_cvat_round_trip(cvat_env, tiny_demo, tmp_path):  # noqa: F811
    shutil.copytree(tiny_demo, tmp_path / "demo")
    write_config(tmp_path, **{
        "preprocess.label_source": "cvat",
        "cvat.keys_file": "no-keys.yaml",
        "cvat_upload.max_frames_per_task": 4,
        "cvat_upload.segment_size": 2,
        "cvat.poll_seconds": 0.2,
    })
    run = tmp_path / "outputs/runs/tiny/round_001"

    run_snakemake(tmp_path, "upload")
    receipt = json.loads((run / "cvat" / "upload.json").read_text())
    frames = [(t["id"], f) for t in receipt["tasks"] for f in t["frames"]]
    assert len(frames) == 6 and len(receipt["tasks"]) == 2

    # Nobody has finished: the download stage refuses with a clear message, and nothing is half-written.
    proc = run_snakemake(tmp_path, "all", check=False)
    assert proc.returncode != 0
    assert "not done" in proc.stdout + proc.stderr
    assert not (run / "cvat" / "download.json").exists() and not (run / "model").exists()

    # The annotator: repaint one frame entirely as one class, clear another, then complete every task.
    a = cvat_env.annotator
    (t0, f0), (t1, f1) = frames[0], frames[-1]
    h, w = read_mask(run / "infer" / "masks" / f"{f0['record_id']}.png").shape
    a.delete_shapes(t0, f0["frame"])
    painted = np.zeros((h, w), bool)
    painted[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    label = sorted(a.labels(t0))[0]
    a.paint_mask(t0, f0["frame"], label, painted)
    a.delete_shapes(t1, f1["frame"])
    for t in receipt["tasks"]:
        a.finish_task(t["id"])

    run_snakemake(tmp_path, "all")
    out = run / "cvat" / "annotations" / "masks"
    classes = {c["name"]: c["index"] for c in read_classes(out)}
    edited = read_mask(out / f"{f0['record_id']}.png")
    expected = np.where(painted, classes[label], 0).astype(np.uint8)
    assert np.array_equal(edited, expected)
    assert not read_mask(out / f"{f1['record_id']}.png").any()
    metrics = json.loads((run / "cvat" / "metrics.json").read_text())["download"]
    assert metrics["frames"] == 6
    index = (run / "dataset" / "index.csv").read_text()
    assert f0["record_id"] in index
    assert (run / "model" / "best.pth").exists() and (run / "report" / "cvat_changes.png").exists()
    assert planned_rules(tmp_path) == {}
