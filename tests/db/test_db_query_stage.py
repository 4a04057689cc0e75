"""The query stage's outputs: formats, query_spec.json, metrics, empty results, preview, injection."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from agir.db.query import run_query_stage
from agir.errors import AgirError
from agir.runs import read_json


def test_every_output_format_and_spec(tiny_db, cfg_for, tmp_path):
    cfg = cfg_for(tiny_db, filters=["state=NC", "estimated_bbox_area_cm2>=100"], out=["csv", "parquet"],
                  projection="cutout_id,state,estimated_bbox_area_cm2,has_masks")
    metrics = run_query_stage(cfg, tmp_path / "run")
    q = tmp_path / "run" / "query"
    records = read_json(q / "query.json")
    assert records == [
        {"cutout_id": "NC_1_1", "state": "NC", "estimated_bbox_area_cm2": 150.0, "has_masks": 1},
        {"cutout_id": "NC_2_0", "state": "NC", "estimated_bbox_area_cm2": 700.0, "has_masks": 0},
    ]
    with open(q / "query.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["cutout_id"] for r in rows] == ["NC_1_1", "NC_2_0"] and list(rows[0]) == list(records[0])
    table = pq.read_table(q / "query.parquet")
    assert table.to_pylist() == records
    spec = read_json(q / "query_spec.json")
    assert spec["asked"]["filters"] == ["state=NC", "estimated_bbox_area_cm2>=100"]
    assert [f["op"] for f in spec["filters"]] == ["=", ">="]
    assert spec["params"] == ["NC", 100] and spec["sql"].count("?") == 2
    assert "'NC'" not in spec["sql"]  # values are bound, never pasted
    fp = spec["database"]["fingerprint"]
    assert fp["rows"] == 6 and fp["size_bytes"] == tiny_db.stat().st_size and len(fp["sha256"]) == 64
    assert (spec["rows_total"], spec["rows_matched"], spec["rows_returned"]) == (6, 2, 2)
    assert metrics == read_json(q / "metrics.json")
    assert metrics["rows_returned"] == 2 and metrics["empty"] is False
    assert sorted(spec["outputs"]) == ["csv", "json", "parquet"]


def test_only_json_unless_asked(tiny_db, cfg_for, tmp_path):
    run_query_stage(cfg_for(tiny_db, out="json"), tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r" / "query").iterdir()) == ["metrics.json", "query.json",
                                                                            "query_spec.json"]


def test_empty_result_writes_empty_outputs(tiny_db, cfg_for, tmp_path, caplog):
    cfg = cfg_for(tiny_db, filters=["state=ZZ"], out=["csv", "parquet"], projection=["cutout_id", "state"])
    with caplog.at_level(logging.INFO, logger="agir"):
        metrics = run_query_stage(cfg, tmp_path / "r")
    q = tmp_path / "r" / "query"
    assert read_json(q / "query.json") == []
    assert (q / "query.csv").read_text().strip() == '"cutout_id","state"' or \
        (q / "query.csv").read_text().strip() == "cutout_id,state"
    assert pq.read_table(q / "query.parquet").num_rows == 0
    assert metrics["empty"] is True and metrics["rows_returned"] == 0
    assert "matched no records" in caplog.text


def test_preview_prints_a_table_and_still_writes(tiny_db, cfg_for, tmp_path, capsys):
    run_query_stage(cfg_for(tiny_db, preview=2, filters=["category_common_name=barley"]), tmp_path / "r")
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "first 2 of 3 records:"
    assert "cutout_id" in lines[1] and "category_common_name" in lines[1]
    assert "MD_1_0" in lines[3] and "NC_1_0" in lines[4] and len(lines) == 5
    assert len(read_json(tmp_path / "r" / "query" / "query.json")) == 3


def test_summary_counts_per_group(semif_db, cfg_for, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="agir"):
        run_query_stage(cfg_for(semif_db, sample="stratified:by=category_common_name,per_group=5"), tmp_path / "r")
    assert "per group (category_common_name): matched -> sampled" in caplog.text
    assert "  barley: " in caplog.text and "-> 5" in caplog.text


INJECTIONS = [
    ("filters", ["state; DROP TABLE semif; --=1"]),
    ("filters", ['{"state = \'NC\' OR 1=1 --": "x"}']),
    ("filters", ["state) OR (1=1 is null"]),
    ("projection", "cutout_id, state FROM semif; DROP TABLE semif; --"),
    ("projection", ['cutout_id"; DROP TABLE semif; --']),
    ("sort", "cutout_id; DROP TABLE semif"),
    ("sort", "cutout_id:desc; DROP TABLE semif"),
    ("sample", "stratified:by=state); DROP TABLE semif; --,per_group=2"),
    ("sample", "stratified:by=state|1=1,per_group=2"),
]


@pytest.mark.parametrize(("key", "value"), INJECTIONS)
def test_injection_through_identifiers_is_rejected(tiny_db, cfg_for, tmp_path, key, value):
    before = tiny_db.read_bytes()
    with pytest.raises(AgirError) as err:
        run_query_stage(cfg_for(tiny_db, **{key: value}), tmp_path / "r")
    assert "\n" not in str(err.value)
    assert tiny_db.read_bytes() == before
    con = duckdb.connect(str(tiny_db), read_only=True)
    assert con.execute("SELECT count(*) FROM semif").fetchall()[0][0] == 6
    con.close()


def test_injection_through_values_matches_literally(tiny_db, query_ids):
    assert query_ids(tiny_db, filters=["state=NC' OR '1'='1"]) == []
    assert query_ids(tiny_db, filters=['{"state": "x\'); DROP TABLE semif; --"}']) == []
    assert len(query_ids(tiny_db)) == 6


def test_id_column_and_table_are_checked(tiny_db, cfg_for, tmp_path):
    cfg = cfg_for(tiny_db)
    cfg["db"]["semif"]["id_column"] = "cutout_id; DROP TABLE semif"
    with pytest.raises(AgirError, match="db.semif.id_column: unknown column"):
        run_query_stage(cfg, tmp_path / "a")
    cfg = cfg_for(tiny_db)
    cfg["db"]["semif"]["table"] = "semf"
    with pytest.raises(AgirError, match="did you mean 'semif'"):
        run_query_stage(cfg, tmp_path / "b")
    cfg = cfg_for(tiny_db, db="fields")
    with pytest.raises(AgirError, match="query.db: no database 'fields'"):
        run_query_stage(cfg, tmp_path / "c")


def test_unknown_projection_and_sort_columns_suggest(tiny_db, cfg_for, tmp_path):
    with pytest.raises(AgirError, match=r"query.projection: unknown column 'cutoutid'.*'cutout_id'"):
        run_query_stage(cfg_for(tiny_db, projection="cutoutid"), tmp_path / "a")
    with pytest.raises(AgirError, match=r"query.sort: unknown column 'date_time'.*'datetime'"):
        run_query_stage(cfg_for(tiny_db, sort="date_time:desc"), tmp_path / "b")


def test_rerun_overwrites_atomically(tiny_db, cfg_for, tmp_path):
    run = tmp_path / "r"
    run_query_stage(cfg_for(tiny_db, filters=["state=TX"]), run)
    run_query_stage(cfg_for(tiny_db, filters=["state=NC"]), run)
    assert [r["state"] for r in read_json(run / "query" / "query.json")] == ["NC"] * 3
    assert not [p for p in (run / "query").iterdir() if p.name.startswith(".")]


def test_works_from_a_relative_db_path(tiny_db, cfg_for, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_db.parent)
    cfg = cfg_for(Path(tiny_db.name))
    assert run_query_stage(cfg, tmp_path / "r")["rows_returned"] == 6
