"""Sampling specs (`random:n=N`, `seeded:n=N,seed=S`, `stratified:by=a|b,per_group=K[,seed=S]`) -> SQL.

Rows are drawn by ranking each row on md5(seed | id): the same seed gives the same rows whatever
the order of rows on disk or the engine version, and a different seed gives a different draw.
`random` without a seed draws one and records it in query_spec.json, so any sample can be
reproduced with `seeded:`. Stratified sampling keeps at most `per_group` rows of every combination
of the `by` columns (NULL is a group of its own; smaller groups give all their rows); its default
seed is 0. The ranking column never reaches the output.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from agir.db.filters import resolve_column
from agir.db.sources import Source, quote_ident
from agir.errors import AgirError

RANK_COLUMN = "__agir_rank"
SPEC_HELP = "random:n=N | seeded:n=N,seed=S | stratified:by=a|b,per_group=K[,seed=S]"


@dataclass
class SampleSpec:
    mode: str  # random | seeded | stratified
    n: int | None = None
    seed: int = 0
    by: list[str] = field(default_factory=list)
    per_group: int | None = None
    text: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "mode": self.mode, "seed": self.seed}
        if self.mode == "stratified":
            out.update(by=self.by, per_group=self.per_group)
        else:
            out["n"] = self.n
        return out


def _int(value: str, key: str, text: str, minimum: int) -> int:
    try:
        v = int(value.strip())
    except ValueError:
        raise AgirError(f"query.sample {text!r}: {key}={value!r} is not an integer") from None
    if v < minimum:
        raise AgirError(f"query.sample {text!r}: {key} must be >= {minimum}")
    return v


def parse_sample(text: Any, source: Source) -> SampleSpec | None:
    """A sample spec string (or None) -> SampleSpec with its columns checked against the table."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise AgirError(f"query.sample: expected text such as {SPEC_HELP}, got {text!r}")
    raw = text.strip()
    mode, _, rest = raw.partition(":")
    mode = mode.strip().lower()
    if mode not in ("random", "seeded", "stratified"):
        raise AgirError(f"query.sample {raw!r}: unknown mode {mode!r}; use {SPEC_HELP}")
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            raise AgirError(f"query.sample {raw!r}: {part!r} is not key=value; use {SPEC_HELP}")
        k, v = part.split("=", 1)
        k = k.strip().lower()
        if k in opts:
            raise AgirError(f"query.sample {raw!r}: {k} given twice")
        opts[k] = v.strip()
    allowed = {"random": {"n", "seed"}, "seeded": {"n", "seed"}, "stratified": {"by", "per_group", "seed"}}[mode]
    unknown = set(opts) - allowed
    if unknown:
        raise AgirError(f"query.sample {raw!r}: unknown option(s) {', '.join(sorted(unknown))} for {mode}; "
                        f"use {SPEC_HELP}")
    spec = SampleSpec(mode=mode, text=raw)
    if "seed" in opts:
        spec.seed = _int(opts["seed"], "seed", raw, 0)
    elif mode == "seeded":
        raise AgirError(f"query.sample {raw!r}: seeded needs seed=S (or use random:n=N)")
    elif mode == "random":
        spec.seed = secrets.randbelow(2**31)  # recorded in query_spec.json so the draw can be repeated
    if mode == "stratified":
        if "by" not in opts or "per_group" not in opts:
            raise AgirError(f"query.sample {raw!r}: stratified needs by=col[|col...] and per_group=K")
        names = [b for b in re.split(r"[|+]", opts["by"]) if b.strip()]
        if not names:
            raise AgirError(f"query.sample {raw!r}: by= names no column")
        spec.by = []
        for b in names:
            col = resolve_column(source, b, f"query.sample {raw!r}")
            if col not in spec.by:
                spec.by.append(col)
        spec.per_group = _int(opts["per_group"], "per_group", raw, 1)
    else:
        if "n" not in opts:
            raise AgirError(f"query.sample {raw!r}: {mode} needs n=N")
        spec.n = _int(opts["n"], "n", raw, 0)
    return spec


def rank_expr(id_column: str) -> str:
    """Per-row pseudo-random rank from (seed, id); the seed is the first bound parameter."""
    return f"md5_number(CAST(? AS VARCHAR) || '|' || CAST({quote_ident(id_column)} AS VARCHAR))"


def sample_sql(inner: str, inner_params: list[Any], spec: SampleSpec | None, id_column: str
               ) -> tuple[str, list[Any]]:
    """Wrap the filtered query `inner` with the sampling step; output has the same columns as `inner`."""
    if spec is None:
        return inner, list(inner_params)
    idq = quote_ident(id_column)
    if spec.mode in ("random", "seeded"):
        sql = (f"SELECT * FROM ({inner}) AS filtered "
               f"ORDER BY {rank_expr(id_column)}, {idq} LIMIT {int(spec.n or 0)}")
        return sql, [*inner_params, str(spec.seed)]
    parts = ", ".join(quote_ident(c) for c in spec.by)
    # Rank only (id, strata) and fetch the chosen rows' full width afterwards: windowing all columns
    # of every matching row is ~10x slower. A single ORDER BY key lets DuckDB turn the window into a
    # per-group top-K; md5 of distinct ids never ties, so no tie-breaker is needed.
    picked = (f"SELECT {idq} FROM (SELECT {idq}, ROW_NUMBER() OVER (PARTITION BY {parts} "
              f"ORDER BY {rank_expr(id_column)}) AS {RANK_COLUMN} FROM ({inner}) AS f) AS ranked "
              f"WHERE {RANK_COLUMN} <= {int(spec.per_group or 0)}")
    sql = f"SELECT * FROM ({inner}) AS filtered WHERE {idq} IN ({picked})"
    return sql, [*inner_params, str(spec.seed), *inner_params]
