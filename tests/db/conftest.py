"""Small generated databases for the query-stage tests."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from agir.demo.tables import synthetic_semif, write_duckdb

# A hand-made table whose every value a test relies on is visible here.
TINY_ROWS = [
    # cutout_id, state, category_common_name, estimated_bbox_area_cm2, estimated_area_bin, has_masks, mask_path, datetime, code, notes
    ("NC_1_0", "NC", "barley", 50.0, "0-100", 1, "m/NC_1.png", "2023:05:31 23:59:59", "007", "a, b"),
    ("NC_1_1", "NC", "wheat", 150.0, "100-500", 1, "m/NC_1.png", "2023:06:01 00:00:00", "7", None),
    ("NC_2_0", "NC", "rye", 700.0, "500-1000", 0, None, "2023:06:01 18:30:00", "12", "x"),
    ("TX_1_0", "TX", "barley", 1500.0, "1000-5000", 1, "m/TX_1.png", "2023:06:02 08:00:00", "8", None),
    ("TX_1_1", "TX", "palmer amaranth", 99.5, "0-100", 0, "None", "2022:11:09 12:00:00", None, None),
    ("MD_1_0", None, "barley", 250.0, "100-500", 1, "m/MD_1.png", "2024:01:15 10:00:00", "3", None),
]
TINY_SQL = """CREATE TABLE semif (cutout_id VARCHAR, state VARCHAR, category_common_name VARCHAR,
  estimated_bbox_area_cm2 DOUBLE, estimated_area_bin VARCHAR, has_masks BIGINT, mask_path VARCHAR,
  datetime VARCHAR, code VARCHAR, notes VARCHAR)"""


def make_cfg(db_path: Path, **query) -> dict:
    q = {"db": "semif", "filters": [], "sample": None, "projection": None, "sort": None, "limit": None,
         "offset": None, "preview": 0, "out": ["json"]}
    q.update(query)
    return {"project": {"name": "t", "subname": "r1"}, "io": {"out_root": str(db_path.parent / "runs")},
            "db": {"semif": {"path": str(db_path), "table": "semif", "id_column": "cutout_id"}}, "query": q}


@pytest.fixture()
def tiny_db(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.duckdb"
    con = duckdb.connect(str(path))
    con.execute(TINY_SQL)
    con.executemany("INSERT INTO semif VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", TINY_ROWS)
    con.close()
    return path


@pytest.fixture(scope="session")
def semif_table_3k():
    return synthetic_semif(3000, seed=7)


@pytest.fixture()
def semif_db(tmp_path: Path, semif_table_3k) -> Path:
    return write_duckdb(tmp_path / "semif.duckdb", {"semif": semif_table_3k})


@pytest.fixture()
def query_ids(tmp_path: Path):
    """Run the query stage on a db and return the record ids (in output order)."""
    from agir.db.query import run_query_stage
    from agir.runs import read_json

    counter = {"n": 0}

    def run(db_path: Path, **query) -> list[str]:
        counter["n"] += 1
        run_dir = tmp_path / f"run{counter['n']}"
        run_query_stage(make_cfg(db_path, **query), run_dir)
        return [r["cutout_id"] for r in read_json(run_dir / "query" / "query.json")]

    return run


@pytest.fixture()
def cfg_for():
    return make_cfg
