"""The filter language (spec/query_language.md) -> SQL conditions with bound parameters.

Forms (each `--filters` value is one expression or a JSON object; all of them AND together):

    col=v            equality                    col=a,b,c      any of (IN)
    col!=v           not equal (rows where col is NULL are kept: NULL is "not v")
    col!=a,b         none of
    col<v  col<=v  col>v  col>=v  col==v
    col between lo and hi                        (inclusive)
    col is null      col is not null
    {"col": v, "col2": [a, b], "col3": null, "col4": {">=": 5}}   JSON object; a list = any of, null = is null

* The same column given twice ANDs too (`area>=10` and `area<=50` is a range; `state=NC` and
  `state=TX` matches nothing). Use `state=NC,TX` for "either".
* Values are typed by the column's type: numeric columns compare as numbers (a non-number is an
  error), text columns compare as text (`007` stays `007`). A value in quotes ('…' or "…") is text
  and is never split at commas.
* `area_bin` is accepted for `estimated_area_bin` when the table has only the latter.
* Dates: text columns whose values are EXIF-style `YYYY:MM:DD HH:MM:SS` (SemiF `datetime`) or ISO
  compare as timestamps against ISO values. A date-only value compares whole days:
  `datetime<=2023-06-01` includes all of June 1, `datetime=2023-06-01` matches that day.
* Column names are checked against the table (unknown -> error naming the closest column) and
  values are always bound parameters, so no input can run SQL of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agir.db.sources import Source, quote_ident
from agir.errors import AgirError

ALIASES = {"area_bin": "estimated_area_bin"}
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
OPS = ("!=", "<>", "<=", ">=", "==", "=", "<", ">")
RE_NULL = re.compile(rf"^\s*({IDENT})\s+is\s+(not\s+)?null\s*$", re.IGNORECASE)
RE_BETWEEN = re.compile(rf"^\s*({IDENT})\s+between\s+(.+?)\s+and\s+(.+?)\s*$", re.IGNORECASE)
RE_BINARY = re.compile(rf"^\s*({IDENT})\s*(!=|<>|<=|>=|==|=|<|>)\s*(.*?)\s*$", re.DOTALL)
RE_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
RE_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
RE_EXIF = re.compile(r"^\d{4}:\d{2}:\d{2}( \d{2}:\d{2}(:\d{2})?)?$")
# EXIF `YYYY:MM:DD` -> ISO `YYYY-MM-DD`; ISO values pass through unchanged.
EXIF_TO_ISO = r"regexp_replace(CAST({col} AS VARCHAR), '^(\d{{4}}):(\d{{2}}):(\d{{2}})', '\1-\2-\3')"
TRUE_WORDS = {"true": 1, "yes": 1, "false": 0, "no": 0}


@dataclass
class Condition:
    """One parsed filter condition: what the user wrote, and its SQL with parameters."""

    text: str
    column: str
    op: str  # = != < <= > >= in not_in between is_null is_not_null
    values: list[Any] = field(default_factory=list)
    sql: str = ""
    params: list[Any] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Value:
    raw: str
    quoted: bool


def _split_values(text: str) -> list[_Value]:
    """`a, "b,c", 'd'` -> [a, b,c, d]; quotes ('…' or "…") make a value text and protect commas."""
    out: list[_Value] = []
    buf: list[str] = []
    quote = ""
    quoted = False
    for ch in text.strip():
        if quote:
            if ch == quote:
                quote = ""
            else:
                buf.append(ch)
        elif ch in "'\"" and not "".join(buf).strip():
            quote, quoted, buf = ch, True, []
        elif ch == ",":
            out.append(_Value("".join(buf) if quoted else "".join(buf).strip(), quoted))
            buf, quoted = [], False
        else:
            if not (quoted and ch.isspace()):
                buf.append(ch)
    if quote:
        raise AgirError(f"value {text!r}: unbalanced {quote} quote; close it or drop it")
    out.append(_Value("".join(buf) if quoted else "".join(buf).strip(), quoted))
    return out


def _single_value(text: str) -> _Value:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return _Value(text[1:-1], True)
    return _Value(text, False)


def resolve_column(source: Source, name: str, where: str) -> str:
    """A column identifier from user input -> the table's column (alias-aware) or a clear error."""
    name = str(name).strip()
    if name.lower() in ALIASES and name not in source.columns and ALIASES[name.lower()] in source.columns:
        name = ALIASES[name.lower()]
    return source.check_column(name, where)


