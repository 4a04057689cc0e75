"""Database sources: DuckDB, SQLite (read-only, never modified), Parquet, CSV; fingerprints; clear errors."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from agir.db.query import run_query_stage
from agir.db.sources import open_source
from agir.errors import AgirError
from agir.runs import read_json

QUERY = dict(filters=["state=NC,TX", "estimated_bbox_area_cm2>=100", "datetime>=2023-01-01"],
             sample="stratified:by=category_common_name|area_bin,per_group=3,seed=2", sort="cutout_id:desc")


def _sqlite_copy(table, path: Path, wal: bool = False) -> Path:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    types = {"BIGINT": "INTEGER", "DOUBLE": "REAL", "VARCHAR": "TEXT"}
    from agir.demo.tables import SEMIF_COLUMNS

    decl = {c: types[t] for c, t in SEMIF_COLUMNS}
    con.execute(f"CREATE TABLE semif ({', '.join(f'{c} {decl[c]}' for c in table.column_names)})")
    marks = ", ".join("?" for _ in table.column_names)
    con.executemany(f"INSERT INTO semif VALUES ({marks})", [tuple(r.values()) for r in table.to_pylist()])
    con.commit()
    con.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ids(cfg: dict, run: Path) -> list[str]:
    run_query_stage(cfg, run)
    return [r["cutout_id"] for r in read_json(run / "query" / "query.json")]


@pytest.mark.parametrize("wal", [False, True])
def test_sqlite_is_read_only_and_unchanged(tmp_path, semif_table_3k, semif_db, cfg_for, wal):
    src = _sqlite_copy(semif_table_3k, tmp_path / "semif.sqlite", wal=wal)
    before, mtime, listing = _digest(src), src.stat().st_mtime_ns, sorted(os.listdir(tmp_path))
    got = _ids(cfg_for(src, **QUERY), tmp_path / "run_sqlite")
    assert got == _ids(cfg_for(semif_db, **QUERY), tmp_path / "run_duckdb")  # same rows as DuckDB
    assert len(got) > 10
    assert _digest(src) == before and src.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == sorted(listing + ["run_sqlite", "run_duckdb"])  # no -wal/-shm left
    con = sqlite3.connect(src)
    assert con.execute("PRAGMA journal_mode").fetchall()[0][0] == ("wal" if wal else "delete")
    con.close()
    spec = read_json(tmp_path / "run_sqlite" / "query" / "query_spec.json")
    assert spec["database"]["kind"] == "sqlite" and spec["database"]["fingerprint"]["sha256"] == before


def test_sqlite_dynamic_types_and_declared_affinities(tmp_path):
    path = tmp_path / "odd.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE semif (cutout_id TEXT, n INTEGER, x REAL, mixed INTEGER, blob_like)")
    con.executemany("INSERT INTO semif VALUES (?, ?, ?, ?, ?)",
                    [("a", 1, 1.5, 3, "p"), ("b", None, 2, "not a number", 7), ("c", 3, None, 5, None)])
    con.commit()
    con.close()
    src = open_source({"path": str(path), "table": "semif"})
    try:
        src.load(list(src.columns), "cutout_id")
        assert src.columns == {"cutout_id": "VARCHAR", "n": "BIGINT", "x": "DOUBLE", "mixed": "VARCHAR",
                               "blob_like": "VARCHAR"}
        rows = src.con.execute(f"SELECT {', '.join(src.columns)} FROM {src.view} ORDER BY cutout_id").fetchall()
        assert rows[1] == ("b", None, 2.0, "not a number", "7")  # text in an INTEGER column kept as text
    finally:
        src.close()


def test_parquet_csv_and_globs_give_the_same_rows(tmp_path, semif_table_3k, semif_db, cfg_for):
    pq.write_table(semif_table_3k, tmp_path / "semif.parquet")
    half = semif_table_3k.num_rows // 2
    (tmp_path / "parts").mkdir()
    pq.write_table(semif_table_3k.slice(0, half), tmp_path / "parts" / "a.parquet")
    pq.write_table(semif_table_3k.slice(half), tmp_path / "parts" / "b.parquet")
    pacsv.write_csv(semif_table_3k, tmp_path / "semif.csv")
    want = _ids(cfg_for(semif_db, **QUERY), tmp_path / "r0")
    for i, path in enumerate([tmp_path / "semif.parquet", tmp_path / "parts" / "*.parquet", tmp_path / "semif.csv"]):
        assert _ids(cfg_for(path, **QUERY), tmp_path / f"r{i + 1}") == want, path
    spec = read_json(tmp_path / "r2" / "query" / "query_spec.json")
    assert spec["database"]["kind"] == "parquet" and len(spec["database"]["fingerprint"]["files"]) == 2


def test_fingerprint_changes_with_content(tmp_path, tiny_db, cfg_for):
    run_query_stage(cfg_for(tiny_db), tmp_path / "a")
    con = duckdb.connect(str(tiny_db))
    con.execute("UPDATE semif SET state = 'VA' WHERE cutout_id = 'MD_1_0'")
    con.close()
    run_query_stage(cfg_for(tiny_db), tmp_path / "b")
    fa = read_json(tmp_path / "a" / "query" / "query_spec.json")["database"]["fingerprint"]
    fb = read_json(tmp_path / "b" / "query" / "query_spec.json")["database"]["fingerprint"]
    assert fa["sha256"] != fb["sha256"] and fa["rows"] == fb["rows"] == 6


def test_field_table(tmp_path, cfg_for):
    path = tmp_path / "field.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE field_data (id BIGINT, us_state VARCHAR, common_name VARCHAR, camera_datetime VARCHAR)")
    con.executemany("INSERT INTO field_data VALUES (?, ?, ?, ?)",
                    [(1, "NC", "barley", "2023-05-01T10:00:00"), (2, "TX", "cotton", "2023-07-01T10:00:00"),
                     (3, "NC", "hairy vetch", "2023-08-01T10:00:00")])
    con.close()
    cfg = cfg_for(path, db="field", filters=["camera_datetime>=2023-06-01", "us_state=NC"],
                  sort="camera_datetime:desc")
    cfg["db"]["field"] = {"path": str(path), "table": "field_data", "id_column": "id"}
    run_query_stage(cfg, tmp_path / "r")
    assert [r["id"] for r in read_json(tmp_path / "r" / "query" / "query.json")] == [3]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.duckdb", "not found"),
        (lambda d: d, "is a folder"),
        (lambda d: d / "nothing*.parquet", "no file matches"),
        (lambda d: _write(d / "junk.db", b"this is not a database at all" * 10), "not a DuckDB, SQLite, Parquet or CSV"),
        (lambda d: _write(d / "broken.parquet", b"PAR1 truncated"), "cannot read"),
        (lambda d: _write(d / "trunc.sqlite", b"SQLite format 3\x00" + b"\x00" * 50), "cannot read"),
    ],
)
def test_missing_or_unreadable_sources(tmp_path, cfg_for, make, message):
    target = make(tmp_path)
    with pytest.raises(AgirError, match=message) as err:
        run_query_stage(cfg_for(target), tmp_path / "r")
    assert "\n" not in str(err.value) and "db.semif.path" in str(err.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
