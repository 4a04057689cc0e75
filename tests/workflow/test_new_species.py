"""Issue 16 §1: a species that arrives in a later round gets its own class everywhere.

The old tool's Example 2 typed verbatim through the installed `agir-cvtoolkit` against the CVAT test server
(barley, then cereal rye, in one run folder as the old tool kept it), then a new round that adds a third species
on top. People in CVAT paint every plant of a species the project has a label for (inside its database box).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cvat_server.fixtures import cvat_env, cvat_server  # noqa: F401  (fixtures)

# three trainings on a 2-core machine shared with other jobs
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FIRST, SECOND, THIRD = "barley", "cereal rye", "hairy vetch"
RUN = Path("outputs/runs/demo/round_001")
ROUND2 = Path("outputs/runs/demo/round_002")
AGIR = str(Path(sys.executable).with_name("agir-cvtoolkit"))
SMALL = "timm-mobilenetv3_small_minimal_100"


def agir(workdir: Path, line: str) -> subprocess.CompletedProcess:
    """One command line as a user types it (shell quoting included), in the user's folder."""
    proc = subprocess.run(f"{AGIR} {line} --cores 2", shell=True, cwd=workdir, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"agir-cvtoolkit {line} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture()
def userdir(tmp_path) -> Path:
    """A folder laid out as config/config.yaml expects (data/demo/...): the commands need no --config."""
    from agir.demo import generate_demo_data

    generate_demo_data(tmp_path / "data" / "demo", images=8, seed=5, width=320, height=214)
    return tmp_path


def db_records(userdir: Path) -> dict[str, list[dict]]:
    """Every cutout of the demo database by image id: species and bbox."""
    import duckdb

    con = duckdb.connect(str(userdir / "data/demo/agir_demo.duckdb"), read_only=True)
    rows = con.execute("SELECT image_id, category_common_name, bbox_xywh FROM semif").fetchall()
    con.close()
    out: dict[str, list[dict]] = {}
    for image_id, name, bbox in rows:
        out.setdefault(image_id, []).append({"species": name, "bbox": [int(round(float(v))) for v in json.loads(bbox)]})
    return out


def annotate(server, userdir: Path, run: Path, done: set[int]) -> list[dict]:
    """People refine the new tasks: each plant of a species the project has a label for, painted with that label
    (the plant pixels of its database box), then the task is completed. Returns what was painted."""
    from agir.images import read_image
    from agir.infer.baseline import plant_mask

    a = server.annotator
    records = db_records(userdir)
    receipt = json.loads((run / "cvat" / "upload.json").read_text())
    edits = []
    for task in receipt["tasks"]:
        if task["id"] in done:
            continue
        labels = a.labels(task["id"])
        for f in task["frames"]:
            image = read_image(run / "infer" / "images" / f"{f['record_id']}.jpg")
            plant, _ = plant_mask(image)
            a.delete_shapes(task["id"], f["frame"])
            for rec in sorted(records[f["record_id"]], key=lambda r: -r["bbox"][2] * r["bbox"][3]):
                if rec["species"] not in labels:
                    continue
                x, y, w, h = rec["bbox"]
                painted = np.zeros(plant.shape, bool)
                painted[y:y + h, x:x + w] = plant[y:y + h, x:x + w].astype(bool)
                if painted.sum() < 20:
                    continue
                a.paint_mask(task["id"], f["frame"], rec["species"], painted, z_order=1 + len(edits))
                edits.append({"record_id": f["record_id"], "label": rec["species"], "bitmap": painted})
        a.finish_task(task["id"])
        done.add(task["id"])
    return edits


def classes_of(folder: Path) -> dict[str, int]:
    return {c["name"]: int(c["index"]) for c in json.loads((folder / "classes.json").read_text())}


def dataset_masks(run: Path) -> dict[str, np.ndarray]:
    """Each record's dataset mask, reassembled from its tiles (image-sized, ignore outside the tiles)."""
    from agir.masks import read_mask

    out: dict[str, np.ndarray] = {}
    with open(run / "dataset" / "index.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            tile = read_mask(run / "dataset" / row["mask"])
            y0, x0, y1, x1 = (int(row[k]) for k in ("y0", "x0", "y1", "x1"))
            full = out.setdefault(row["record_id"], np.full((214, 320), 255, np.uint8))
            h, w = min(y1, 214) - y0, min(x1, 320) - x0
            full[y0:y0 + h, x0:x0 + w] = tile[:h, :w]
    return out


def predicted_classes(ckpt: Path, run: Path) -> set[int]:
    """Class indices the checkpoint predicts somewhere on the dataset's images."""
    from agir.checkpoint import load_checkpoint, model_from_checkpoint
    from agir.images import read_image
    from agir.infer.predictor import TiledPredictor

    meta = load_checkpoint(ckpt)
    predictor = TiledPredictor(model_from_checkpoint(meta), head=meta["head"], mean=meta["normalization"]["mean"],
                               std=meta["normalization"]["std"], tile_size=256, overlap=0.25, device="cpu")
    seen: set[int] = set()
    for image in sorted((run / "dataset").glob("*/images/*")):
        mask, _ = predictor.predict(read_image(image))
        seen |= {int(v) for v in np.unique(mask)}
    return seen


def test_example_2_new_species_in_round_2_then_a_third(cvat_env, userdir):  # noqa: F811
    run, run2 = userdir / RUN, userdir / ROUND2
    done: set[int] = set()
    # ---- Example 2, verbatim (species of the demo database)
    agir(userdir, f'query --db semif --filters "category_common_name={FIRST}" --sample "stratified:by=area_bin,per_group=50"')
    agir(userdir, "infer-seg -o seg_inference.output.save_images=true")
    agir(userdir, 'upload-cvat -o cvat_upload.task_name="Round1_Barley"')
    batch1 = annotate(cvat_env, userdir, run, done)
    agir(userdir, "download-cvat")
    # `train` of the old docs, kept small here (saved for the run: the second `train` below uses it too)
    agir(userdir, f"train -o train.max_epochs=2 -o train.model.encoder_name={SMALL}")
    agir(userdir, f'query --db semif --filters "category_common_name={SECOND}" --sample "stratified:by=area_bin,per_group=50"')
    agir(userdir, f"infer-seg -o seg_inference.model.ckpt_path={RUN}/model/best.pth -o seg_inference.output.save_images=true")
    # the round's set: barley keeps index 1, cereal rye is appended; inference labels in it
    doc = json.loads((run / "classes.json").read_text())
    assert [(c["index"], c["name"]) for c in doc["classes"]] == [(1, FIRST), (2, SECOND)]
    assert classes_of(run / "infer" / "masks") == {FIRST: 1, SECOND: 2}
    assert json.loads((run / "infer" / "metrics.json").read_text())["classes"] == [FIRST, SECOND]
    # pre-labels: never the known species' label on the new species' plants (inside their boxes)
    from agir.masks import read_mask

    query = json.loads((run / "query" / "query.json").read_text())
    for rec in query:
        x, y, w, h = [int(round(float(v))) for v in json.loads(rec["bbox_xywh"])]
        pre = read_mask(run / "infer" / "masks" / f"{rec['image_id']}.png")[y:y + h, x:x + w]
        assert not (pre == 1).any(), f"{rec['cutout_id']}: barley label on cereal rye"
    agir(userdir, 'upload-cvat -o cvat_upload.task_name="Round2_Wheat"')
    receipt = json.loads((run / "cvat" / "upload.json").read_text())
    project = cvat_env.annotator.client.projects.retrieve(receipt["project_id"])
    assert {lab.name for lab in project.get_labels()} >= {FIRST, SECOND}  # people can mark the rye plants
    batch2 = annotate(cvat_env, userdir, run, done)
    assert {e["label"] for e in batch2} >= {SECOND}
    agir(userdir, "download-cvat")
    proc = agir(userdir, "train")  # expected to combine round 1 and round 2 data
    # dataset/: the round's set, rye pixels labelled rye
    assert classes_of(run / "dataset") == {FIRST: 1, SECOND: 2}
    masks = dataset_masks(run)
    relabelled = {e["record_id"] for e in batch2}  # images in both batches: the newest batch wins
    # (an image whose tile is nearly all soil may be left out by preprocess.min_foreground)
    checked = [e for e in [e for e in batch1 if e["record_id"] not in relabelled] + batch2 if e["record_id"] in masks]
    for e in checked:
        got = masks[e["record_id"]][e["bitmap"]]
        assert (got == classes_of(run / "dataset")[e["label"]]).mean() > 0.95, (e["record_id"], e["label"])
    assert {e["label"] for e in checked} == {FIRST, SECOND}
    # round 2's model knows both classes, its head has K+1 outputs, and it predicts each somewhere on the data
    from agir.checkpoint import load_checkpoint

    best = load_checkpoint(run / "model" / "best.pth")
    assert best["classes"] == [FIRST, SECOND]
    head = [v for k, v in best["state_dict"].items() if k.startswith("segmentation_head") and k.endswith("weight")]
    assert head and head[-1].shape[0] == 3
    assert "classes ['barley']" not in proc.stderr + proc.stdout
    assert {1, 2} <= predicted_classes(run / "model" / "best.pth", run)

    # ---- a new round adds a third species on top
    agir(userdir, f'query -o project.subname=round_002 --db semif --filters "category_common_name={THIRD}" '
                  '--sample "stratified:by=area_bin,per_group=50"')
    agir(userdir, "infer-seg -o project.subname=round_002 -o seg_inference.model.ckpt_path=previous")
    doc2 = json.loads((run2 / "classes.json").read_text())
    assert [(c["index"], c["name"]) for c in doc2["classes"]] == [(1, FIRST), (2, SECOND), (3, THIRD)]
    assert doc2["new"] == [THIRD] and doc2["earlier"] == [FIRST, SECOND]
    agir(userdir, 'upload-cvat -o project.subname=round_002 -o cvat_upload.task_name="Round3_Vetch"')
    receipt2 = json.loads((run2 / "cvat" / "upload.json").read_text())
    assert receipt2["project_id"] == receipt["project_id"]
    labels = {lab.name: lab.id for lab in cvat_env.annotator.client.projects.retrieve(receipt["project_id"]).get_labels()}
    assert set(labels) >= {FIRST, SECOND, THIRD}
    assert {n: labels[n] for n in (FIRST, SECOND)} == {lab.name: lab.id for lab in project.get_labels()
                                                        if lab.name in (FIRST, SECOND)}  # existing ids kept
    batch3 = annotate(cvat_env, userdir, run2, done)
    assert {e["label"] for e in batch3} >= {THIRD}
    agir(userdir, "download-cvat -o project.subname=round_002")
    agir(userdir, f"train -o project.subname=round_002 -o train.max_epochs=1 -o train.model.encoder_name={SMALL}")
    # training starts from round 1's model with its head widened by one row
    log = (run2 / "logs" / "train.log").read_text()
    assert "kept 2 classes (barley, cereal rye), new head rows for 1 (hairy vetch)" in log, log
    assert classes_of(run2 / "dataset") == {FIRST: 1, SECOND: 2, THIRD: 3}
    best3 = load_checkpoint(run2 / "model" / "best.pth")
    assert best3["classes"] == [FIRST, SECOND, THIRD]
    head3 = [v for k, v in best3["state_dict"].items() if k.startswith("segmentation_head") and k.endswith("weight")]
    assert head3[-1].shape[0] == 4
    masks2 = dataset_masks(run2)
    checked = [e for e in batch3 if e["record_id"] in masks2]
    for e in checked:
        assert (masks2[e["record_id"]][e["bitmap"]] == classes_of(run2 / "dataset")[e["label"]]).mean() > 0.95
    assert THIRD in {e["label"] for e in checked}
    # round 1 keeps its set
    assert json.loads((run / "classes.json").read_text())["classes"] == doc["classes"]