class FilterBuilder:
    def __init__(self, source: Source):
        self.source = source
        self._date_cols: dict[str, bool] = {}

    # -- typing ------------------------------------------------------------------------------
    def _is_date_text(self, column: str) -> bool:
        """Does a text column hold date/time values (EXIF or ISO)? Decided from its first values."""
        if column not in self._date_cols:
            col = quote_ident(column)
            rows = self.source.con.execute(
                f"SELECT CAST({col} AS VARCHAR) FROM {self.source.view} WHERE {col} IS NOT NULL LIMIT 20"
            ).fetchall()
            vals = [r[0].strip() for r in rows if r[0] and r[0].strip()]
            self._date_cols[column] = bool(vals) and all(
                RE_EXIF.match(v[:19]) or RE_ISO_TIME.match(v[:19]) or RE_ISO_DATE.match(v[:10]) for v in vals)
        return self._date_cols[column]

    def _typed(self, column: str, value: _Value, where: str) -> tuple[str, Any]:
        """(SQL expression for the column, bound value) for comparing `column` with `value`."""
        col = quote_ident(column)
        kind = self.source.column_kind(column)
        raw = value.raw
        if value.quoted:
            return (col if kind == "text" else f"CAST({col} AS VARCHAR)"), raw
        if kind in ("integer", "number", "bool"):
            low = raw.lower()
            if low in TRUE_WORDS:
                return col, TRUE_WORDS[low] if kind != "bool" else bool(TRUE_WORDS[low])
            try:
                num: Any = int(raw) if re.fullmatch(r"[+-]?\d+", raw) else float(raw)
            except ValueError:
                raise AgirError(
                    f"{where}: column {column!r} is numeric but {raw!r} is not a number; "
                    f"quote it to compare as text") from None
            if kind == "bool":
                return col, bool(num)
            return col, num
        if kind == "temporal" or (kind == "text" and (RE_ISO_DATE.match(raw) or RE_ISO_TIME.match(raw))
                                  and self._is_date_text(column)):
            norm = EXIF_TO_ISO.format(col=col)
            if RE_ISO_DATE.match(raw):
                return f"TRY_CAST(TRY_CAST({norm} AS TIMESTAMP) AS DATE)", _date_param(raw, where)
            if RE_ISO_TIME.match(raw):
                return f"TRY_CAST({norm} AS TIMESTAMP)", _ts_param(raw, where)
            if kind == "temporal":
                raise AgirError(f"{where}: {raw!r} is not a date; write YYYY-MM-DD or YYYY-MM-DD HH:MM:SS")
        if kind == "text":
            return col, raw
        return f"CAST({col} AS VARCHAR)", raw

    # -- forms -------------------------------------------------------------------------------
    def parse(self, expr: Any) -> list[Condition]:
        """One filter (string or JSON object / mapping) -> its conditions."""
        if isinstance(expr, Mapping):
            return self._parse_object(expr, json.dumps(expr, default=str))
        if not isinstance(expr, str):
            raise AgirError(f"filter {expr!r}: expected text such as state=NC or a JSON object")
        text = expr.strip()
        if not text:
            return []
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AgirError(f"filter {text!r}: invalid JSON ({exc.msg}); use double quotes, e.g. "
                                '{"state": "NC"}') from None
            if not isinstance(obj, dict):
                raise AgirError(f"filter {text!r}: a JSON filter must be an object of column: value")
            return self._parse_object(obj, text)
        m = RE_NULL.match(text)
        if m:
            column = resolve_column(self.source, m.group(1), f"filter {text!r}")
            op = "is_not_null" if m.group(2) else "is_null"
            sql = f"{quote_ident(column)} IS {'NOT ' if m.group(2) else ''}NULL"
            return [Condition(text, column, op, [], sql, [])]
        m = RE_BETWEEN.match(text)
        if m:
            column = resolve_column(self.source, m.group(1), f"filter {text!r}")
            lo_expr, lo = self._typed(column, _single_value(m.group(2)), f"filter {text!r}")
            hi_expr, hi = self._typed(column, _single_value(m.group(3)), f"filter {text!r}")
            if lo_expr != hi_expr:
                raise AgirError(f"filter {text!r}: both bounds must be the same kind (two numbers or two dates)")
            return [Condition(text, column, "between", [lo, hi], f"{lo_expr} BETWEEN ? AND ?", [lo, hi])]
        m = RE_BINARY.match(text)
        if m:
            column = resolve_column(self.source, m.group(1), f"filter {text!r}")
            op = {"==": "=", "<>": "!="}.get(m.group(2), m.group(2))
            rest = m.group(3)
            if op in ("=", "!="):
                values = _split_values(rest)
                if any(not v.quoted and v.raw == "" for v in values):
                    raise _empty_value(text, m.group(2), column)
                return [self._membership(text, column, op, values)]
            value = _single_value(rest)
            if not value.quoted and value.raw == "":
                raise _empty_value(text, m.group(2), column)
            expr_sql, val = self._typed(column, value, f"filter {text!r}")
            return [Condition(text, column, op, [val], f"{expr_sql} {op} ?", [val])]
        raise AgirError(
            f"filter {text!r}: not understood; use col=v, col=a,b, col!=v, col<v, col<=v, col>v, col>=v, "
            "col between lo and hi, col is null, col is not null, or a JSON object")

    def _membership(self, text: str, column: str, op: str, values: Sequence[_Value]) -> Condition:
        typed = [self._typed(column, v, f"filter {text!r}") for v in values]
        exprs = {t[0] for t in typed}
        if len(exprs) != 1:
            # mixed quoted / unquoted values on a numeric column: compare them all as text
            typed = [(f"CAST({quote_ident(column)} AS VARCHAR)", v.raw) for v in values]
        expr_sql = typed[0][0]
        vals = [t[1] for t in typed]
        if len(vals) == 1:
            sql = f"{expr_sql} = ?" if op == "=" else f"({quote_ident(column)} IS NULL OR {expr_sql} <> ?)"
            return Condition(text, column, op, vals, sql, vals)
        marks = ", ".join("?" for _ in vals)
        if op == "=":
            return Condition(text, column, "in", vals, f"{expr_sql} IN ({marks})", vals)
        return Condition(text, column, "not_in", vals,
                         f"({quote_ident(column)} IS NULL OR {expr_sql} NOT IN ({marks}))", vals)

    def _parse_object(self, obj: Mapping, text: str) -> list[Condition]:
        out: list[Condition] = []
        for key, val in obj.items():
            column = resolve_column(self.source, key, f"filter {text!r}")
            if val is None:
                out.append(Condition(text, column, "is_null", [], f"{quote_ident(column)} IS NULL", []))
            elif isinstance(val, Mapping):
                for op, v in val.items():
                    op_s = str(op).strip().lower()
                    if op_s not in OPS and op_s not in ("between", "in", "not in"):
                        raise AgirError(f"filter {text!r}: operator {op!r} for {column!r} is not one of "
                                        f"{', '.join(OPS)}, between, in, not in")
                    if op_s == "between":
                        if not isinstance(v, list) or len(v) != 2:
                            raise AgirError(f"filter {text!r}: between needs a two-item list [lo, hi]")
                        out.extend(self.parse(f"{column} between {_json_scalar(v[0])} and {_json_scalar(v[1])}"))
                        continue
                    vals = v if isinstance(v, list) else [v]
                    mop = {"in": "=", "not in": "!=", "==": "=", "<>": "!="}.get(op_s, op_s)
                    if mop in ("=", "!="):
                        out.append(self._membership(text, column, mop, [_obj_value(x) for x in vals]))
                    else:
                        expr_sql, tv = self._typed(column, _obj_value(v), f"filter {text!r}")
                        out.append(Condition(text, column, mop, [tv], f"{expr_sql} {mop} ?", [tv]))
            else:
                vals = val if isinstance(val, list) else [val]
                if not vals:
                    raise AgirError(f"filter {text!r}: empty list for {column!r}; give at least one value")
                out.append(self._membership(text, column, "=", [_obj_value(x) for x in vals]))
        return out


