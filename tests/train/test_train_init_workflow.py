"""train.init through real Snakemake: round 2 trains from round 1's model without ever rebuilding round 1."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from wfutil import planned_rules, run_snakemake, write_config

from agir.checkpoint import build_model, save_checkpoint
from agir.classes import round_class_set, write_round_classes

pytestmark = pytest.mark.slow

R1 = Path("outputs/runs/tiny/round_001")
R2 = Path("outputs/runs/tiny/round_002")
TARGET = str(R2 / "model" / "best.pth")
SMALL = {"train.arch": "Linknet", "train.encoder": "timm-mobilenetv3_small_minimal_100", "project.subname": "round_002"}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions on a busy 2-core box run several times faster without OpenMP threads waiting on each other."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def project(tmp_path_factory, one_thread) -> Path:
    """The tiny demo project with only round 1's model and class set (round 1 itself cannot be rebuilt)."""
    from agir.demo import generate_demo_data

    wd = tmp_path_factory.mktemp("train-init")
    generate_demo_data(wd / "demo", images=6, seed=3, width=320, height=214)
    write_config(wd, **SMALL)
    torch.manual_seed(0)
    net = build_model(SMALL["train.arch"], SMALL["train.encoder"], 3, 2)
    save_checkpoint(wd / R1 / "model/best.pth", net.state_dict(), arch=SMALL["train.arch"],
                    encoder=SMALL["train.encoder"], in_channels=3, classes=["barley"], mean=[0.5] * 3, std=[0.2] * 3,
                    tile_size=128, overlap=0.0, metrics={}, config={})
    write_round_classes(wd / R1 / "classes.json", round_class_set({"classes": {"mode": "species"}},
                                                                   record_species=["barley"]))
    return wd


def test_round2_starts_from_round1_and_never_rebuilds_it(project):
    wd = project
    r1_files = {p: p.stat().st_mtime_ns for p in (wd / R1).rglob("*")}
    planned = planned_rules(wd, TARGET)
    # round 1 has no dataset or query: were its model a rule's output here, Snakemake would rebuild it
    assert planned.get("train_model") == 1 and planned.get("query_db") == 1
    run_snakemake(wd, TARGET)
    log = (wd / R2 / "logs/train.log").read_text()
    lines = [ln for ln in log.splitlines() if "train: " in ln and ("initialised" in ln or "from scratch" in ln)]
    assert len(lines) == 1 and re.search(
        r"train: initialised from round_001/model/best.pth: kept 1 class \(barley\), new head rows for \d+", lines[0])
    metrics = json.loads((wd / R2 / "model/metrics.json").read_text())
    assert metrics["init"]["setting"] == "previous" and metrics["init"]["path"].endswith("round_001/model/best.pth")
    assert metrics["classes"][:2] == ["background", "barley"]
    assert {p: p.stat().st_mtime_ns for p in (wd / R1).rglob("*")} == r1_files
    assert planned_rules(wd, TARGET) == {}

    # a new round-1 model is a declared input: round 2 retrains, round 1 stays as it is
    later = time.time() + 10
    os.utime(wd / R1 / "model/best.pth", (later, later))
    assert set(planned_rules(wd, TARGET)) == {"train_model"}
    # another train.init goes through params: it reruns train only
    write_config(wd, **SMALL, **{"train.init": None})
    assert set(planned_rules(wd, TARGET)) == {"train_model"}
