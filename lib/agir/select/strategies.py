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
- `veg_random` (vegetation-aware random, the baseline a strategy must beat): round-robin over strata of
  `stratify_by` x plant-cover bin (`area_bins_n` quantile bins of the first of `cover_by` that has
  values: the model's plant_fraction, else the record's estimated bbox area or area bin), random within.
- `entropy`, `margin`, `least_confidence`: the N most uncertain by that statistic (`_plant` or `_mean`
  variant chosen by `score`; margin ranks by 1 - margin).
- `diverse`: bins candidates by predicted dominant class x plant-area bin and takes the most uncertain
  (by `score`) in each bin, round-robin, so a batch is not N near-copies of one hard situation.
- `kcenter`: k-center greedy on the predicted class-area profile (or `feat_*` columns when present),
  starting from the most uncertain candidate: the batch covers the pool's visual situations.
- `power`: stochastic batch acquisition (Kirsch et al., 2023, "power" sampling): the batch is drawn
  without replacement with probability proportional to base^(1/`temperature`), base = the `score`
  statistic or (`power_base: cost_aware`) the cost-aware score. Drawn as the top N of
  log(base)/T + Gumbel noise from the seeded key (the Gumbel-top-k trick: the same as N sequential
  draws). T -> 0 is top-k, large T is random. Candidates with base <= 0 come last, in seeded order.
- `cost_aware`: expected gain per corrected pixel, as return on investment (Settles et al., 2008):
  gain = the image's `score` statistic (how unsure the model is, per pixel, as the ranked strategies
  use it), cost = `cost_overhead` + the fraction of pixels a person touches (`cost`: errors =
  least_confidence, the expected share of wrong pixels; plant = plant_fraction; uncertain =
  uncertain_fraction); score = gain / cost^`cost_weight`. (A gain that is itself a mass, such as
  entropy summed over the frame, grows with the cost and the ratio would favour the largest frames.)
