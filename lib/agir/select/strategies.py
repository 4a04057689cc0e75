"""Selection strategies: pick N candidates from a table of per-image statistics.

The table (`pandas.DataFrame`) has one row per candidate: `id` (str), the uncertainty columns of
`agir.select.uncertainty.flatten_uncertainty` (`entropy_mean`, ..., `area_<class>`), and record metadata
columns (e.g. `category_common_name`) when known. Every strategy returns the chosen ids in pick order and
a per-candidate score where higher means "picked earlier / more worth annotating".

Randomness comes from md5(seed | id), like the query stage's sampling: the same seed picks the same
images whatever the order of the rows, and every tie is broken by that key, then by id.

Strategies:
- `all`: every candidate, in table order.
- `random`: N by the seeded key.
- `stratified`: round-robin over the strata of `stratify_by` (a metadata column), random within each.
- `entropy`, `margin`, `least_confidence`: the N most uncertain by that statistic (`_plant` or `_mean`
  variant chosen by `score`; margin ranks by 1 - margin).
- `diverse`: bins candidates by predicted dominant class x plant-area bin and takes the most uncertain
  (by `score`) in each bin, round-robin, so a batch is not N near-copies of one hard situation.
- `kcenter`: k-center greedy on the predicted class-area profile (or `feat_*` columns when present),
  starting from the most uncertain candidate: the batch covers the pool's visual situations.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agir.errors import AgirError
from agir.select.uncertainty import LOW_IS_UNCERTAIN, STAT_KEYS

log = logging.getLogger("agir.select")

MODEL_FREE = ("all", "random", "stratified")
UNCERTAINTY = ("entropy", "margin", "least_confidence", "diverse", "kcenter")
STRATEGIES = MODEL_FREE + UNCERTAINTY
FALLBACKS = ("random", "stratified", "all")
DEFAULT_SCORE = "entropy_plant"
DEFAULT_STRATIFY_BY = "category_common_name"
NO_CLASS = "(none)"


def needs_model(strategy: str) -> bool:
    """True for strategies that rank by model uncertainty (they fall back without a model)."""
    check_strategy(strategy)
    return strategy in UNCERTAINTY


def check_strategy(strategy: str, key: str = "select.strategy") -> str:
    if strategy not in STRATEGIES:
        raise AgirError(f"{key}={strategy!r}: unknown strategy; use one of {', '.join(STRATEGIES)}")
    return strategy


@dataclass
class Selection:
    ids: list[str]  # chosen, in pick order
    scores: pd.Series  # per candidate (index = id), higher = picked earlier
    strategy: str  # the strategy that actually ran (the fallback when one was used)
    score_column: str  # what `scores` is: a statistic, "1 - margin_plant", "pick_order", ...
    fallback: str | None = None  # why the asked strategy did not run, or None


# ---------------------------------------------------------------------------------------- helpers
def seeded_keys(ids: Iterable[str], seed: int) -> np.ndarray:
    """A uniform [0, 1) key per id from md5(seed|id): order-independent and reproducible."""
    out = []
    for i in ids:
        h = hashlib.md5(f"{int(seed)}|{i}".encode()).digest()
        out.append(int.from_bytes(h[:8], "big") / 2**64)
    return np.asarray(out, dtype=np.float64)


def _order(df: pd.DataFrame, primary: np.ndarray | None, seed: int) -> np.ndarray:
    """Row positions sorted by primary descending, ties by the seeded key, then by id."""
    keys = seeded_keys(df["id"], seed)
    ids = df["id"].to_numpy()
    cols = [ids, keys] if primary is None else [ids, keys, -np.asarray(primary, dtype=np.float64)]
    return np.lexsort(cols)  # the last key is the primary one


def _pick_order_scores(df: pd.DataFrame, order: list[int] | np.ndarray) -> pd.Series:
    """Score = 1 - rank / N for strategies without a natural score (first pick = 1)."""
    n = len(df)
    s = np.zeros(n, dtype=np.float64)
    for rank, pos in enumerate(order):
        s[pos] = 1.0 - rank / max(n, 1)
    return pd.Series(s, index=df["id"].to_numpy(), name="score")


def has_uncertainty(df: pd.DataFrame) -> bool:
    """Whether the table carries model statistics for at least one candidate."""
    cols = [c for c in STAT_KEYS if c in df.columns]
    return bool(cols) and bool(df[cols].notna().any(axis=None))


def score_values(df: pd.DataFrame, column: str) -> np.ndarray:
    """The ranking score of a statistic, higher = more uncertain.

    Margins are turned into 1 - margin. A `_plant` statistic is undefined on a frame where the model
    sees no plant; there the frame's `_mean` value stands in (a 0 would rank such frames as certain for
    entropy but as most uncertain for margin).
    """
    if column not in df.columns:
        have = [c for c in df.columns if c in STAT_KEYS]
        raise AgirError(f"select.score={column!r}: no such statistic in the scores table; "
                        f"use one of {', '.join(have) or '(none: no model statistics)'}")
    v = df[column].to_numpy(dtype=np.float64, na_value=np.nan).copy()
    if column.endswith("_plant") and "plant_fraction" in df.columns:
        mean_col = column[: -len("_plant")] + "_mean"
        if mean_col in df.columns:
            empty = df["plant_fraction"].to_numpy(dtype=np.float64, na_value=np.nan) <= 0
            v[empty] = df[mean_col].to_numpy(dtype=np.float64, na_value=np.nan)[empty]
    if column in LOW_IS_UNCERTAIN:
        v = 1.0 - v
    return np.nan_to_num(v, nan=-np.inf)  # candidates without statistics rank last


def _variant(strategy: str, score: str) -> str:
    """entropy/margin -> the _plant or _mean column following `score`'s suffix."""
    if strategy == "least_confidence":
        return "least_confidence"
    suffix = "_mean" if score.endswith("_mean") else "_plant"
    return strategy + suffix


