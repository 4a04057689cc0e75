"""A SQLite table read column by column as Arrow, through the ADBC SQLite driver.

The query stage needs only a few columns of every row (filters, strata, sort, the id) and then the
full rows of the few records it selected. Copying all columns through Python's sqlite3 took ~40 s
per million rows; the ADBC driver hands Arrow record batches straight to DuckDB (~2 s for 7
columns of a million rows), and the selected rows are fetched afterwards by rowid.

Safety: the file is opened `mode=ro` (SQLite refuses writes) and, when no `-wal` sidecar exists,
`immutable=1` too (a read-only reader of a WAL database would otherwise leave -wal/-shm files
beside it). Identifiers are checked against the table before they are quoted; values are bound.

Types follow the declared type's affinity (INTEGER -> BIGINT, REAL/NUMERIC -> DOUBLE, TEXT and
no type -> VARCHAR). SQLite is dynamically typed, so a column may hold a value of another type:
the driver reports a type mismatch, the column is widened (integer -> real -> text, keeping every
value as stored) and the read is repeated.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc

from agir.errors import AgirError

KEY_COLUMN = "__agir_key"  # the row's key in SQLite (rowid, else the id column), kept beside loaded columns
MARK_COLUMN = "__agir_mark"  # 1 on the typed first row that fixes the driver's column types, 0 on data rows
BATCH_ROWS = 16384
FETCH_CHUNK = 50_000
RE_MISMATCH = re.compile(r"Type mismatch in column (\d+): expected (\S+) but got (\S+)")
# kind -> (literal that fixes the driver's inferred type, Arrow type, DuckDB type)
KINDS = {
    "integer": ("0", pa.int64(), "BIGINT"),
    "real": ("0.0", pa.float64(), "DOUBLE"),
    "text": ("''", pa.string(), "VARCHAR"),
    "text_cast": ("''", pa.string(), "VARCHAR"),  # read through CAST(... AS TEXT): numbers and blobs as text
}
T = TypeVar("T")


def quote_sqlite(name: str) -> str:
    """A SQLite identifier literal; only ever applied to names already checked against the table."""
    return '"' + str(name).replace('"', '""') + '"'


def declared_kind(decl: str | None) -> str:
    """SQLite declared type -> reading kind, by SQLite's type-affinity rules."""
    d = (decl or "").upper()
    if "INT" in d or "BOOL" in d:
        return "integer"
    if any(k in d for k in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if any(k in d for k in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return "real"
    return "text_cast"  # no declared type (BLOB affinity) or a date type: text, as the value is stored


def missing_table_error(table: str, tables: list[str], path: Path) -> AgirError:
    close = difflib.get_close_matches(table, tables, n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}?" if close else f"tables: {', '.join(tables) or 'none'}"
    return AgirError(f"{path}: no table {table!r} ({hint}); set db.<name>.table")


def sqlite_uri(path: Path) -> str:
    uri = "file:" + str(path.resolve()).replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    if not Path(str(path) + "-wal").exists():
        uri += "&immutable=1"
    return uri


class _Settled(Exception):
    """A column's kind changed after looking at the driver's types: read again."""


class SqliteTable:
    """One table of a SQLite file, opened read-only; columns are read on request."""

    def __init__(self, path: Path, table: str):
        self.path = path
        self.table = table
        self.conn = adbc.connect(sqlite_uri(path))
        try:
            rows = self._all("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")
            kinds = {r[0]: r[1] for r in rows}
            if table not in kinds:
                raise missing_table_error(table, sorted(kinds), path)
            info = self._all("SELECT name, type FROM pragma_table_info(?)", (table,))
            self.kinds: dict[str, str] = {r[0]: declared_kind(r[1]) for r in info}
            self.key_expr, self.key_kind = self._rowid(kinds[table] == "view")
        except BaseException:
            self.conn.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------
    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, tuple(params) if params else None)
            return cur.fetchall()

    def _rowid(self, is_view: bool) -> tuple[str | None, str]:
        """The name that reaches SQLite's rowid (None for a view or a WITHOUT ROWID table)."""
        if is_view:
            return None, "integer"
        lower = {c.lower() for c in self.kinds}
        for name in ("rowid", "_rowid_", "oid"):
            if name in lower:
                continue  # a real column of that name hides the rowid
            try:
                self._all(f"SELECT {name} FROM {quote_sqlite(self.table)} LIMIT 0")
            except adbc.Error:
                return None, "integer"  # WITHOUT ROWID
            return name, "integer"
        return None, "integer"

    def use_id_key(self, id_column: str) -> None:
        """Without a rowid, rows are found again by the id column."""
        if self.key_expr is None:
            self.key_expr, self.key_kind = quote_sqlite(id_column), self.kinds[id_column]

    def close(self) -> None:
        self.conn.close()

    @property
    def key_name(self) -> str:
        return (self.key_expr or "").strip('"')

    def arrow_type(self, column: str) -> pa.DataType:
        return KINDS[self.kinds[column]][1]

    def duck_type(self, column: str) -> str:
        return KINDS[self.kinds[column]][2]

    # -- reading -------------------------------------------------------------------------------
    def _select(self, columns: Sequence[str], tail: str) -> str:
        """A typed first row (MARK=1) and then the rows (MARK=0): the driver infers each column's
        type from its first rows, and a column NULL there would otherwise come out as integers."""
        if self.key_expr is None:
            raise AgirError(f"{self.path}: table {self.table!r} has no rowid; set db.<name>.id_column")
        key_kind = self.key_kind
        first = [f"1 AS {MARK_COLUMN}", f"{KINDS[key_kind][0]} AS {KEY_COLUMN}"]
        rest = ["0", self.key_expr]
        for c in columns:
            kind = self.kinds[c]
            first.append(f"{KINDS[kind][0]} AS {quote_sqlite(c)}")
            rest.append(f"CAST({quote_sqlite(c)} AS TEXT)" if kind == "text_cast" else quote_sqlite(c))
        return (f"SELECT {', '.join(first)} UNION ALL "
                f"SELECT {', '.join(rest)} FROM {quote_sqlite(self.table)}{tail}")

    def _set_kind(self, index: int, columns: Sequence[str], new: str) -> bool:
        """Set the kind of result column `index` (1 = the key, 2.. = `columns`); False if unchanged."""
        if index == 1:
            changed, self.key_kind = self.key_kind != new, new
            return changed
        if not 2 <= index < 2 + len(columns):
            return False
        name = columns[index - 2]
        changed, self.kinds[name] = self.kinds[name] != new, new
        return changed

    def _kind_at(self, index: int, columns: Sequence[str]) -> str:
        return self.key_kind if index == 1 else self.kinds[columns[index - 2]]

    def _widen(self, exc: BaseException, columns: Sequence[str]) -> bool:
        """On the driver's type-mismatch error (a value of another type after the first batch), widen
        that column: integer -> real for a real value, else -> text. False for any other error."""
        m = RE_MISMATCH.search(str(exc))
        if not m or not 1 <= int(m.group(1)) < 2 + len(columns):
            return False
        index = int(m.group(1))
        kind = self._kind_at(index, columns)
        return self._set_kind(index, columns, "real" if kind == "integer" and m.group(3) == "DOUBLE" else "text_cast")

    def _settle(self, schema: pa.Schema, columns: Sequence[str]) -> None:
        """Within its first batch the driver itself turns a column of mixed values into text (or real):
        record that and read again, so that every batch, and every later read, agrees."""
        changed = False
        for index, field in enumerate(schema):
            if index == 0:
                continue
            kind, t = self._kind_at(index, columns), field.type
            if pa.types.is_floating(t) and kind == "integer":
                changed |= self._set_kind(index, columns, "real")
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                if kind in ("integer", "real"):
                    changed |= self._set_kind(index, columns, "text_cast")
            elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
                changed |= self._set_kind(index, columns, "text_cast")
        if changed:
            raise _Settled()

    def _retrying(self, columns: Sequence[str], attempt: Callable[[], T]) -> T:
        for _ in range(3 * len(columns) + 4):
            try:
                return attempt()
            except _Settled:
                continue
            except Exception as exc:  # the driver's error reaches us through Arrow or DuckDB
                if not self._widen(exc, columns):
                    raise
        raise AgirError(f"{self.path}: could not settle the column types of table {self.table!r}")

    def stream(self, columns: Sequence[str], consume: Callable[[pa.RecordBatchReader], T],
               limit: int | None = None) -> T:
        """consume(reader) over (MARK, KEY, *columns) of every row (or the first `limit`), typed."""
        tail = f" LIMIT {int(limit)}" if limit is not None else ""

        def attempt() -> T:
            with self.conn.cursor() as cur:
                cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
                cur.execute(self._select(columns, tail))
                reader = cur.fetch_record_batch()
                self._settle(reader.schema, columns)
                return consume(reader)

        return self._retrying(columns, attempt)

    def fetch(self, keys: Iterable[Any], columns: Sequence[str]) -> pa.Table:
        """Full rows (`columns`) of the rows whose key is in `keys`, in the order of `keys`.

        Keys go to SQLite as one bound JSON array per chunk (`IN (SELECT value FROM json_each(?))`):
        no limit on the number of host parameters, and each row is found through the rowid b-tree.
        """
        keys = list(keys)

        def attempt() -> pa.Table:
            parts = []
            sql = self._select(columns, f" WHERE {self.key_expr} IN (SELECT value FROM json_each(?))")
            with self.conn.cursor() as cur:
                for start in range(0, len(keys), FETCH_CHUNK):
                    cur.execute(sql, (json.dumps(keys[start:start + FETCH_CHUNK]),))
                    part = cur.fetch_arrow_table()
                    self._settle(part.schema, columns)
                    parts.append(part.filter(pc.equal(part.column(MARK_COLUMN), 0)))
            schema = pa.schema([(MARK_COLUMN, pa.int64()), (KEY_COLUMN, KINDS[self.key_kind][1])]
                               + [(c, self.arrow_type(c)) for c in columns])
            return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()

        got = self._retrying(columns, attempt)
        where = pc.index_in(pa.array(keys, type=got.schema.field(KEY_COLUMN).type), value_set=got.column(KEY_COLUMN))
        if where.null_count:
            raise AgirError(f"{self.path}: {where.null_count} selected rows vanished while reading; "
                            "the database changed during the query, run it again")
        return got.take(where).select(list(columns))
