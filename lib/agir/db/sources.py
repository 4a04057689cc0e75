"""Database sources opened in DuckDB: a DuckDB file, Parquet/CSV file(s), or a SQLite file.

DuckDB is the query engine for every source. Each opened source exposes the table under the fixed
view name `SOURCE_VIEW`, its columns with their DuckDB types, and a fingerprint (size, mtime, row
count, content hash for files up to 256 MB) for query_spec.json.

SQLite files (the real AgIR databases) are opened read-only and never modified or copied whole:
`Source.load(columns)` reads just the columns a query needs (plus SQLite's rowid, as the key column)
into an in-memory DuckDB table through the ADBC driver (see sqlite_reader), filters and sampling
run there exactly as for any other source, and `Source.fetch_rows` reads the full rows of the
selected records afterwards. DuckDB's own sqlite extension would need a download (no package ships
it for DuckDB 2.x), and a cached whole-table copy no longer pays (see benchmarks/query_bench.py).
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adbc_driver_sqlite.dbapi as adbc
import duckdb
import pyarrow as pa

from agir.db.sqlite_reader import MARK_COLUMN, SqliteTable, missing_table_error
from agir.errors import AgirError

SOURCE_VIEW = "agir_source"
HASH_LIMIT_BYTES = 256 * 1024 * 1024
SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt")

NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL")
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT")


def quote_ident(name: str) -> str:
    """A DuckDB identifier literal; only ever applied to names already checked against the table."""
    return '"' + str(name).replace('"', '""') + '"'


def type_kind(duck_type: str) -> str:
    """number | integer | text | bool | temporal | other — how filter values are typed for a column."""
    t = duck_type.upper()
    if t.startswith(INTEGER_TYPES):
        return "integer"
    if t.startswith(NUMERIC_TYPES):
        return "number"
    if t == "BOOLEAN":
        return "bool"
    if t.startswith(("DATE", "TIMESTAMP", "TIME")):
        return "temporal"
    if t.startswith("VARCHAR"):
        return "text"
    return "other"


@dataclass
class Source:
    con: duckdb.DuckDBPyConnection
    kind: str  # duckdb | sqlite | parquet | csv
    path: str
    table: str
    columns: dict[str, str]  # column name -> DuckDB type, in table order
    files: list[Path] = field(default_factory=list)
    sqlite: SqliteTable | None = None  # set for SQLite sources: rows are read on request
    name: str = "semif"
    loaded: list[str] | None = None  # SQLite: the columns now in SOURCE_VIEW (besides the key)

    @property
    def view(self) -> str:
        return SOURCE_VIEW

    def column_kind(self, column: str) -> str:
        return type_kind(self.columns[column])

    def check_column(self, name: Any, where: str) -> str:
        """The column `name` exactly as the table spells it, or an AgirError naming the closest one."""
        text = str(name).strip()
        if text in self.columns:
            return text
        lower = {c.lower(): c for c in self.columns}
        if text.lower() in lower:
            return lower[text.lower()]
        close = difflib.get_close_matches(text.lower(), list(lower), n=1, cutoff=0.5)
        hint = f"did you mean {lower[close[0]]!r}?" if close else f"columns include {', '.join(list(self.columns)[:8])}, ..."
        raise AgirError(f"{where}: unknown column {text!r} in table {self.table!r} of {self.path} ({hint})")

    @property
    def lazy(self) -> bool:
        """True when SOURCE_VIEW holds only the loaded columns and full rows come from fetch_rows."""
        return self.sqlite is not None

    def load(self, columns: list[str], id_column: str, limit: int | None = None) -> None:
        """Make SOURCE_VIEW hold `columns` (+ the SQLite row key); a no-op for every other kind.

        `limit` reads only the first rows: enough to type-check a query without reading the table.
        """
        if self.sqlite is None:
            return
        self.sqlite.use_id_key(id_column)
        wanted = set(columns)
        cols = [c for c in self.columns if c in wanted]

        def consume(reader: pa.RecordBatchReader) -> None:
            self.con.execute(f"DROP VIEW IF EXISTS {SOURCE_VIEW}")
            self.con.execute("DROP TABLE IF EXISTS agir_sqlite")
            self.con.register("agir_stream", reader)
            try:
                self.con.execute(f"CREATE TABLE agir_sqlite AS SELECT * EXCLUDE ({MARK_COLUMN}) "
                                 f"FROM agir_stream WHERE {MARK_COLUMN} = 0")
            finally:
                self.con.unregister("agir_stream")

        try:
            self.sqlite.stream(cols, consume, limit)
        except (duckdb.Error, adbc.Error, OSError) as exc:
            raise AgirError(f"db.{self.name}.path: cannot read {self.path} ({str(exc).splitlines()[0]}); "
                            "check the file is a complete SQLite database") from exc
        self.con.execute(f"CREATE TEMP VIEW {SOURCE_VIEW} AS SELECT * FROM agir_sqlite")
        self.loaded = cols
        for c in self.columns:  # a column may have been widened to hold every stored value
            self.columns[c] = self.sqlite.duck_type(c)

    def fetch_rows(self, keys: list[Any], columns: list[str]) -> pa.Table:
        """SQLite: the rows whose key (sqlite_reader.KEY_COLUMN) is in `keys`, in that order, with `columns`."""
        if self.sqlite is None:
            raise AgirError("fetch_rows is for SQLite sources")
        try:
            table = self.sqlite.fetch(keys, columns)
        except (adbc.Error, OSError, pa.ArrowException) as exc:
            raise AgirError(f"db.{self.name}.path: cannot read rows of {self.path} "
                            f"({str(exc).splitlines()[0]}); check the file") from exc
        for c in columns:
            self.columns[c] = self.sqlite.duck_type(c)
        return table

    def row_count(self) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {SOURCE_VIEW}").fetchall()[0][0])

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint_files(self.files, self.row_count())

    def close(self) -> None:
        self.con.close()
        if self.sqlite is not None:
            self.sqlite.close()


def fingerprint_files(files: list[Path], rows: int) -> dict[str, Any]:
    """Size, mtime, row count, and a sha256 of the content when the files total at most 256 MB."""
    stats = [f.stat() for f in files]
    total = sum(s.st_size for s in stats)
    out: dict[str, Any] = {
        "files": [str(f) for f in files],
        "size_bytes": total,
        "mtime": max((s.st_mtime for s in stats), default=None),
        "rows": rows,
        "sha256": None,
    }
    if total <= HASH_LIMIT_BYTES:
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        out["sha256"] = h.hexdigest()
    return out


def detect_kind(path: Path, name: str = "semif") -> str:
    fname = path.name.lower()
    if fname.endswith(".parquet") or fname.endswith(".pq"):
        return "parquet"
    if fname.endswith(CSV_SUFFIXES):
        return "csv"
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head[8:12] == b"DUCK":
        return "duckdb"
    raise AgirError(
        f"db.{name}.path: {path} is not a DuckDB, SQLite, Parquet or CSV file; point it at one of those"
    )


def _expand(path_text: str, name: str) -> list[Path]:
    if any(ch in path_text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path_text))
        if not files:
            raise AgirError(f"db.{name}.path: no file matches {path_text!r}; check the pattern or generate the data")
        return files
    p = Path(path_text)
    if not p.exists():
        hint = " (run `make demo` or `agir-cvtoolkit demo-data --out data/demo`)" if "demo" in path_text else ""
        raise AgirError(f"db.{name}.path: database {p} not found{hint}; set db.{name}.path to an existing file")
    if p.is_dir():
        raise AgirError(f"db.{name}.path: {p} is a folder; give a file or a glob such as {p}/*.parquet")
    if not os.access(p, os.R_OK):
        raise AgirError(f"db.{name}.path: {p} is not readable; fix its permissions")
    return [p]


def open_source(db_cfg: Mapping[str, Any], name: str = "semif") -> Source:
    """Open `db.<name>` ({path, table, id_column}) as a DuckDB view named SOURCE_VIEW."""
    path_text = str(db_cfg.get("path") or "")
    table = str(db_cfg.get("table") or "")
    if not path_text or not table:
        raise AgirError(f"db.{name}: needs both path and table; see config/config.yaml")
    files = _expand(path_text, name)
    kinds = {detect_kind(f, name) for f in files}
    if len(kinds) != 1:
        raise AgirError(f"db.{name}.path: {path_text!r} mixes file kinds {sorted(kinds)}; use one kind per source")
    kind = kinds.pop()
    if kind in ("duckdb", "sqlite") and len(files) > 1:
        raise AgirError(f"db.{name}.path: a glob of {kind} files is not supported; give one database file")
    lite: SqliteTable | None = None
    cols: dict[str, str] | None = None
    try:
        if kind == "duckdb":
            con = _open_duckdb(files[0], table)
        elif kind == "sqlite":
            con, lite, cols = _open_sqlite(files[0], table)
        else:
            con = duckdb.connect()
            strs = [str(f) for f in files]
            rel = con.read_parquet(strs) if kind == "parquet" else con.read_csv(strs)
            rel.create_view(SOURCE_VIEW)
    except AgirError:
        raise
    except (duckdb.Error, adbc.Error, OSError) as exc:
        raise AgirError(f"db.{name}.path: cannot read {path_text} as {kind} ({str(exc).splitlines()[0]}); "
                        "check the file is complete and of that kind") from exc
    # DuckDB draws a progress bar on stdout for queries over ~2 s; the stage reports through its log
    con.execute("SET enable_progress_bar = false")
    if cols is None:
        cols = {r[0]: r[1] for r in con.execute(f"DESCRIBE {SOURCE_VIEW}").fetchall()}
    return Source(con=con, kind=kind, path=path_text, table=table, columns=cols, files=files, sqlite=lite,
                  name=name)


def _open_duckdb(path: Path, table: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=True)
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
    if table not in tables:
        con.close()
        raise missing_table_error(table, tables, path)
    con.execute(f"CREATE TEMP VIEW {SOURCE_VIEW} AS SELECT * FROM main.{quote_ident(table)}")
    return con


def _open_sqlite(path: Path, table: str) -> tuple[duckdb.DuckDBPyConnection, SqliteTable, dict[str, str]]:
    """The SQLite table opened read-only (schema only); rows reach DuckDB through Source.load."""
    lite = SqliteTable(path, table)
    return duckdb.connect(), lite, {c: lite.duck_type(c) for c in lite.kinds}
