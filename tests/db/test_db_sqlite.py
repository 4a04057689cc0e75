"""SQLite sources read column-wise (ADBC): same records and values as the DuckDB path, nothing written,
only the needed columns read; check_query_config; warnings for filter values no row has; the real CLI."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from wfutil import write_config

from agir.db import sqlite_reader
from agir.db.query import check_query_config, run_query_stage
from agir.demo.tables import FIELD_COLUMNS, SEMIF_COLUMNS, write_duckdb
from agir.errors import AgirError
from agir.runs import read_json

SQLITE_TYPES = {"BIGINT": "INTEGER", "DOUBLE": "REAL", "VARCHAR": "TEXT"}


def write_sqlite(table: pa.Table, path: Path, name: str, declared: dict[str, str], suffix: str = "") -> Path:
    con = sqlite3.connect(path)
    cols = ", ".join(f'"{c}" {SQLITE_TYPES[declared[c]]}' for c in table.column_names)
    con.execute(f"CREATE TABLE {name} ({cols}){suffix}")
    marks = ", ".join("?" for _ in table.column_names)
    con.executemany(f"INSERT INTO {name} VALUES ({marks})", [tuple(r.values()) for r in table.to_pylist()])
    con.commit()
    con.close()
    return path


def field_table(n: int, seed: int = 1) -> pa.Table:
    """A Field-shaped table (every column of the real schema) with NULLs, dates and repeats."""
    rng = np.random.default_rng(seed)
    names = ["barley", "cotton", "hairy vetch", "winter wheat", "palmer amaranth"]
    cols: dict[str, list] = {}
    for col, typ in FIELD_COLUMNS:
        if col == "id":
            cols[col] = [int(i) for i in rng.permutation(n) + 1]
        elif col == "us_state":
            cols[col] = [str(rng.choice(["NC", "TX", "MD"])) if rng.random() > 0.1 else None for _ in range(n)]
        elif col == "common_name":
            cols[col] = [str(rng.choice(names)) for _ in range(n)]
        elif col == "camera_datetime":
            cols[col] = [f"2023-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}T10:00:00" for _ in range(n)]
        elif typ == "BIGINT":
            cols[col] = [int(v) if v >= 0 else None for v in rng.integers(-1, 5, n)]
        elif typ == "DOUBLE":
            cols[col] = [float(v) if v > 0.2 else None for v in rng.random(n)]
        else:
            cols[col] = [f"{col}_{v}" if v else None for v in rng.integers(0, 7, n)]
    return pa.table({c: pa.array(cols[c], type=pa.int64() if t == "BIGINT" else pa.float64() if t == "DOUBLE"
                                 else pa.string()) for c, t in FIELD_COLUMNS})


def _cfg(path: Path, db: str, table: str, id_column: str, **query) -> dict:
    q = {"db": db, "filters": [], "sample": None, "projection": None, "sort": None, "limit": None,
         "offset": None, "preview": 0, "out": ["json", "csv"]}
    q.update(query)
    return {"db": {db: {"path": str(path), "table": table, "id_column": id_column}}, "query": q}


def _outputs(cfg: dict, run: Path) -> tuple[str, str, dict]:
    run_query_stage(cfg, run)
    q = run / "query"
    return (q / "query.json").read_text(), (q / "query.csv").read_text(), read_json(q / "query_spec.json")


SEMIF_QUERIES = [
    dict(filters=["state=NC,SC", "estimated_bbox_area_cm2>=100", "datetime>=2023-01-01"],
         sample="stratified:by=category_common_name|area_bin,per_group=3,seed=2", sort="datetime:desc"),
    dict(filters=['{"has_masks": 1}'], sample="seeded:n=40,seed=5", projection="cutout_id,state,bbox_xywh"),
    dict(filters=["category_common_name!=barley"], sort="estimated_bbox_area_cm2", limit=25, offset=10),
    dict(filters=["state=ZZ"]),  # nothing matches
]


@pytest.mark.parametrize("query", SEMIF_QUERIES)
def test_semif_sqlite_gives_the_same_records_and_values_as_duckdb(tmp_path, semif_table_3k, semif_db, query):
    declared = dict(SEMIF_COLUMNS)
    lite = write_sqlite(semif_table_3k, tmp_path / "semif.sqlite", "semif", declared)
    want_json, want_csv, want_spec = _outputs(_cfg(semif_db, "semif", "semif", "cutout_id", **query), tmp_path / "d")
    got_json, got_csv, got_spec = _outputs(_cfg(lite, "semif", "semif", "cutout_id", **query), tmp_path / "s")
    assert got_json == want_json and got_csv == want_csv  # same ids, same order, same values and types
    for key in ("rows_total", "rows_matched", "rows_sampled", "rows_returned", "groups", "params", "sql"):
        assert got_spec[key] == want_spec[key], key
    assert got_spec["database"]["kind"] == "sqlite" and got_spec["database"]["read"]["rows_by"] == "rowid"


def test_field_sqlite_gives_the_same_records_and_values_as_duckdb(tmp_path):
    table = field_table(400)
    duck = write_duckdb(tmp_path / "field.duckdb", {"field_data": table})
    lite = write_sqlite(table, tmp_path / "field.sqlite", "field_data", dict(FIELD_COLUMNS))
    for i, query in enumerate([
        dict(filters=["camera_datetime>=2023-06-01", "us_state=NC,TX"], sort="camera_datetime:desc"),
        dict(sample="stratified:by=common_name|us_state,per_group=4,seed=9"),
        dict(filters=["size_mib is null"], sample="random:n=7,seed=3", projection=["id", "common_name", "rgb"]),
    ]):
        want = _outputs(_cfg(duck, "field", "field_data", "id", **query), tmp_path / f"d{i}")
        got = _outputs(_cfg(lite, "field", "field_data", "id", **query), tmp_path / f"s{i}")
        assert got[0] == want[0] and got[1] == want[1], query
        assert len(read_json(tmp_path / f"s{i}" / "query" / "query.json")) > 0


def test_sqlite_reads_only_the_needed_columns_and_writes_nothing(tmp_path, semif_table_3k, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    src_dir = tmp_path / "db"
    src_dir.mkdir()
    lite = write_sqlite(semif_table_3k, src_dir / "semif.sqlite", "semif", dict(SEMIF_COLUMNS))
    cfg = _cfg(lite, "semif", "semif", "cutout_id", filters=["state=NC", "has_masks=1"],
               sample="stratified:by=category_common_name,per_group=2", sort="datetime", preview=3)
    _, _, spec = _outputs(cfg, tmp_path / "run")
    # table order, the id first in the needs but table order in the read
    assert spec["database"]["read"]["columns"] == ["datetime", "has_masks", "cutout_id", "state",
                                                   "category_common_name"]
    records = read_json(tmp_path / "run" / "query" / "query.json")
    assert list(records[0]) == [c for c, _ in SEMIF_COLUMNS]  # full rows all the same
    assert os.listdir(src_dir) == ["semif.sqlite"] and list(home.rglob("*")) == []


def test_large_selections_are_fetched_in_chunks_in_order(tmp_path, semif_table_3k, semif_db, monkeypatch):
    monkeypatch.setattr(sqlite_reader, "FETCH_CHUNK", 7)
    lite = write_sqlite(semif_table_3k, tmp_path / "semif.sqlite", "semif", dict(SEMIF_COLUMNS))
    query = dict(filters=["state=NC"], sort="estimated_bbox_area_cm2:desc")
    want = _outputs(_cfg(semif_db, "semif", "semif", "cutout_id", **query), tmp_path / "d")
    got = _outputs(_cfg(lite, "semif", "semif", "cutout_id", **query), tmp_path / "s")
    assert got[0] == want[0] and got[2]["rows_returned"] > 100


@pytest.mark.parametrize("kind", ["without_rowid", "view", "rowid_column"])
def test_tables_without_a_usable_rowid_fetch_by_id(tmp_path, tiny_db, kind):
    rows = duckdb.connect(str(tiny_db), read_only=True).sql("SELECT * FROM semif").to_arrow_table()
    declared = {c: "VARCHAR" for c in rows.column_names} | {"estimated_bbox_area_cm2": "DOUBLE", "has_masks": "BIGINT"}
    path = tmp_path / "t.sqlite"
    table = "semif"
    if kind == "without_rowid":
        con = sqlite3.connect(path)
        cols = ", ".join(f"{c} {SQLITE_TYPES[declared[c]]}" for c in rows.column_names)
        con.execute(f"CREATE TABLE semif ({cols}, PRIMARY KEY (cutout_id)) WITHOUT ROWID")
        con.executemany(f"INSERT INTO semif VALUES ({', '.join('?' for _ in rows.column_names)})",
                        [tuple(r.values()) for r in rows.to_pylist()])
        con.commit()
        con.close()
    elif kind == "view":
        write_sqlite(rows, path, "base", declared)
        con = sqlite3.connect(path)
        con.execute("CREATE VIEW semif AS SELECT * FROM base")
        con.commit()
        con.close()
    else:  # real columns named rowid and _rowid_ hide those names; oid still reaches the rowid
        rows = rows.append_column("rowid", pa.array(["x"] * rows.num_rows)).append_column(
            "_rowid_", pa.array(["y"] * rows.num_rows))
        write_sqlite(rows, path, "semif", declared | {"rowid": "VARCHAR", "_rowid_": "VARCHAR"})
    query = dict(filters=["estimated_bbox_area_cm2>=99.5"], sort="estimated_bbox_area_cm2:desc")
    got = _outputs(_cfg(path, "semif", table, "cutout_id", **query), tmp_path / "s")
    assert [r["cutout_id"] for r in read_json(tmp_path / "s" / "query" / "query.json")] == [
        "TX_1_0", "NC_2_0", "MD_1_0", "NC_1_1", "TX_1_1"]
    assert got[2]["database"]["read"]["rows_by"] == {"rowid_column": "oid"}.get(kind, "cutout_id")


def test_values_of_another_type_widen_the_column(tmp_path, monkeypatch):
    # small batches: the odd values arrive after the driver has fixed the column types
    monkeypatch.setattr(sqlite_reader, "BATCH_ROWS", 2)
    path = tmp_path / "odd.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE semif (cutout_id TEXT, n INTEGER, x REAL, mixed INTEGER, num NUMERIC, untyped, "
                "empty TEXT)")
    rows = [(f"r{i}", i, i / 2, i, i, f"u{i}", None) for i in range(8)]
    # `n` holds text only in a selected row: widened while fetching the selected rows
    rows += [("late", "seven", 2, "not a number", 2.5, 7, None), ("last", 3, None, 5.5, 1, None, None)]
    con.executemany("INSERT INTO semif VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    cfg = _cfg(path, "semif", "semif", "cutout_id", filters=["mixed=not a number,5.5,3"],
               projection="cutout_id,n,x,mixed,num,untyped,empty")
    _, _, spec = _outputs(cfg, tmp_path / "r")
    got = read_json(tmp_path / "r" / "query" / "query.json")
    assert got == [
        {"cutout_id": "last", "n": "3", "x": None, "mixed": "5.5", "num": 1.0, "untyped": None, "empty": None},
        {"cutout_id": "late", "n": "seven", "x": 2.0, "mixed": "not a number", "num": 2.5, "untyped": "7",
         "empty": None},
        {"cutout_id": "r3", "n": "3", "x": 1.5, "mixed": "3", "num": 3.0, "untyped": "u3", "empty": None},
    ]


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
@pytest.mark.parametrize(
    ("query", "message"),
    [
        (dict(filters=["stat=NC"]), "unknown column 'stat'.*did you mean 'state'"),
        (dict(filters=['{"categroy_common_name": "wheat"}']), "did you mean 'category_common_name'"),
        (dict(sample="stratified:by=sate,per_group=2"), "query.sample.*did you mean 'state'"),
        (dict(sort="datetme:desc"), "query.sort.*did you mean 'datetime'"),
        (dict(projection="cutout_id,mask_pth"), "query.projection.*did you mean 'mask_path'"),
        (dict(filters=["state=="]), "a value is missing after =="),
        (dict(filters=["estimated_bbox_area_cm2>=big"]), "is numeric but 'big' is not a number"),
        (dict(sample="stratified:by=state"), "needs by=col"),
        (dict(out=["xlsx"]), "unknown format 'xlsx'"),
    ],
)
def test_check_query_config_refuses_bad_queries_in_one_line(tmp_path, tiny_db, cfg_for, kind, query, message):
    path = tiny_db if kind == "duckdb" else _tiny_sqlite(tiny_db, tmp_path)
    with pytest.raises(AgirError, match=message) as err:
        check_query_config(cfg_for(path, **query))
    assert "\n" not in str(err.value)


def test_check_query_config_accepts_a_good_query_and_writes_nothing(tmp_path, tiny_db, cfg_for):
    path = _tiny_sqlite(tiny_db, tmp_path)
    before = sorted(os.listdir(tmp_path))
    check_query_config(cfg_for(path, filters=["state=NC", "datetime>=2023-06-01"],
                               sample="stratified:by=state,per_group=1", sort="datetime:desc",
                               projection="cutout_id,state"))
    check_query_config(cfg_for(tiny_db, filters=["category_common_name=wheat"]))
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_values_no_row_has_get_one_warning_with_the_nearest(tmp_path, tiny_db, cfg_for, caplog, kind):
    path = tiny_db if kind == "duckdb" else _tiny_sqlite(tiny_db, tmp_path)
    cfg = cfg_for(path, filters=["category_common_name=amaranth,barley,ryee", "state=NC", "code=007"])
    with caplog.at_level(logging.WARNING, logger="agir"):
        run_query_stage(cfg, tmp_path / "r")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == ["filter 'category_common_name=amaranth,barley,ryee': no record has category_common_name = "
                     "'amaranth' (nearest present: 'palmer amaranth'); 'ryee' (nearest present: 'rye'); "
                     "check the spelling or the values with --preview"]


def _tiny_sqlite(tiny_db: Path, tmp_path: Path) -> Path:
    rows = duckdb.connect(str(tiny_db), read_only=True).sql("SELECT * FROM semif").to_arrow_table()
    declared = {c: "VARCHAR" for c in rows.column_names} | {"estimated_bbox_area_cm2": "DOUBLE", "has_masks": "BIGINT"}
    return write_sqlite(rows, tmp_path / "tiny.sqlite", "semif", declared)


CLI = Path(sys.executable).parent / "agir-cvtoolkit"
ARGS = ["--filters", "state=NC,SC", "--filters", "has_masks=1", "--sample",
        "stratified:by=category_common_name,per_group=2,seed=1", "--sort", "datetime:desc"]


def _cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "query", "--config", "config.yaml", "--cores", "1", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_query_command_on_a_sqlite_file(tmp_path, semif_table_3k):
    rows = semif_table_3k.slice(0, 600)
    lite = write_sqlite(rows, tmp_path / "semif.sqlite", "semif", dict(SEMIF_COLUMNS))
    work = tmp_path / "project"
    work.mkdir()
    write_config(work, **{"db.semif.path": str(lite), "db.field.path": str(lite)})
    proc = _cli(work, *ARGS, "--preview", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = sorted(work.glob("outputs/**/query/query.json"))
    assert len(got) == 1
    # the same query on a DuckDB copy of the same rows, through the library
    duck = write_duckdb(tmp_path / "semif.duckdb", {"semif": rows})
    cfg = {"db": {"semif": {"path": str(duck), "table": "semif", "id_column": "cutout_id"}},
           "query": {"db": "semif", "filters": ["state=NC,SC", "has_masks=1"],
                     "sample": "stratified:by=category_common_name,per_group=2,seed=1", "sort": "datetime:desc"}}
    run_query_stage(cfg, tmp_path / "duck")
    want = (tmp_path / "duck" / "query" / "query.json").read_text()
    assert got[0].read_text() == want and want.count("cutout_id") > 4
    assert "first 3 of" in proc.stdout + proc.stderr + "".join(p.read_text() for p in work.rglob("*.log"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["duck", "project", "semif.duckdb", "semif.sqlite"]

    bad = _cli(work, "--filters", "stat=NC")
    assert bad.returncode != 0
    said = bad.stdout + bad.stderr + "".join(p.read_text() for p in work.rglob("*.log"))
    assert "unknown column 'stat'" in said and "did you mean 'state'" in said
    assert got[0].read_text() == want  # checked before Snakemake: the good outputs stay
