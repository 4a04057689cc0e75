"""Real Snakemake runs on a tiny project: only stale stages rerun."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from wfutil import planned_rules, run_snakemake, write_config

pytestmark = pytest.mark.slow

RUN = Path("outputs/runs/tiny/round_001")


def test_full_round_builds_every_output(built_round1):
    run = built_round1 / RUN
    for rel in ("query/query.json", "query/query_spec.json", "infer/manifest.jsonl", "infer/masks/classes.json",
                "infer/quality.json", "dataset/index.csv", "dataset/classes.json", "model/best.pth",
                "model/metrics.json", "report/summary.json", "report/query_summary.png", "cfg.yaml",
                "logs/query.log", "logs/train.log", "benchmarks/train.tsv"):
        assert (run / rel).exists(), rel
    assert "password" not in (run / "cfg.yaml").read_text()


def test_second_run_does_nothing(built_copy):
    assert planned_rules(built_copy) == {}
    proc = run_snakemake(built_copy, "all")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_train_setting_reruns_only_train(built_copy):
    write_config(built_copy, **{"train.lr": 0.002})
    assert set(planned_rules(built_copy)) == {"train_model", "report_summary", "all"}


def test_tile_setting_reruns_inference_and_dependents(built_copy):
    write_config(built_copy, **{"seg_inference.tile.size": 96})
    assert set(planned_rules(built_copy)) == {"infer_seg", "evaluate_prelabels", "report_summary", "all"}


def test_tile_setting_with_cvat_says_earlier_batches_are_kept(built_copy):
    run = built_copy / RUN
    (run / "cvat").mkdir(exist_ok=True)
    (run / "cvat" / "upload.json").write_text(json.dumps({"tasks": []}))
    write_config(built_copy, **{"seg_inference.tile.size": 96, "preprocess.label_source": "cvat"})
    proc = run_snakemake(built_copy, "-n", "all")
    assert "earlier batches of the round and their tasks are kept" in proc.stdout + proc.stderr


def test_editing_database_reruns_query(built_copy):
    import duckdb

    db = built_copy / "demo" / "agir_demo.duckdb"
    # touching alone is not an edit: Snakemake compares small files by checksum
    later = time.time() + 5
    os.utime(db, (later, later))
    assert planned_rules(built_copy) == {}
    con = duckdb.connect(str(db))
    con.execute("UPDATE semif SET season = 'edited by a curator' WHERE cutout_id = (SELECT min(cutout_id) FROM semif)")
    con.execute("CHECKPOINT")
    con.close()
    assert "query_db" in planned_rules(built_copy)


def test_db_masks_skips_cvat_rules_and_cvat_includes_them(built_copy):
    assert not {"upload_cvat", "download_cvat"} & set(planned_rules(built_copy, "-F"))
    write_config(built_copy, **{"preprocess.label_source": "cvat"})
    planned = planned_rules(built_copy, "-F")
    assert {"upload_cvat", "download_cvat"} <= set(planned)


def test_round2_uses_round1_model_without_touching_round1(built_copy):
    r1 = built_copy / RUN
    before = {p: p.stat().st_mtime_ns for p in r1.rglob("*") if p.is_file()}
    write_config(built_copy, "round2.yaml", **{
        "project.subname": "round_002", "project.until": "infer",
        "seg_inference.model.ckpt_path": str(RUN / "model" / "best.pth"),
    })
    run_snakemake(built_copy, "all", config="round2.yaml")
    after = {p: p.stat().st_mtime_ns for p in r1.rglob("*") if p.is_file()}
    assert before == after
    r2 = built_copy / "outputs/runs/tiny/round_002"
    metrics = json.loads((r2 / "infer" / "metrics.json").read_text())
    assert "best.pth" in json.dumps(metrics)
    assert (r2 / "infer" / "quality.json").exists() and not (r2 / "model").exists()
    assert planned_rules(built_copy, config="round2.yaml") == {}


def test_sharded_inference_scatter_gather(workdir):
    write_config(workdir, **{"seg_inference.shards": 2, "project.until": "infer"})
    planned = planned_rules(workdir)
    assert planned.get("infer_seg_shard") == 2 and planned.get("infer_gather") == 1
    run_snakemake(workdir, "all")
    run = workdir / RUN
    lines = [json.loads(x) for x in (run / "infer" / "manifest.jsonl").read_text().splitlines() if x.strip()]
    records = json.loads((run / "query" / "query.json").read_text())
    image_ids = {r["image_id"] for r in records}
    assert {line["image_id"] for line in lines} == image_ids
    assert all(line["status"] == "ok" for line in lines)


def test_report_collects_pictures_with_captions(built_copy):
    run_snakemake(built_copy, "--report", "report.html")
    html = (built_copy / "report.html").read_text(errors="replace")
    for name in ("query_summary.png", "prelabel_quality.png", "dataset_stats.png", "training_curves.png",
                 "test_iou.png", "test_predictions.png", "quality_gallery.png"):
        assert name in html, name
    assert "Pre-label quality per round" in html
    summary = json.loads((built_copy / RUN / "report" / "summary.json").read_text())
    assert summary["query"]["records"] > 0 and summary["train"]["test_miou"] is not None


def test_status_reports_each_stage(built_copy):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "agir.cli", "status", "--config", "config.yaml"], cwd=built_copy,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.startswith("  ")}
    assert "done" in lines["query"] and "records" in lines["query"]
    assert "done" in lines["train"] and "test mIoU" in lines["train"]
    assert "-" in lines["upload"].split()[1]
