"""The seed-compatible CLI drives Snakemake; overrides persist for the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from wfutil import run_cli

from agir.cli import build_parser, query_flag_overrides

RUN = Path("outputs/runs/tiny/round_001")


cli = run_cli


def test_help_lists_stage_commands():
    text = build_parser().format_help()
    for cmd in ("query", "infer-seg", "upload-cvat", "download-cvat", "preprocess", "train", "run", "status", "demo-data"):
        assert cmd in text


def test_query_flags_map_to_config_keys():
    args = build_parser().parse_args(
        ["query", "--db", "semif", "--filters", "state=NC", "--filters", "estimated_bbox_area_cm2>=100",
         "--sample", "seeded:n=5,seed=1", "--limit", "3", "--out", "csv,parquet"]
    )
    parsed = dict(o.split("=", 1) for o in query_flag_overrides(args))
    assert yaml.safe_load(parsed["query.filters"]) == ["state=NC", "estimated_bbox_area_cm2>=100"]
    assert yaml.safe_load(parsed["query.sample"]) == "seeded:n=5,seed=1"
    assert yaml.safe_load(parsed["query.limit"]) == 3
    assert yaml.safe_load(parsed["query.out"]) == ["csv", "parquet"]


def test_bad_override_is_one_line_error(workdir):
    proc = cli(workdir, "query", "--config", "config.yaml", "-o", "seg_inference.tile.sizee=3", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "agir: error: unknown config key seg_inference.tile.sizee; did you mean seg_inference.tile.size?"
    )


@pytest.mark.slow
def test_overrides_persist_across_stage_commands(workdir):
    cli(workdir, "infer-seg", "--config", "config.yaml", "--cores", "2", "-o", "seg_inference.tile.size=96")
    saved = yaml.safe_load((workdir / RUN / "overrides.yaml").read_text())
    assert saved["seg_inference"]["tile"]["size"] == 96
    # a later stage command without the override must not rerun inference
    proc = cli(workdir, "upload-cvat", "--config", "config.yaml", "--dry-run", "--", "--quiet", "rules")
    assert "infer_seg" not in proc.stdout and "upload_cvat" in proc.stdout
    status = cli(workdir, "status", "--config", "config.yaml")
    assert "infer" in status.stdout and "done" in status.stdout
