"""Query stage vs the original approach on a 1,000,000-row `semif` table.

Every side runs the same filter and `stratified:by=category_common_name|estimated_area_bin,per_group=50`
and writes the selected records to JSON:
  * peer: plain sqlite3 running the original toolkit's SQL on the rows in a SQLite file —
    `ROW_NUMBER() OVER (PARTITION BY ... ORDER BY RANDOM())` — then fetching and writing JSON;
  * agir on a DuckDB file: `run_query_stage` (the whole stage: open, validate, count, sample, write
    query.json + query_spec.json + metrics.json, source fingerprint included);
  * agir on the SQLite file itself, cold: a fresh process, no cache, reading only the columns the
    query needs and then the selected rows (its peak RSS is measured in that process).
Prints `query_speedup_vs_sqlite=<peer / agir on DuckDB>` and
`first_query_on_sqlite_vs_original=<agir cold on the SQLite file / peer>` (best of --repeat runs for the
peer and the DuckDB side; the cold run is one run). `--copy-cost` also times copying the whole SQLite
table into a DuckDB file (what a cache of the SQLite file would cost to build, with the same reader).
Both sides read a file the OS has cached (it was just written), so "cold" means no agir cache.

    .venv/bin/python benchmarks/query_bench.py [--rows 1000000] [--repeat 3] [--workdir DIR] [--copy-cost]
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import statistics
import subprocess
import sys
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
    stamp = work / "built.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("rows") == rows:
        print(f"reusing the {rows}-row databases in {work}", flush=True)
        return work / "semif.duckdb", work / "semif.sqlite"
    for old in (stamp, work / "semif.duckdb", work / "semif.sqlite"):
        old.unlink(missing_ok=True)
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
    stamp.write_text(json.dumps({"rows": rows}))
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


def agir_cfg(db: Path) -> dict:
    return {"db": {"semif": {"path": str(db), "table": "semif", "id_column": "cutout_id"}},
            "query": {"db": "semif", "filters": FILTERS, "sample": SAMPLE, "out": ["json"], "preview": 0}}


def run_agir(db: Path, run: Path) -> tuple[float, int]:
    t = time.perf_counter()
    metrics = run_query_stage(agir_cfg(db), run)
    return time.perf_counter() - t, metrics["rows_returned"]


# Peak RSS from VmHWM: ru_maxrss of a child started from this (large) process can report the parent's
# size from before the exec.
COLD = """
import json, logging, sys, time
t0 = time.perf_counter()
from agir.db.query import run_query_stage
logging.getLogger("agir").setLevel(logging.WARNING)
t = time.perf_counter()
metrics = run_query_stage(json.loads(sys.argv[1]), sys.argv[2])
done = time.perf_counter()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("AGIR_COLD " + json.dumps({"stage_s": done - t, "process_s": done - t0, "rows": metrics["rows_returned"],
                  "peak_rss_mib": hwm / 1024}), flush=True)
"""


def run_agir_cold(db: Path, run: Path) -> dict:
    """The stage in a fresh process: nothing imported, opened or cached before it."""
    proc = subprocess.run([sys.executable, "-c", COLD, json.dumps(agir_cfg(db)), str(run)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.rsplit("AGIR_COLD ", 1)[1].splitlines()[0])


def copy_cost(lite: Path, work: Path) -> float:
    """Seconds to copy the whole SQLite table into a DuckDB file through the same reader (a cache build)."""
    import duckdb

    from agir.db.sqlite_reader import MARK_COLUMN, SqliteTable

    target = work / "cache_copy.duckdb"
    target.unlink(missing_ok=True)
    t = time.perf_counter()
    table = SqliteTable(lite, "semif")
    con = duckdb.connect(str(target))

    def consume(reader):
        con.register("s", reader)
        con.execute(f"CREATE TABLE semif AS SELECT * EXCLUDE ({MARK_COLUMN}) FROM s WHERE {MARK_COLUMN} = 0")

    table.stream(list(table.kinds), consume)
    con.execute("CHECKPOINT")
    con.close()
    table.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the databases here and reuse them on the next run (default: a temp folder)")
    ap.add_argument("--sqlite-source", action="store_true", help="(kept for old command lines; always on)")
    ap.add_argument("--copy-cost", action="store_true",
                    help="also time a whole-table copy of the SQLite file into DuckDB (a cache build)")
    args = ap.parse_args()
    logging.getLogger("agir").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        duck, lite = build(args.rows, work)
        peer, ours = [], []
        for i in range(args.repeat):
            s, n_peer = run_sqlite(lite, work / "sqlite.json")
            a, n_agir = run_agir(duck, work / f"run_duckdb_{i}")
            peer.append(s)
            ours.append(a)
        cold = run_agir_cold(lite, work / "run_sqlite")
        spec = read_json(work / "run_duckdb_0" / "query" / "query_spec.json")
        assert n_peer == n_agir == cold["rows"], (n_peer, n_agir, cold)  # same filter and group caps: same count
        same = ((work / "run_sqlite" / "query" / "query.json").read_bytes()
                == (work / "run_duckdb_0" / "query" / "query.json").read_bytes())
        assert same, "agir on the SQLite file selected other records than on the DuckDB file"
        print(f"rows={args.rows} matched={spec['rows_matched']} groups={len(spec['groups'])} returned={n_agir}")
        print(f"sqlite_window_seconds best={min(peer):.3f} median={statistics.median(peer):.3f}")
        print(f"agir_duckdb_seconds best={min(ours):.3f} median={statistics.median(ours):.3f}")
        print(f"agir_on_sqlite_file_cold_seconds={cold['stage_s']:.3f} (process with imports {cold['process_s']:.3f})"
              f" same_records_as_duckdb={same}")
        print(f"agir_on_sqlite_file_peak_rss_mib={cold['peak_rss_mib']:.0f}")
        if args.copy_cost:
            build_s = copy_cost(lite, work)
            saved = cold["stage_s"] - min(ours)
            print(f"sqlite_whole_table_copy_seconds={build_s:.3f} (a cache build; each later query would save "
                  f"{saved:.3f} s, so it pays after {build_s / saved:.0f} queries on an unchanged file)"
                  if saved > 0 else f"sqlite_whole_table_copy_seconds={build_s:.3f} (a cache would save nothing)")
        print(f"query_speedup_vs_sqlite={min(peer) / min(ours):.1f}")
        print(f"first_query_on_sqlite_vs_original={cold['stage_s'] / min(peer):.3f}")


if __name__ == "__main__":
    main()