- `class_balanced`: rare species get a share of the batch. Per class c the candidates are ranked by
  the model's uncertainty attributed to c (`unc_<c>` = sum of p_c * entropy; without it
  `area_<c>` x the `score` statistic); class weights w_c = freq_c^-`rarity_power`, freq_c from
  `class_freq` (e.g. the labelled set's class frequencies) or else the predicted area share over the
  pool. The batch is split over classes by w_c (largest remainder), filled round-robin rarest class
  first; slots a class cannot fill go to the best by sum_c w_c * score_c, which is also the score.

Any strategy takes `group_cap` (at most k picks per value of `group_by`, default group_id: one pot's
near-duplicate sequence), applied to its pick order.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from agir.errors import AgirError
from agir.select.uncertainty import LOW_IS_UNCERTAIN, STAT_KEYS

log = logging.getLogger("agir.select")

MODEL_FREE = ("all", "random", "stratified", "veg_random")
UNCERTAINTY = ("entropy", "margin", "least_confidence", "diverse", "kcenter", "power", "cost_aware",
               "class_balanced")
STRATEGIES = MODEL_FREE + UNCERTAINTY
FALLBACKS = ("random", "stratified", "veg_random", "all")
DEFAULT_SCORE = "entropy_plant"
DEFAULT_STRATIFY_BY = "category_common_name"
DEFAULT_COVER_BY = ("plant_fraction", "estimated_bbox_area_cm2", "estimated_area_bin")
DEFAULT_GROUP_BY = "group_id"
COSTS = {"errors": "least_confidence", "plant": "plant_fraction", "uncertain": "uncertain_fraction"}
POWER_BASES = ("score", "cost_aware")
NO_CLASS = "(none)"
# options `select` passes on to the strategies (a typo is an error, not a silently ignored keyword)
OPTIONS = frozenset({"score", "stratify_by", "area_bins_n", "cover_by", "temperature", "power_base", "cost",
                     "cost_overhead", "cost_weight", "rarity_power", "class_freq", "group_cap", "group_by"})


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
    # strata visited in a seeded order too, so no stratum is always first
    full = _strata_order(df, _species_keys(df, stratify_by), seed)
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


def _strata_order(df: pd.DataFrame, keys: pd.Series, seed: int) -> list[int]:
    """Round-robin over the strata `keys`, seeded random within each and in the strata's order."""
    order = _order(df, None, seed)
    groups: dict[str, list[int]] = {}
    for pos in order:
        groups.setdefault(keys.iloc[pos], []).append(int(pos))
    names = sorted(groups, key=lambda g: (seeded_keys([g], seed)[0], g))
    return _round_robin([groups[g] for g in names], len(df))


def _species_keys(df: pd.DataFrame, stratify_by) -> pd.Series:
    cols = [stratify_by] if isinstance(stratify_by, str) else list(stratify_by or [])
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise AgirError(f"select.stratify_by: column(s) {', '.join(missing)} not in the candidates' metadata; "
                        f"set select.stratify_by to one of {', '.join(c for c in df.columns if c != 'id') or '(none)'}"
                       " or select.fallback=random")
    if not cols:
        return pd.Series("", index=df.index)
    return df[cols].astype(object).where(df[cols].notna(), NO_CLASS).astype(str).agg("|".join, axis=1)


def cover_bins(df: pd.DataFrame, cover_by=DEFAULT_COVER_BY, bins: int = 3) -> tuple[pd.Series, str | None]:
    """(plant-cover stratum per candidate, the column used): the first of `cover_by` with values.

    Numeric columns are cut into `bins` quantile bins, others (an area-bin label) are used as they are;
    a candidate without a value is its own stratum. ("", None) when no column has values.
    """
    cols = [cover_by] if isinstance(cover_by, str) else list(cover_by or [])
    for col in cols:
        if col not in df.columns or not df[col].notna().any():
            continue
        v = df[col]
        num = pd.to_numeric(v, errors="coerce")
        if num.notna().sum() == v.notna().sum():
            b = pd.Series(area_bins(num.fillna(-1.0).to_numpy(), int(bins)), index=df.index).astype(str)
            return b.where(num.notna(), NO_CLASS), col
        return v.astype(object).where(v.notna(), NO_CLASS).astype(str), col
    return pd.Series("", index=df.index), None


def _veg_random(df, n, seed, stratify_by=DEFAULT_STRATIFY_BY, cover_by=DEFAULT_COVER_BY, area_bins_n=3, **opts):
    cols = [stratify_by] if isinstance(stratify_by, str) else list(stratify_by or [])
    # a missing species column is not fatal here: the baseline still stratifies by cover
    species = _species_keys(df, [c for c in cols if c in df.columns])
    cover, used = cover_bins(df, cover_by, int(area_bins_n))
    if used is None:
        log.info("select: veg_random: no plant-cover column (%s) has values; strata are species only",
                 ", ".join([cover_by] if isinstance(cover_by, str) else list(cover_by or [])))
    full = _strata_order(df, species + "#" + cover, seed)
    return full[:n], _pick_order_scores(df, full), "veg_random_pick_order"


def cost_aware_scores(df: pd.DataFrame, score: str = DEFAULT_SCORE, cost: str = "errors",
                      cost_overhead: float = 0.02, cost_weight: float = 1.0) -> np.ndarray:
    """Expected gain per corrected pixel: score / (cost_overhead + cost fraction)^cost_weight."""
    if cost not in COSTS:
        raise AgirError(f"select.cost={cost!r}: use one of {', '.join(COSTS)}")
    if float(cost_overhead) < 0 or float(cost_weight) < 0:
        raise AgirError(f"select.cost_overhead={cost_overhead}, select.cost_weight={cost_weight}: must be >= 0")
    col = COSTS[cost]
    if col not in df.columns:
        raise AgirError(f"select.cost={cost}: the scores table has no {col} column (needs model statistics)")
    gain = score_values(df, score)
    c = df[col].to_numpy(dtype=np.float64, na_value=np.nan) + float(cost_overhead)
    c = np.power(np.maximum(c, 1e-9), float(cost_weight))
    out = gain / c
    return np.where(np.isfinite(gain) & np.isfinite(c), out, -np.inf)


def _cost_aware(df, n, seed, score=DEFAULT_SCORE, cost="errors", cost_overhead=0.02, cost_weight=1.0, **opts):
    v = cost_aware_scores(df, score, cost, cost_overhead, cost_weight)
    order = _order(df, v, seed)
    return list(order[:n]), pd.Series(v, index=df["id"].to_numpy(), name="score"), \
        f"{_label(score)} / ({cost_overhead} + {COSTS[cost]})^{cost_weight}"


def power_keys(base: np.ndarray, ids: Iterable[str], seed: int, temperature: float = 1.0) -> np.ndarray:
    """Gumbel-top-k keys: sorting by them descending draws without replacement with p ∝ base^(1/T).

    Candidates with base <= 0 (or no score) get -inf: they come after every positive one.
    """
    t = float(temperature)
    if not t > 0:
        raise AgirError(f"select.temperature={temperature}: must be > 0")
    u = np.clip(seeded_keys(ids, seed), 1e-300, 1.0 - 2**-53)
    gumbel = -np.log(-np.log(u))
    b = np.asarray(base, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logb = np.where(np.isfinite(b) & (b > 0), np.log(np.where(b > 0, b, 1.0)), -np.inf)
    return logb / t + gumbel


def _power(df, n, seed, score=DEFAULT_SCORE, temperature=1.0, power_base="score", **opts):
    if power_base not in POWER_BASES:
        raise AgirError(f"select.power_base={power_base!r}: use one of {', '.join(POWER_BASES)}")
    if power_base == "cost_aware":
        cost_opts = {k: opts[k] for k in ("cost", "cost_overhead", "cost_weight") if k in opts}
        base = cost_aware_scores(df, score, **cost_opts)
        label = "cost_aware"
    else:
        base = score_values(df, score)
        label = _label(score)
    keys = power_keys(base, df["id"], seed, temperature)
    # non-positive bases tie at -inf: the seeded key (inside _order) orders them
    order = _order(df, keys, seed)
    return list(order[:n]), pd.Series(base, index=df["id"].to_numpy(), name="score"), \
        f"{label} (power sampling, T={temperature})"


def class_frequencies(df: pd.DataFrame, classes: list[str], class_freq=None) -> dict[str, float]:
    """Class frequency (sums to 1): `class_freq` (name -> count or share) or the pool's predicted area share.

    A class with no frequency (never seen, never predicted) gets the smallest positive one: it is rare.
    """
    if class_freq:
        if not isinstance(class_freq, dict):
            raise AgirError("select.class_freq: give a mapping class name -> count or share")
        raw = {c: float(class_freq.get(c, 0.0) or 0.0) for c in classes}
        if any(v < 0 for v in raw.values()):
            raise AgirError("select.class_freq: counts must be >= 0")
    else:
        raw = {c: float(np.nansum(df[f"area_{c}"].to_numpy(dtype=np.float64, na_value=np.nan)))
               if f"area_{c}" in df.columns else 0.0 for c in classes}
    pos = [v for v in raw.values() if v > 0]
    floor = min(pos) if pos else 1.0
    raw = {c: v if v > 0 else floor for c, v in raw.items()}
    total = sum(raw.values())
    return {c: v / total for c, v in raw.items()}


def _largest_remainder(weights: np.ndarray, n: int) -> np.ndarray:
    share = weights / weights.sum() * n
    q = np.floor(share).astype(int)
    rest = n - int(q.sum())
    # ties among remainders: the heavier (rarer) class first, then class order
    for k in sorted(range(len(q)), key=lambda k: (-(share[k] - q[k]), -weights[k], k))[:rest]:
        q[k] += 1
    return q


def _class_balanced(df, n, seed, score=DEFAULT_SCORE, rarity_power=0.5, class_freq=None, **opts):
    unc_cols = [c for c in df.columns if c.startswith("unc_")]
    if unc_cols:
        classes = [c[len("unc_"):] for c in unc_cols]
        per = df[unc_cols].to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        cols = area_columns(df)
        if not cols:
            raise AgirError("select.strategy=class_balanced: the scores table has no unc_<class> or area_<class> "
                            "columns; it needs model statistics with per-class areas")
        classes = [c[len("area_"):] for c in cols]
        base = np.maximum(score_values(df, score), 0.0)
        per = df[cols].to_numpy(dtype=np.float64, na_value=np.nan) * base[:, None]
    per = np.nan_to_num(per, nan=0.0, posinf=0.0, neginf=0.0)
    if float(rarity_power) < 0:
        raise AgirError(f"select.rarity_power={rarity_power}: must be >= 0")
    freq = class_frequencies(df, classes, class_freq)
    w = np.array([freq[c] ** -float(rarity_power) for c in classes])
    total = per @ (w / w.sum())
    total = np.where(per.max(axis=1, initial=0.0) > 0, total, -np.inf) if len(df) else total
    score_s = pd.Series(total, index=df["id"].to_numpy(), name="score")
    if n <= 0 or len(df) == 0:
        return [], score_s, "rarity-weighted class uncertainty"
    quota = _largest_remainder(w, min(n, len(df)))
    # per class: candidates with mass for it, most first (ties: seeded key)
    queues = []
    for k in range(len(classes)):
        order = _order(df, per[:, k], seed)
        queues.append([int(p) for p in order if per[p, k] > 0])
    picked: list[int] = []
    taken = set()
    heads = [0] * len(classes)
    filled = [0] * len(classes)
    visit = sorted(range(len(classes)), key=lambda k: (freq[classes[k]], classes[k]))  # rarest first
    progress = True
    while progress and len(picked) < n:
        progress = False
        for k in visit:
            if filled[k] >= quota[k] or len(picked) >= n:
                continue
            q = queues[k]
            while heads[k] < len(q) and q[heads[k]] in taken:
                heads[k] += 1
            if heads[k] < len(q):
                p = q[heads[k]]
                picked.append(p)
                taken.add(p)
                filled[k] += 1
                progress = True
    if len(picked) < n:  # unfilled quotas: the best overall
        picked += [int(p) for p in _order(df, total, seed) if int(p) not in taken][: n - len(picked)]
    return picked, score_s, "rarity-weighted class uncertainty"


_REGISTRY: dict[str, Callable] = {
    "all": _all,
    "random": _random,
    "stratified": _stratified,
    "entropy": _ranked("entropy"),
    "margin": _ranked("margin"),
    "least_confidence": _ranked("least_confidence"),
    "diverse": _diverse,
    "kcenter": _kcenter,
    "veg_random": _veg_random,
    "power": _power,
    "cost_aware": _cost_aware,
    "class_balanced": _class_balanced,
}


def group_capped(df: pd.DataFrame, picks: list[int], cap: int, group_by: str = DEFAULT_GROUP_BY) -> list[int]:
    """`picks` without those beyond the first `cap` of each `group_by` value (no value: no group)."""
    g = df[group_by]
    seen: dict[Any, int] = {}
    out = []
    for p in picks:
        key = g.iloc[p]
        if key is None or (isinstance(key, float) and np.isnan(key)) or pd.isna(key):
            out.append(p)
            continue
        if seen.get(key, 0) < cap:
            seen[key] = seen.get(key, 0) + 1
            out.append(p)
    return out


def _run_capped(fn: Callable, df: pd.DataFrame, n: int, seed: int, cap: int, group_by: str, **opts):
    """Run a strategy for more and more picks until `n` survive the group cap (or the pool is used up)."""
    if group_by not in df.columns:
        raise AgirError(f"select.group_cap: column {group_by!r} (select.group_by) not in the candidates' metadata; "
                        "set select.group_by to the near-duplicate group column or select.group_cap: null")
    m = n
    while True:
        picked, score, label = fn(df, min(m, len(df)), seed, **opts)
        kept = group_capped(df, list(picked), cap, group_by)
        if len(kept) >= n or m >= len(df):
            return kept[:n], score, label
        m *= 2


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

    `exclude`: ids never picked (they keep no score). Options (see the module docstring): `score`
    (statistic; default entropy_plant), `stratify_by` (column or list; default category_common_name),
    `area_bins_n` (plant-area bins of diverse and veg_random; default 3), `cover_by` (veg_random),
    `temperature` and `power_base` (power), `cost`, `cost_overhead`, `cost_weight` (cost_aware, power),
    `rarity_power`, `class_freq` (class_balanced), `group_cap` and `group_by` (any strategy).
    """
    check_strategy(strategy)
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise AgirError(f"select: unknown option(s) {', '.join(unknown)}; use {', '.join(sorted(OPTIONS))}")
    group_cap = opts.pop("group_cap", None)
    group_by = opts.pop("group_by", None) or DEFAULT_GROUP_BY
    if group_cap is not None and int(group_cap) < 1:
        raise AgirError(f"select.group_cap={group_cap}: must be >= 1 (or null for no cap)")
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
    if group_cap is None:
        picked, score, label = _REGISTRY[used](df, n, seed, **opts)
    else:
        # `all` ignores n: with a cap it is every candidate the cap lets through
        n_cap = len(df) if used == "all" else n
        picked, score, label = _run_capped(_REGISTRY[used], df, n_cap, seed, int(group_cap), group_by, **opts)
    ids = [str(df["id"].iloc[p]) for p in picked]
    return Selection(ids=ids, scores=score, strategy=used, score_column=label, fallback=reason)


def select_ids(scores: pd.DataFrame, strategy: str, n: int, seed: int, **opts) -> tuple[list[str], pd.Series]:
    """(chosen ids in pick order, per-candidate ranking score indexed by id); see `select` for options."""
    sel = select(scores, strategy, n, seed, **opts)
    return sel.ids, sel.scores