def _label(column: str) -> str:
    return f"1 - {column}" if column in LOW_IS_UNCERTAIN else column


def area_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("area_") and c != "area_bin"]


def dominant_class(df: pd.DataFrame) -> pd.Series:
    """Predicted dominant class per candidate (largest `area_<name>`), NO_CLASS when no plant."""
    cols = area_columns(df)
    if not cols:
        return pd.Series(NO_CLASS, index=df.index)
    a = df[cols].to_numpy(dtype=np.float64, na_value=0.0)
    names = np.array([c[len("area_"):] for c in cols], dtype=object)
    dom = names[a.argmax(axis=1)]
    dom[a.max(axis=1) <= 0] = NO_CLASS
    return pd.Series(dom, index=df.index)


def area_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Quantile bin (0..bins-1) of each value over the pool; ranks make ties fall together."""
    v = np.asarray(values, dtype=np.float64)
    if bins <= 1 or len(v) == 0:
        return np.zeros(len(v), dtype=int)
    ranks = pd.Series(v).rank(method="average", pct=True).to_numpy()
    return np.minimum((ranks * bins).astype(int), bins - 1)


def _round_robin(groups: list[list[int]], n: int) -> list[int]:
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g):
                out.append(g[depth])
                if len(out) == n:
                    break
        depth += 1
    return out


# ------------------------------------------------------------------------------------- strategies
def _all(df, n, seed, **opts):
    order = list(range(len(df)))
    return order, _pick_order_scores(df, order), "table_order"


def _random(df, n, seed, **opts):
    order = list(_order(df, None, seed))
    return order[:n], _pick_order_scores(df, order), "seeded_random"


def _stratified(df, n, seed, stratify_by=DEFAULT_STRATIFY_BY, **opts):
    cols = [stratify_by] if isinstance(stratify_by, str) else list(stratify_by or [])
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise AgirError(f"select.stratify_by: column(s) {', '.join(missing)} not in the candidates' metadata; "
                        f"set select.stratify_by to one of {', '.join(c for c in df.columns if c != 'id') or '(none)'}"
                       " or select.fallback=random")
    keys = df[cols].astype(object).where(df[cols].notna(), NO_CLASS).astype(str).agg("|".join, axis=1)
    order = _order(df, None, seed)
    groups: dict[str, list[int]] = {}
    for pos in order:
        groups.setdefault(keys.iloc[pos], []).append(int(pos))
    # strata visited in a seeded order too, so no stratum is always first
    names = sorted(groups, key=lambda g: (seeded_keys([g], seed)[0], g))
    full = _round_robin([groups[g] for g in names], len(df))
    return full[:n], _pick_order_scores(df, full), "stratified_pick_order"


def _ranked(strategy):
    def run(df, n, seed, score=DEFAULT_SCORE, **opts):
        column = _variant(strategy, score)
        v = score_values(df, column)
        order = _order(df, v, seed)
        return list(order[:n]), pd.Series(v, index=df["id"].to_numpy(), name="score"), _label(column)

    return run


def _diverse(df, n, seed, score=DEFAULT_SCORE, area_bins_n=3, **opts):
    v = score_values(df, score)
    plant = df["plant_fraction"].to_numpy(dtype=np.float64, na_value=0.0) if "plant_fraction" in df else \
        np.zeros(len(df))
    bins = dominant_class(df).astype(str) + "|" + pd.Series(area_bins(plant, int(area_bins_n)), index=df.index)\
        .astype(str)
    order = _order(df, v, seed)
    groups: dict[str, list[int]] = {}
    for pos in order:
        groups.setdefault(bins.iloc[pos], []).append(int(pos))
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(len(df))
    # most uncertain bin first in every round
    names = sorted(groups, key=lambda g: rank[groups[g][0]])
    picked = _round_robin([groups[g] for g in names], n)
    return picked, pd.Series(v, index=df["id"].to_numpy(), name="score"), _label(score)


def _kcenter(df, n, seed, score=DEFAULT_SCORE, **opts):
    v = score_values(df, score)
    feat_cols = [c for c in df.columns if c.startswith("feat_")] or area_columns(df) + ["plant_fraction"]
    feat_cols = [c for c in feat_cols if c in df.columns]
    x = df[feat_cols].to_numpy(dtype=np.float64, na_value=0.0) if feat_cols else np.zeros((len(df), 1))
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    order = _order(df, v, seed)
    if n <= 0 or len(df) == 0:
        return [], pd.Series(v, index=df["id"].to_numpy(), name="score"), _label(score)
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(len(df))
    picked = [int(order[0])]
    dist = np.linalg.norm(x - x[picked[0]], axis=1)
    while len(picked) < min(n, len(df)):
        dist[picked] = -1.0
        best = dist.max()
        # among equally far candidates take the most uncertain (lowest rank)
        cand = np.flatnonzero(dist >= best - 1e-12)
        nxt = int(cand[np.argmin(rank[cand])])
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return picked, pd.Series(v, index=df["id"].to_numpy(), name="score"), _label(score)


_REGISTRY: dict[str, Callable] = {
    "all": _all,
    "random": _random,
    "stratified": _stratified,
    "entropy": _ranked("entropy"),
    "margin": _ranked("margin"),
    "least_confidence": _ranked("least_confidence"),
    "diverse": _diverse,
    "kcenter": _kcenter,
}


# ------------------------------------------------------------------------------------------ API
def select(
    scores: pd.DataFrame,
    strategy: str,
    n: int,
    seed: int = 0,
    *,
    fallback: str = "stratified",
    exclude: Iterable[str] = (),
    **opts,
) -> Selection:
    """Pick `n` candidates by `strategy`; uncertainty strategies fall back to `fallback` without a model.

    `exclude`: ids never picked (they keep no score). Options: `score` (statistic for entropy/margin
    variant, diverse and kcenter; default entropy_plant), `stratify_by` (column or list; default
    category_common_name), `area_bins_n` (plant-area bins for diverse; default 3).
    """
    check_strategy(strategy)
    if fallback not in FALLBACKS:
        raise AgirError(f"select.fallback={fallback!r}: use one of {', '.join(FALLBACKS)}")
    if "id" not in scores.columns:
        raise AgirError("select: the scores table has no 'id' column")
    n = int(n)
    if n < 0:
        raise AgirError(f"select.n={n}: must be >= 0")
    df = scores.copy()
    df["id"] = df["id"].astype(str)
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise AgirError(f"select: candidate id {dup!r} appears twice in the scores table")
    excl = {str(i) for i in exclude}
    if excl:
        df = df[~df["id"].isin(excl)]
    df = df.reset_index(drop=True)
    reason = None
    used = strategy
    if needs_model(strategy) and not has_uncertainty(df):
        reason = f"no model uncertainty for the candidates (baseline inference); used {fallback} instead"
        log.info("select: strategy %s needs model uncertainty, none recorded; falling back to %s", strategy, fallback)
        used = fallback
    picked, score, label = _REGISTRY[used](df, n, seed, **opts)
    ids = [str(df["id"].iloc[p]) for p in picked]
    return Selection(ids=ids, scores=score, strategy=used, score_column=label, fallback=reason)


def select_ids(scores: pd.DataFrame, strategy: str, n: int, seed: int, **opts) -> tuple[list[str], pd.Series]:
    """(chosen ids in pick order, per-candidate ranking score indexed by id); see `select` for options."""
    sel = select(scores, strategy, n, seed, **opts)
    return sel.ids, sel.scores
