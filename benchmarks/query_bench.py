"""Query stage vs the original approach on a 1,000,000-row `semif` table.

Both sides run the same filter and `stratified:by=category_common_name|estimated_area_bin,per_group=50`
and write the selected records to JSON:
  * agir: `run_query_stage` on a DuckDB file (the whole stage: open, validate, count, sample, write
    query.json + query_spec.json + metrics.json, source fingerprint included);
  * peer: plain sqlite3 running the original toolkit's SQL on the same rows in a SQLite file —
    `ROW_NUMBER() OVER (PARTITION BY ... ORDER BY RANDOM())` — then fetching and writing JSON.
Prints `query_speedup_vs_sqlite=<peer seconds / agir seconds>` (best of --repeat runs each).

    .venv/bin/python benchmarks/query_bench.py [--rows 1000000] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from agir.db.query import run_query_stage
from agir.demo.tables import SEMIF_COLUMNS, synthetic_semif, write_duckdb
from agir.runs import read_json

STATES = ("NC", "SC", "GA")
MIN_AREA = 50.0
PER_GROUP = 50
SAMPLE = f"stratified:by=category_common_name|estimated_area_bin,per_group={PER_GROUP}"
FILTERS = [f"state={','.join(STATES)}", f"estimated_bbox_area_cm2>={MIN_AREA}", "has_masks=1"]


def build(rows: int, work: Path) -> tuple[Path, Path]:
    t = time.perf_counter()
    table = synthetic_semif(rows, seed=0)
    duck = write_duckdb(work / "semif.duckdb", {"semif": table})
    lite = work / "semif.sqlite"
    con = sqlite3.connect(lite)
    types = {"BIGINT": "INTEGER", "DOUBLE": "REAL", "VARCHAR": "TEXT"}
    con.execute(f"CREATE TABLE semif ({', '.join(f'{c} {types[k]}' for c, k in SEMIF_COLUMNS)})")
    marks = ", ".join("?" for _ in SEMIF_COLUMNS)
    step = 100_000
    for start in range(0, table.num_rows, step):
        part = table.slice(start, step)
        con.executemany(f"INSERT INTO semif VALUES ({marks})", zip(*(c.to_pylist() for c in part.columns)))
    con.commit()
    con.close()
    print(f"built {rows} rows (DuckDB {duck.stat().st_size / 2**20:.0f} MiB, SQLite {lite.stat().st_size / 2**20:.0f} "
          f"MiB) in {time.perf_counter() - t:.1f} s", flush=True)
    return duck, lite


def run_sqlite(lite: Path, out: Path) -> tuple[float, int]:
    """The original approach: filter + ROW_NUMBER() OVER (... ORDER BY RANDOM()) in SQLite, then JSON."""
    t = time.perf_counter()
    con = sqlite3.connect(lite)
    con.row_factory = sqlite3.Row
    marks = ", ".join("?" for _ in STATES)
    sql = (f"SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY category_common_name, estimated_area_bin "
           f"ORDER BY RANDOM()) AS rn FROM semif WHERE state IN ({marks}) AND estimated_bbox_area_cm2 >= ? "
           f"AND has_masks = ?) WHERE rn <= ?")
    rows = [dict(r) for r in con.execute(sql, (*STATES, MIN_AREA, 1, PER_GROUP))]
    con.close()
    out.write_text(json.dumps(rows, indent=2))
    return time.perf_counter() - t, len(rows)


def run_agir(db: Path, run: Path) -> tuple[float, int]:
    cfg = {"db": {"semif": {"path": str(db), "table": "semif", "id_column": "cutout_id"}},
           "query": {"db": "semif", "filters": FILTERS, "sample": SAMPLE, "out": ["json"], "preview": 0}}
    t = time.perf_counter()
    metrics = run_query_stage(cfg, run)
    return time.perf_counter() - t, metrics["rows_returned"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the databases here (default: a temp folder)")
    ap.add_argument("--sqlite-source", action="store_true",
                    help="also time agir reading the SQLite file itself (copied into DuckDB through sqlite3)")
    args = ap.parse_args()
    logging.getLogger("agir").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        duck, lite = build(args.rows, work)
        peer, ours, ours_lite = [], [], []
        for i in range(args.repeat):
            s, n_peer = run_sqlite(lite, work / "sqlite.json")
            a, n_agir = run_agir(duck, work / f"run_duckdb_{i}")
            peer.append(s)
            ours.append(a)
        if args.sqlite_source:  # for information: agir reading the SQLite file itself
            ours_lite.append(run_agir(lite, work / "run_sqlite")[0])
        spec = read_json(work / "run_duckdb_0" / "query" / "query_spec.json")
        assert n_peer == n_agir, (n_peer, n_agir)  # same filter, same group caps: same number of rows
        print(f"rows={args.rows} matched={spec['rows_matched']} groups={len(spec['groups'])} returned={n_agir}")
        print(f"sqlite_window_seconds best={min(peer):.3f} median={statistics.median(peer):.3f}")
        print(f"agir_duckdb_seconds best={min(ours):.3f} median={statistics.median(ours):.3f}")
        if ours_lite:
            print(f"agir_on_sqlite_file_seconds={ours_lite[0]:.3f}")
        print(f"query_speedup_vs_sqlite={min(peer) / min(ours):.1f}")


if __name__ == "__main__":
    main()
