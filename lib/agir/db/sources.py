"""Database sources opened in DuckDB: a DuckDB file, Parquet/CSV file(s), or a SQLite file.

DuckDB is the query engine for every source. SQLite files (the real AgIR databases) are read
read-only through Python's sqlite3 (`mode=ro`, journal mode untouched) and copied into an
in-memory DuckDB table, so the source file is never modified. Each opened source exposes the
table under the fixed view name `SOURCE_VIEW`, its columns with their DuckDB types, and a
fingerprint (size, mtime, row count, content hash for files up to 256 MB) for query_spec.json.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from agir.errors import AgirError

SOURCE_VIEW = "agir_source"
HASH_LIMIT_BYTES = 256 * 1024 * 1024
SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt")
SQLITE_FETCH_ROWS = 50_000

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

    def row_count(self) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {SOURCE_VIEW}").fetchall()[0][0])

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint_files(self.files, self.row_count())

    def close(self) -> None:
        self.con.close()


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
    try:
        if kind == "duckdb":
            con = _open_duckdb(files[0], table)
        elif kind == "sqlite":
            con = _open_sqlite(files[0], table)
        else:
            con = duckdb.connect()
            strs = [str(f) for f in files]
            rel = con.read_parquet(strs) if kind == "parquet" else con.read_csv(strs)
            rel.create_view(SOURCE_VIEW)
    except AgirError:
        raise
    except (duckdb.Error, sqlite3.Error, OSError) as exc:
        raise AgirError(f"db.{name}.path: cannot read {path_text} as {kind} ({str(exc).splitlines()[0]}); "
                        "check the file is complete and of that kind") from exc
    cols = {r[0]: r[1] for r in con.execute(f"DESCRIBE {SOURCE_VIEW}").fetchall()}
    return Source(con=con, kind=kind, path=path_text, table=table, columns=cols, files=files)


def _suggest_table(table: str, tables: list[str], path: Path) -> AgirError:
    close = difflib.get_close_matches(table, tables, n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}?" if close else f"tables: {', '.join(tables) or 'none'}"
    return AgirError(f"{path}: no table {table!r} ({hint}); set db.<name>.table")


def _open_duckdb(path: Path, table: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=True)
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
    if table not in tables:
        con.close()
        raise _suggest_table(table, tables, path)
    con.execute(f"CREATE TEMP VIEW {SOURCE_VIEW} AS SELECT * FROM main.{quote_ident(table)}")
    return con


# SQLite declared type -> (DuckDB type, Arrow type) by SQLite's type-affinity rules.
def _affinity(decl: str) -> tuple[str, pa.DataType]:
    d = (decl or "").upper()
    if "INT" in d:
        return "BIGINT", pa.int64()
    if any(k in d for k in ("CHAR", "CLOB", "TEXT")):
        return "VARCHAR", pa.string()
    if any(k in d for k in ("REAL", "FLOA", "DOUB")) or "NUMERIC" in d or "DECIMAL" in d:
        return "DOUBLE", pa.float64()
    if "BOOL" in d:
        return "BIGINT", pa.int64()
    return "VARCHAR", pa.string()


def _to_arrow(values: list, typ: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # SQLite is dynamically typed: a column declared INTEGER may hold text. Keep such columns as text
        # rather than guessing, so no value is silently changed.
        return pa.array([None if v is None else (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                         for v in values], type=pa.string())


def sqlite_cache_dir() -> Path | None:
    """Where SQLite sources are cached as DuckDB copies ($AGIR_CACHE_DIR, else ~/.cache/agir); None = off."""
    env = os.environ.get("AGIR_CACHE_DIR")
    if env is not None and env.strip().lower() in ("", "0", "off", "none"):
        return None
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agir"
    return base / "sqlite"


def _open_sqlite(path: Path, table: str) -> duckdb.DuckDBPyConnection:
    """The SQLite table copied into DuckDB, reusing a cached copy while the file is unchanged.

    Copying goes through Python's sqlite3 (~10 s per 50k rows of 62 columns), so the copy is kept
    in the cache folder keyed by the file's path, size and mtime; the source itself is never touched.
    """
    cache = sqlite_cache_dir()
    if cache is None:
        con = duckdb.connect()
        _copy_sqlite(path, table, con)
        con.execute(f"CREATE TEMP VIEW {SOURCE_VIEW} AS SELECT * FROM agir_sqlite")
        return con
    st = path.stat()
    stem = hashlib.sha1(f"{path.resolve()}|{table}".encode()).hexdigest()[:16]
    target = cache / f"{stem}-{st.st_size}-{st.st_mtime_ns}.duckdb"
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            con = duckdb.connect(str(tmp))
            try:
                _copy_sqlite(path, table, con)
                con.execute("CHECKPOINT")
            except BaseException:
                con.close()
                for p in (tmp, Path(f"{tmp}.wal")):
                    p.unlink(missing_ok=True)
                raise
            con.close()
            os.replace(tmp, target)
            for old in cache.glob(f"{stem}-*.duckdb"):  # copies of earlier versions of this file
                if old != target:
                    old.unlink(missing_ok=True)
        except OSError:
            # cache folder not writable: copy into memory instead
            con = duckdb.connect()
            _copy_sqlite(path, table, con)
            con.execute(f"CREATE TEMP VIEW {SOURCE_VIEW} AS SELECT * FROM agir_sqlite")
            return con
    con = duckdb.connect(str(target), read_only=True)
    con.execute(f"CREATE TEMP VIEW {SOURCE_VIEW} AS SELECT * FROM agir_sqlite")
    return con


def _copy_sqlite(path: Path, table: str, con: duckdb.DuckDBPyConnection) -> None:
    """Copy one SQLite table into `con` as table agir_sqlite (types from the declared affinities)."""
    # mode=ro: SQLite itself refuses writes; the journal mode is never touched. Without a live -wal
    # sidecar (no writer active, every commit is in the main file), open it immutable too, because a
    # read-only reader of a WAL database otherwise leaves new -wal/-shm files beside the source.
    uri = "file:" + str(path.resolve()).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    if not Path(str(path) + "-wal").exists():
        uri += "&immutable=1"
    src = sqlite3.connect(uri, uri=True)
    try:
        tables = [r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name").fetchall()]
        if table not in tables:
            raise _suggest_table(table, tables, path)
        info = src.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
        names = [r[0] for r in info]
        types = [_affinity(r[1]) for r in info]
        col_sql = ", ".join(quote_ident(n) for n in names)
        cur = src.execute(f"SELECT {col_sql} FROM {quote_ident(table)}")
        created = False
        while True:
            rows = cur.fetchmany(SQLITE_FETCH_ROWS)
            if not rows and created:
                break
            cols = list(zip(*rows)) if rows else [[] for _ in names]
            arrays = [_to_arrow(list(c), t[1]) for c, t in zip(cols, types)]
            batch = pa.table(arrays, names=names)
            if not created:
                # Types are fixed by the declared affinities (first batch decides text fallbacks).
                con.register("agir_batch", batch)
                con.execute("CREATE TABLE agir_sqlite AS SELECT * FROM agir_batch")
                con.unregister("agir_batch")
                created = True
                fixed = {r[0]: r[1] for r in con.execute("DESCRIBE agir_sqlite").fetchall()}
                types = [(fixed[n], pa.string() if fixed[n] == "VARCHAR" else t[1]) for n, t in zip(names, types)]
            else:
                for n, arr, t in zip(names, arrays, list(types)):
                    if arr.type == pa.string() and t[0] != "VARCHAR":
                        # a later batch holds text in a numeric column: widen the column to text
                        con.execute(f"ALTER TABLE agir_sqlite ALTER {quote_ident(n)} TYPE VARCHAR")
                        types[names.index(n)] = ("VARCHAR", pa.string())
                con.register("agir_batch", batch)
                con.execute(f"INSERT INTO agir_sqlite SELECT {col_sql} FROM agir_batch")
                con.unregister("agir_batch")
            if not rows:
                break
    finally:
        src.close()
