"""The old AgIR-CVToolkit's documented command sequences, typed verbatim, against the demo database and the
CVAT test server (species substituted by ones the demo database has). People's edits happen in between."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cvat_server.fixtures import cvat_env, cvat_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

RUN = Path("outputs/runs/demo/round_001")
AGIR = str(Path(sys.executable).with_name("agir-cvtoolkit"))
SMALL = "timm-mobilenetv3_small_minimal_100"


def agir(workdir: Path, line: str, check: bool = True) -> subprocess.CompletedProcess:
    """One command line as a user types it (shell quoting included), in the user's folder."""
    proc = subprocess.run(f"{AGIR} {line} --cores 2", shell=True, cwd=workdir, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"agir-cvtoolkit {line} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    from agir.demo import generate_demo_data

    out = tmp_path_factory.mktemp("old-tool") / "demo"
    generate_demo_data(out, images=8, seed=5, width=320, height=214)
    return out


@pytest.fixture()
def userdir(tmp_path, demo_db) -> Path:
    """A folder laid out as config/config.yaml expects (data/demo/...): the commands need no --config."""
    shutil.copytree(demo_db, tmp_path / "data" / "demo")
    return tmp_path


def common_species(db: Path, n: int) -> list[str]:
    """The n species of the demo database on the most images (a batch each; images may be shared)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT category_common_name, count(DISTINCT image_id) AS k FROM semif GROUP BY 1 ORDER BY k DESC, 1"
    ).fetchall()
    con.close()
    return [name for name, _ in rows[:n]]


def annotate_new_tasks(server, run: Path, done: set[int]) -> list[dict]:
    """People refine every frame of the tasks not yet annotated: a rectangle of the first label, then complete."""
    a = server.annotator
    receipt = json.loads((run / "cvat" / "upload.json").read_text())
    edits = []
    for task in receipt["tasks"]:
        if task["id"] in done:
            continue
        label = sorted(a.labels(task["id"]))[0]
        for f in task["frames"]:
            w, h = a.frame_size(task["id"], f["frame"])
            painted = np.zeros((h, w), bool)
            painted[h // 4 : h // 2, w // 4 : w // 2] = True
            a.delete_shapes(task["id"], f["frame"])
            a.paint_mask(task["id"], f["frame"], label, painted)
            edits.append({"record_id": f["record_id"], "label": label, "task": task["id"], "name": task["name"]})
        a.finish_task(task["id"])
        done.add(task["id"])
    return edits


def annotated_ids(run: Path) -> set[str]:
    return {p.stem for p in (run / "cvat" / "annotations" / "masks").glob("*.png")}


def dataset_images(run: Path) -> set[str]:
    import csv

    with open(run / "dataset" / "index.csv", newline="") as fh:
        return {row["record_id"] for row in csv.DictReader(fh)}


def test_example_1_first_iteration(cvat_env, userdir):  # noqa: F811
    from cvat_sdk import models

    project = cvat_env.annotator.client.projects.create(models.ProjectWriteRequest(name="Barley", labels=[]))
    pid = project.id
    run = userdir / RUN
    agir(userdir, 'query --db semif --sample "stratified:by=category_common_name,per_group=100" --out csv')
    assert (run / "query" / "query.csv").exists()
    proc = agir(userdir, "infer-seg -o seg_inference.output.save_images=true")
    assert "seg_inference.output.save_images is AgIR-CVToolkit's name for seg_inference.overlays" in proc.stderr
    proc = agir(userdir, f'upload-cvat -o cvat_upload.project_id={pid} -o cvat_upload.task_name="Initial_Barley_Batch"')
    assert "cvat_upload.project_id is AgIR-CVToolkit's name for cvat.project_id" in proc.stderr
    receipt = json.loads((run / "cvat" / "upload.json").read_text())
    assert {t["name"].split("-part-")[0] for t in receipt["tasks"]} == {"Initial_Barley_Batch"}
    assert receipt["project_id"] == pid
    # people refine in CVAT
    edits = annotate_new_tasks(cvat_env, run, set())
    agir(userdir, f"download-cvat -o cvat_download.project_id={pid} -o cvat_download.required_status=completed")
    assert annotated_ids(run) == {e["record_id"] for e in edits}
    agir(userdir, "preprocess")
    assert {e["record_id"] for e in edits} <= dataset_images(run)
    proc = agir(userdir, f'train -o train.max_epochs=2 -o train.model.encoder_name="{SMALL}"')
    saved = yaml.safe_load((run / "overrides.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["encoder"] == SMALL
    from agir.checkpoint import load_checkpoint

    assert load_checkpoint(run / "model" / "best.pth")["encoder"] == SMALL
    # the dataset was built from the people's corrections, not the database's masks
    assert saved["preprocess"]["label_source"] == "cvat"


def test_example_2_and_pattern_3_two_batches_then_train_combines_both(cvat_env, userdir):  # noqa: F811
    first, second = common_species(userdir / "data/demo/agir_demo.duckdb", 2)
    run = userdir / RUN
    done: set[int] = set()
    agir(userdir, f'query --db semif --filters "category_common_name={first}" --sample "stratified:by=area_bin,per_group=50"')
    agir(userdir, "infer-seg -o seg_inference.output.save_images=true")
    agir(userdir, f'upload-cvat -o cvat_upload.task_name="Round1_{first.replace(" ", "_")}"')
    batch1 = annotate_new_tasks(cvat_env, run, done)
    agir(userdir, "download-cvat")
    agir(userdir, "train -o train.max_epochs=1")
    agir(userdir, f'query --db semif --filters "category_common_name={second}" --sample "stratified:by=area_bin,per_group=50"')
    agir(userdir, f"infer-seg -o seg_inference.model.ckpt_path={RUN}/model/best.pth -o seg_inference.output.save_images=true")
    manifest = [json.loads(x) for x in (run / "infer" / "manifest.jsonl").read_text().splitlines() if x.strip()]
    assert manifest and all(line["status"] == "ok" for line in manifest)
    agir(userdir, f'upload-cvat -o cvat_upload.task_name="Round2_{second.replace(" ", "_")}"')
    batch2 = annotate_new_tasks(cvat_env, run, done)
    # refuse nothing, drop nothing: both batches' corrections land
    agir(userdir, "download-cvat")
    assert annotated_ids(run) == {e["record_id"] for e in batch1 + batch2}
    agir(userdir, "train")  # combines round 1 and round 2 data
    assert {e["record_id"] for e in batch1 + batch2} <= dataset_images(run)


def test_example_3_three_batches_in_one_run(cvat_env, userdir):  # noqa: F811
    species = common_species(userdir / "data/demo/agir_demo.duckdb", 3)
    run = userdir / RUN
    done: set[int] = set()
    edits = []
    for name in species:
        agir(userdir, f'query --db semif --filters "category_common_name={name}" --sample "stratified:by=area_bin,per_group=100"')
        agir(userdir, "infer-seg -o seg_inference.output.save_images=true")
        agir(userdir, f'upload-cvat -o cvat_upload.task_name="{name.replace(" ", "")}_Annotations"')
    # refine all in CVAT
    edits = annotate_new_tasks(cvat_env, run, done)
    names = {e["name"].split("-part-")[0] for e in edits}
    assert names == {f"{n.replace(' ', '')}_Annotations" for n in species}
    agir(userdir, "download-cvat -o cvat_download.required_status=completed")
    assert annotated_ids(run) == {e["record_id"] for e in edits}
    agir(userdir, "train -o train.max_epochs=1 -o train.batch_size=16")
    assert {e["record_id"] for e in edits} <= dataset_images(run)
    classes = json.loads((run / "dataset" / "classes.json").read_text())
    labels = {e["label"] for e in edits}
    assert labels <= {c["name"] for c in classes}


def test_pattern_1_quick_validation(cvat_env, userdir):  # noqa: F811
    run = userdir / RUN
    agir(userdir, "query --db semif --limit 10")
    agir(userdir, "infer-seg -o seg_inference.output.save_images=true")
    agir(userdir, 'upload-cvat -o cvat_upload.task_name="Test_Batch"')
    receipt = json.loads((run / "cvat" / "upload.json").read_text())
    assert receipt["tasks"] and all(t["name"].startswith("Test_Batch") for t in receipt["tasks"])
    # a download by project id in a run that never uploaded (another folder) works without an upload receipt
    edits = annotate_new_tasks(cvat_env, run, set())
    other = userdir / "elsewhere"
    shutil.copytree(userdir / "data", other / "data")
    agir(other, f"download-cvat -o cvat_download.project_id={receipt['project_id']}")
    assert annotated_ids(other / RUN) == {e["record_id"] for e in edits}
    assert not (other / RUN / "cvat" / "upload.json").exists()