def _empty_value(text: str, op: str, column: str) -> AgirError:
    return AgirError(f"filter {text!r}: a value is missing after {op}; give one ({column}{op}NC), "
                     f'quote an empty text ({column}{op}""), or write `{column} is null`')


def filter_columns(source: Source, filters: Any) -> list[str]:
    """The columns `filters` name, checked against the table, without reading any row.

    A filter that is not understood is left to FilterBuilder, which says why.
    """
    out: list[str] = []
    for f in normalize_filters(filters):
        names: list[str] = []
        if isinstance(f, Mapping):
            names = [str(k) for k in f]
        elif isinstance(f, str) and f.strip().startswith("{"):
            try:
                obj = json.loads(f)
            except json.JSONDecodeError:
                obj = None
            names = [str(k) for k in obj] if isinstance(obj, dict) else []
        elif isinstance(f, str):
            m = RE_NULL.match(f) or RE_BETWEEN.match(f) or RE_BINARY.match(f)
            names = [m.group(1)] if m else []
        for name in names:
            col = resolve_column(source, name, f"filter {f if isinstance(f, str) else json.dumps(f, default=str)!r}")
            if col not in out:
                out.append(col)
    return out


def _obj_value(v: Any) -> _Value:
    # In JSON, a string is text only for text columns; "5" for a numeric column still means 5,
    # because JSON users quote everything. Booleans become 1/0.
    if isinstance(v, bool):
        return _Value("1" if v else "0", False)
    return _Value(str(v), False)


def _json_scalar(v: Any) -> str:
    return str(v)


def _date_param(raw: str, where: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise AgirError(f"{where}: {raw!r} is not a valid date (YYYY-MM-DD)") from None


def _ts_param(raw: str, where: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(raw.replace(" ", "T"))
    except ValueError:
        raise AgirError(f"{where}: {raw!r} is not a valid date-time (YYYY-MM-DD HH:MM:SS)") from None


def normalize_filters(filters: Any) -> list[Any]:
    """config query.filters (None, one string, one object, or a list of them) -> a list."""
    if filters is None:
        return []
    if isinstance(filters, (str, Mapping)):
        return [filters]
    if isinstance(filters, (list, tuple)):
        return list(filters)
    raise AgirError(f"query.filters: expected a list of filter expressions, got {type(filters).__name__}")


def build_where(source: Source, filters: Any) -> tuple[str, list[Any], list[Condition]]:
    """All filters ANDed: (SQL condition or 'TRUE', parameters, parsed conditions)."""
    builder = FilterBuilder(source)
    conds: list[Condition] = []
    for f in normalize_filters(filters):
        conds.extend(builder.parse(f))
    if not conds:
        return "TRUE", [], []
    sql = " AND ".join(f"({c.sql})" for c in conds)
    params = [p for c in conds for p in c.params]
    return sql, params, conds
