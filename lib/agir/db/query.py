"""The query stage: select records from a database source and hand them to the rest of the loop.

Writes, under `{run}/query/`:
  query.json        the records (a JSON list of objects) — always, the canonical hand-off
  query.csv/.parquet when `query.out` asks for them
  query_spec.json   what was asked, the parsed filters, the SQL with its parameters, the source
                    fingerprint, row counts and (stratified) per-group counts — enough to reproduce it
  metrics.json      row counts and timing
Order of operations: filter -> sample -> sort -> offset/limit -> projection. Without `query.sort`,
records come ordered by the id column, so the output is deterministic.
A query matching nothing writes empty outputs and says so (it is not an error).
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import io
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agir.db.filters import Condition, build_where, filter_columns, resolve_column
from agir.db.sampling import SampleSpec, parse_sample, sample_sql
from agir.db.sources import Source, open_source, quote_ident
from agir.db.sqlite_reader import KEY_COLUMN
from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import atomic_write, write_bytes, write_json, write_text

log = get_logger("query")

OUT_FORMATS = ("json", "csv", "parquet")
PREVIEW_COLUMNS = ("cutout_id", "id", "image_id", "category_common_name", "common_name", "state", "us_state",
                   "datetime", "camera_datetime", "estimated_area_bin", "estimated_bbox_area_cm2", "has_masks")
SUMMARY_COLUMNS = ("category_common_name", "common_name")
PREVIEW_WIDTH = 32
CHECK_ROWS = 1000  # SQLite rows read by check_query_config to type the filter values
NEAREST_SCAN = 100_000  # distinct values looked at when suggesting the nearest present value


def _column_list(value: Any, source: Source, key: str) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for item in items:
        if str(item).strip() == "":
            continue
        col = resolve_column(source, item, f"query.{key}")
        if col not in out:
            out.append(col)
    return out


def parse_sort(value: Any, source: Source) -> list[tuple[str, str]]:
    """'datetime:desc,cutout_id' -> [(column, 'ASC'|'DESC')], columns checked against the table."""
    if value is None or value == "" or value == []:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        name, _, direction = text.partition(":")
        direction = (direction.strip() or "asc").lower()
        if direction not in ("asc", "desc"):
            raise AgirError(f"query.sort {text!r}: direction must be asc or desc, e.g. datetime:desc")
        out.append((resolve_column(source, name, "query.sort"), direction.upper()))
    return out


def _out_formats(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    fmts = ["json"]
    for it in items:
        for f in str(it).split(","):
            f = f.strip().lower()
            if not f:
                continue
            if f not in OUT_FORMATS:
                raise AgirError(f"query.out: unknown format {f!r}; use json, csv and/or parquet")
            if f not in fmts:
                fmts.append(f)
    return fmts


def _nonneg(value: Any, key: str) -> int | None:
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise AgirError(f"query.{key}: {value!r} is not an integer") from None
    if v < 0 or isinstance(value, bool):
        raise AgirError(f"query.{key}: must be a non-negative integer, got {value!r}")
    return v


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def columns_needed(cfg: Mapping[str, Any], source: Source, id_column: str) -> list[str]:
    """The columns filters, sampling and sort read (plus the id), checked against the table; no row is read.

    Projection columns are checked but not included: they matter only for the selected rows.
    """
    q = cfg.get("query") or {}
    cols = [id_column, *filter_columns(source, q.get("filters"))]
    spec = parse_sample(q.get("sample"), source)
    cols += spec.by if spec is not None else []
    cols += [c for c, _ in parse_sort(q.get("sort"), source)]
    _column_list(q.get("projection"), source, "projection")
    return list(dict.fromkeys(cols))


def _db_entry(cfg: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    q = cfg.get("query") or {}
    db_name = str(q.get("db") or "semif")
    dbs = cfg.get("db") or {}
    if db_name not in dbs:
        raise AgirError(f"query.db: no database {db_name!r} under db: (have {', '.join(dbs) or 'none'}); "
                        f"add db.{db_name} or pick one of those")
    return db_name, dbs[db_name]


def _open_for_query(cfg: Mapping[str, Any], check_only: bool = False) -> tuple[Source, str, str, Mapping]:
    """Open the configured source and load what the query reads (SQLite: only those columns)."""
    db_name, db_cfg = _db_entry(cfg)
    source = open_source(db_cfg, db_name)
    try:
        id_column = source.check_column(db_cfg.get("id_column") or "cutout_id", f"db.{db_name}.id_column")
        needed = columns_needed(cfg, source, id_column)
        source.load(needed, id_column, limit=CHECK_ROWS if check_only else None)
    except BaseException:
        source.close()
        raise
    return source, id_column, db_name, db_cfg


def check_query_config(cfg: Mapping[str, Any]) -> None:
    """Raise AgirError (one line) if the query stage would refuse `cfg`; writes nothing.

    Opens the source read-only and cheaply (DuckDB/Parquet/CSV: a view; SQLite: the first
    CHECK_ROWS rows of the columns the query reads) and builds the whole query: unknown columns in
    filters, sample, sort or projection (with the closest name), malformed filters or values,
    bad sample specs, limit/offset/preview/out. Meant to run before Snakemake removes old outputs.
    """
    q = cfg.get("query") or {}
    _out_formats(q.get("out"))
    _nonneg(q.get("preview"), "preview")
    source, id_column, _, _ = _open_for_query(cfg, check_only=True)
    try:
        build_query(cfg, source, id_column)
    finally:
        source.close()


def _nearest(value: str, present: list[str], n: int = 3) -> list[str]:
    """Present values that contain `value` (any case), else those that look like it."""
    low = value.lower().strip()
    found = sorted((p for p in present if low and low in p.lower()), key=lambda p: (len(p), p))[:n]
    if found:
        return found
    lowered: dict[str, str] = {}
    for p in present:
        lowered.setdefault(p.lower(), p)
    return [lowered[m] for m in difflib.get_close_matches(low, list(lowered), n=n, cutoff=0.6)]


def warn_absent_values(source: Source, conds: list[Condition]) -> list[str]:
    """One WARNING per equality/list filter on a text column naming the values no row has, with the
    nearest present values (`wheat` -> 'winter wheat'); returns the lines logged."""
    lines = []
    for c in conds:
        col = quote_ident(c.column)
        # only plain text comparisons: dates and numbers compare through expressions or as numbers
        if c.op not in ("=", "in") or source.column_kind(c.column) != "text" or not c.sql.startswith(col + " "):
            continue
        values = [v for v in c.values if isinstance(v, str)]
        if not values:
            continue
        marks = ", ".join("?" for _ in values)
        present = {r[0] for r in source.con.execute(
            f"SELECT DISTINCT {col} FROM {source.view} WHERE {col} IN ({marks})", values).fetchall()}
        missing = [v for v in values if v not in present]
        if not missing:
            continue
        pool = [r[0] for r in source.con.execute(
            f"SELECT DISTINCT {col} FROM {source.view} WHERE {col} IS NOT NULL LIMIT {NEAREST_SCAN}").fetchall()]
        parts = []
        for v in missing:
            near = _nearest(v, pool)
            parts.append(f"{v!r} (nearest present: {', '.join(repr(x) for x in near)})" if near
                         else f"{v!r} (no similar value)")
        line = (f"filter {c.text!r}: no record has {c.column} = {'; '.join(parts)}; "
                "check the spelling or the values with --preview")
        log.warning("%s", line)
        lines.append(line)
    return lines


def build_query(cfg: Mapping[str, Any], source: Source, id_column: str) -> dict[str, Any]:
    """Everything the query will do, validated: SQL + parameters and the parsed pieces."""
    q = cfg.get("query") or {}
    where, where_params, conds = build_where(source, q.get("filters"))
    spec = parse_sample(q.get("sample"), source)
    projection = _column_list(q.get("projection"), source, "projection")
    sort = parse_sort(q.get("sort"), source)
    limit = _nonneg(q.get("limit"), "limit")
    offset = _nonneg(q.get("offset"), "offset")
    filtered = f"SELECT * FROM {source.view} WHERE {where}"
    sampled, params = sample_sql(filtered, where_params, spec, id_column)
    out_cols = projection or list(source.columns)
    order = [f"{quote_ident(c)} {d} NULLS LAST" for c, d in sort]
    if id_column not in [c for c, _ in sort]:
        order.append(f"{quote_ident(id_column)} ASC")  # a total order: same query, same records
    select = ", ".join(quote_ident(c) for c in projection) if projection else "*"
    tail = f" ORDER BY {', '.join(order)}"
    if limit is not None:
        tail += f" LIMIT {limit}"
    if offset:
        tail += f" OFFSET {offset}"
    final = f"SELECT {select} FROM ({sampled}) AS sampled{tail}"
    # SQLite sources hold only the needed columns in DuckDB: select the row keys, fetch the rows after
    keys = f"SELECT {quote_ident(KEY_COLUMN)} FROM ({sampled}) AS sampled{tail}" if source.lazy else None
    return {"where": where, "where_params": where_params, "conditions": conds, "sample": spec,
            "projection": projection, "sort": sort, "limit": limit, "offset": offset,
            "sampled_sql": sampled, "params": params, "sql": final, "keys_sql": keys, "columns": out_cols}


def _group_counts(source: Source, plan: dict[str, Any]) -> list[dict[str, Any]]:
    spec: SampleSpec = plan["sample"]
    cols = ", ".join(quote_ident(c) for c in spec.by)
    rows = source.con.execute(
        f"SELECT {cols}, count(*) AS n FROM {source.view} WHERE {plan['where']} GROUP BY {cols} "
        f"ORDER BY n DESC, {cols}", plan["where_params"]).fetchall()
    out = []
    for r in rows:
        group = {c: _jsonable(v) for c, v in zip(spec.by, r[:-1])}
        out.append({"group": group, "matched": int(r[-1]), "sampled": min(int(r[-1]), int(spec.per_group or 0))})
    return out


def _preview_text(table: pa.Table, n: int) -> str:
    cols = [c for c in table.column_names if c in PREVIEW_COLUMNS] or table.column_names[:8]
    rows = table.slice(0, n).select(cols).to_pylist()

    def cell(v: Any) -> str:
        s = "" if v is None else str(_jsonable(v))
        return s if len(s) <= PREVIEW_WIDTH else s[: PREVIEW_WIDTH - 1] + "…"

    grid = [cols] + [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _summary_lines(table: pa.Table, groups: list[dict] | None, spec: SampleSpec | None) -> list[str]:
    lines = []
    if groups:
        lines.append(f"per group ({' | '.join(spec.by)}): matched -> sampled")
        for g in groups:
            label = " | ".join("NULL" if v is None else str(v) for v in g["group"].values())
            lines.append(f"  {label}: {g['matched']} -> {g['sampled']}")
        return lines
    col = next((c for c in SUMMARY_COLUMNS if c in table.column_names), None)
    if col and table.num_rows:
        counts: dict[str, int] = {}
        for v in table.column(col).to_pylist():
            key = "NULL" if v is None else str(v)
            counts[key] = counts.get(key, 0) + 1
        lines.append(f"records per {col}:")
        lines.extend(f"  {k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return lines


def _json_ready(table: pa.Table) -> pa.Table:
    """Columns JSON can hold as they are: NaN -> null, dates/times -> ISO text, decimals -> floats."""
    cols = []
    for col, field in zip(table.columns, table.schema):
        t = field.type
        if pa.types.is_floating(t):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, t), col)
        elif pa.types.is_decimal(t):
            col = col.cast(pa.float64())
        elif pa.types.is_temporal(t):
            col = pa.chunked_array([pa.array([None if v is None else v.isoformat() for v in col.to_pylist()],
                                             pa.string())])
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            col = pa.chunked_array([pa.array([_jsonable(v) for v in col.to_pylist()], pa.string())])
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _write_outputs(table: pa.Table, out_dir: Path, formats: list[str]) -> dict[str, str]:
    # One record per line: still a JSON list and readable, and json's C encoder stays in use
    # (indent= makes the encoder pure Python, ~10x slower on large selections).
    lines = [json.dumps(r, ensure_ascii=False, default=_jsonable) for r in _json_ready(table).to_pylist()]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    written = {"json": str(write_text(out_dir / "query.json", text))}
    if "csv" in formats:
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        if table.num_rows == 0 and not buf.getvalue():
            buf.write((",".join(table.column_names) + "\n").encode())
        written["csv"] = str(write_bytes(out_dir / "query.csv", buf.getvalue()))
    if "parquet" in formats:
        with atomic_write(out_dir / "query.parquet", "wb") as fh:
            pq.write_table(table, fh)
        written["parquet"] = str(out_dir / "query.parquet")
    return written


def run_query_stage(cfg: Mapping[str, Any], run: str | Path, **_: Any) -> dict[str, Any]:
    """Run the query stage for `cfg` into `{run}/query/`; returns the metrics dict."""
    started = time.perf_counter()
    q = cfg.get("query") or {}
    formats = _out_formats(q.get("out"))
    preview = _nonneg(q.get("preview"), "preview") or 0
    source, id_column, db_name, db_cfg = _open_for_query(cfg)
    try:
        plan = build_query(cfg, source, id_column)
        warn_absent_values(source, plan["conditions"])
        rows_total = source.row_count()
        rows_matched = int(source.con.execute(
            f"SELECT count(*) FROM {source.view} WHERE {plan['where']}", plan["where_params"]).fetchall()[0][0])
        if plan["keys_sql"] is not None:
            keys = source.con.execute(plan["keys_sql"], plan["params"]).fetchnumpy()[KEY_COLUMN].tolist()
            table = source.fetch_rows(keys, plan["columns"])
        else:
            table = source.con.sql(plan["sql"], params=plan["params"]).to_arrow_table()
        spec: SampleSpec | None = plan["sample"]
        groups = _group_counts(source, plan) if spec is not None and spec.mode == "stratified" else None
        # rows after sampling, before offset/limit: known without running the sample again
        if spec is None:
            rows_sampled = rows_matched
        elif groups is not None:
            rows_sampled = sum(g["sampled"] for g in groups)
        else:
            rows_sampled = min(rows_matched, int(spec.n or 0))
        fingerprint = source.fingerprint()
        kind = source.kind
        # SQLite: which columns were read for every row, and how the selected rows were found again
        read = ({"columns": source.loaded, "rows_by": source.sqlite.key_name} if source.sqlite is not None
                else None)
    finally:
        source.close()

    out_dir = Path(run) / "query"
    written = _write_outputs(table, out_dir, formats)
    conds: list[Condition] = plan["conditions"]
    query_spec = {
        "asked": {k: q.get(k) for k in ("db", "filters", "sample", "projection", "sort", "limit", "offset",
                                         "preview", "out")},
        "database": {"name": db_name, "kind": kind, "path": str(db_cfg.get("path")), "table": db_cfg.get("table"),
                     "id_column": id_column, "fingerprint": fingerprint, "read": read},
        "filters": [_jsonable(c.as_dict()) for c in conds],
        "sample": spec.as_dict() if spec else None,
        "projection": plan["projection"] or None,
        "sort": [f"{c}:{d.lower()}" for c, d in plan["sort"]],
        "limit": plan["limit"],
        "offset": plan["offset"],
        "sql": plan["sql"],
        "params": _jsonable(plan["params"]),
        "rows_total": rows_total,
        "rows_matched": rows_matched,
        "rows_sampled": rows_sampled,
        "rows_returned": table.num_rows,
        "groups": groups,
        "outputs": sorted(written),
    }
    write_json(out_dir / "query_spec.json", query_spec)
    metrics = {
        "stage": "query",
        "db": db_name,
        "rows_total": rows_total,
        "rows_matched": rows_matched,
        "rows_sampled": rows_sampled,
        "rows_returned": table.num_rows,
        "empty": table.num_rows == 0,
        "n_groups": len(groups) if groups is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out_dir / "metrics.json", metrics)

    log.info("query %s: %d rows in %s, %d matched the filters, %d sampled, %d returned -> %s",
             db_name, rows_total, db_cfg.get("path"), rows_matched, rows_sampled, table.num_rows, out_dir)
    if spec is not None and spec.mode == "random" and "seed=" not in spec.text:
        log.info("random sample drew seed %d; use sample seeded:n=%s,seed=%d to repeat it", spec.seed, spec.n, spec.seed)
    for line in _summary_lines(table, groups, spec):
        log.info("%s", line)
    if table.num_rows == 0:
        log.warning("query matched no records (filters: %s); wrote empty outputs, later stages have nothing to do",
                    "; ".join(str(f) for f in (q.get("filters") or [])) or "none")
    if preview and table.num_rows:
        print(f"first {min(preview, table.num_rows)} of {table.num_rows} records:\n" + _preview_text(table, preview),
              flush=True)
    return metrics
