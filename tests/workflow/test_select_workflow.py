"""Active selection as a real Snakemake stage: reruns on select.* changes, only the selection goes to CVAT,
images annotated in an earlier round are not chosen again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cvat_server.fixtures import cvat_env, cvat_server  # noqa: F401  (fixtures)
from wfutil import planned_rules, run_snakemake

pytestmark = pytest.mark.slow

R1 = Path("outputs/runs/tiny/round_001")
R2 = Path("outputs/runs/tiny/round_002")
R3 = Path("outputs/runs/tiny/round_003")


def save_round(workdir: Path, run: Path, settings: dict) -> None:
    (workdir / run).mkdir(parents=True, exist_ok=True)
    (workdir / run / "overrides.yaml").write_text(yaml.safe_dump(settings))


ROUND = {
    "seg_inference": {"model": {"ckpt_path": "previous"}},
    "select": {"strategy": "entropy", "n": 2},
    "project": {"until": "preprocess"},
}


def test_selection_stage_reruns_filters_upload_and_excludes_annotated(built_copy, cvat_env):  # noqa: F811
    save_round(built_copy, R2, ROUND)
    target = str(R2 / "select" / "selection.json")
    planned = planned_rules(built_copy, target)
    assert planned.get("select_images") == 1 and planned.get("infer_seg") == 1 and "train_model" not in planned
    run_snakemake(built_copy, target)
    sel = json.loads((built_copy / target).read_text())
    assert sel["strategy"] == "entropy" and len(sel["selected"]) == 2 and not sel.get("fallback")
    lines = [json.loads(x) for x in (built_copy / R2 / "infer" / "manifest.jsonl").read_text().splitlines() if x]
    assert all("uncertainty" in line for line in lines if line["status"] == "ok")  # a model pre-labelled
    assert (built_copy / R2 / "select" / "scores.parquet").exists()
    assert (built_copy / R2 / "select" / "gallery.png").stat().st_size > 1000

    # a select.* change reruns the selection, not the inference
    save_round(built_copy, R2, {**ROUND, "select": {"strategy": "entropy", "n": 3}})
    planned = planned_rules(built_copy, target)
    assert planned.get("select_images") == 1 and "infer_seg" not in planned

    # only the selected images go to CVAT
    save_round(built_copy, R2, {**ROUND, "preprocess": {"label_source": "cvat"},
                                "cvat_upload": {"max_frames_per_task": 10}})
    run_snakemake(built_copy, str(R2 / "cvat" / "upload.json"))
    sel = json.loads((built_copy / target).read_text())
    receipt = json.loads((built_copy / R2 / "cvat" / "upload.json").read_text())
    uploaded = [f["record_id"] for t in receipt["tasks"] for f in t["frames"]]
    assert sorted(uploaded) == sorted(sel["selected"]) and len(uploaded) == 2

    # db_masks: round 2's selection entered its dataset; round 3 does not choose those images again
    save_round(built_copy, R2, ROUND)
    run_snakemake(built_copy, str(R2 / "dataset" / "index.csv"))
    # class_balanced weighs species by round 2's labelled set (its dataset/stats.json, a rule input)
    save_round(built_copy, R3, {**ROUND, "select": {"strategy": "class_balanced", "n": 2}})
    run_snakemake(built_copy, str(R3 / "select" / "selection.json"))
    sel2 = json.loads((built_copy / R2 / "select" / "selection.json").read_text())
    sel3 = json.loads((built_copy / R3 / "select" / "selection.json").read_text())
    assert sel3["excluded"]["count"] >= 2
    assert sel3["class_freq_source"] == "round_002/dataset/stats.json"
    assert not set(sel3["selected"]) & set(sel2["selected"])


def test_uncertainty_strategy_without_model_falls_back_from_the_cli(workdir):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "agir.cli", "select", "--config", "config.yaml", "--cores", "2",
         "-o", "select.strategy=entropy", "-o", "select.n=2", "-o", "select.fallback=random"],
        cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sel = json.loads((workdir / R1 / "select" / "selection.json").read_text())
    assert sel["fallback"] and len(sel["selected"]) == 2
    log = (workdir / R1 / "logs" / "select_images.log").read_text()
    assert sum("fall" in ln.lower() and "INFO" in ln for ln in log.splitlines()) == 1, log


def test_auto_prelabeler_picks_the_better_of_index_and_models(built_copy):
    import subprocess
    import sys

    save_round(built_copy, R2, {"seg_inference": {"model": {"ckpt_path": "auto"}}, "project": {"until": "infer"}})
    target = str(R2 / "infer" / "manifest.jsonl")
    planned = planned_rules(built_copy, target)
    assert planned.get("choose_prelabeler") == 1 and planned.get("infer_seg") == 1
    run_snakemake(built_copy, target)
    choice = json.loads((built_copy / R2 / "infer" / "prelabeler.json").read_text())
    kinds = {c["kind"]: c for c in choice["candidates"]}
    assert {"baseline", "model"} <= set(kinds) and "round_001" in kinds["model"]["path"], choice["candidates"]
    assert choice["chosen"] == "baseline" or "round_001" in choice["chosen"]
    metrics = json.loads((built_copy / R2 / "infer" / "metrics.json").read_text())
    used_model = "best.pth" in json.dumps(metrics)
    assert used_model == (choice["chosen"] not in (None, "baseline"))
    status = subprocess.run([sys.executable, "-m", "agir.cli", "status", "--config", "config.yaml"], cwd=built_copy,
                            capture_output=True, text=True, timeout=300)
    assert "pre-labeler" in status.stdout and choice["chosen_name"] in status.stdout
