"""Summary of a simulation: curves, effort ratios with bootstrap intervals, paired differences, plots.

- `full_pool_gain`: test class mIoU of the full-pool reference minus the round-0 model's (mean over
  seeds); the comparison means something only when it is >= 0.10 (`val_full_pool_gain`: the same on
  the validation set, the one settings were tuned on).
- `effort_ratio_<s>`: cumulative annotator effort (rounds 1.., `agir.simulate.effort`) at which the
  seed-mean test class-mIoU curve of `s` first reaches 95 % of the full-pool class mIoU (linear
  interpolation), over the baseline's (veg_random; random when veg_random did not run). `inf` when
  `s` never reaches it. `_ci95`: 2.5/97.5 percentiles over 2000 bootstrap resamples of the seeds
  (the same resample for `s` and the baseline: paired). When the baseline never reaches the target and
  `s` does, the ratio is nan and `ratio_below` = `s`'s effort / all the effort the baseline spent.
- `paired_diff_<s>_vs_<b>`: per seed, the mean over rounds >= 1 of class mIoU(s) - class mIoU(b);
  mean over seeds with a t interval.
- `equal_effort_diff_<s>_vs_<b>`: per seed, class mIoU(s) - class mIoU(b) at the same cumulative effort
  (both curves interpolated at the smaller of their final efforts); mean over seeds with a t interval.
  Defined when neither curve reaches the target, and the figure that counts when annotator hours, not
  frames, are the budget.
- `val_effort_ratio_<s>`, `val_equal_effort_diff_<s>_vs_<baseline>`: the same on the validation set
  (target: 95 % of the full pool's validation class mIoU), a check that a test-set ranking replicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agir.runs import read_json_or, read_jsonl, write_json, write_text

FULL = "_full_pool"
TARGET_SHARE = 0.95


def read_results(out: Path) -> list[dict]:
    rows: list[dict] = []
    for f in sorted(Path(out).glob("results_seed*.jsonl")):
        rows += read_jsonl(f)
    return rows


def images_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """x at which the (linearly interpolated) curve first reaches `target`; None if it never does."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) * (x - x0) / (y - y0)) if y != y0 else float(x)
    return None


def _t95(n: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, n - 1))
    except ImportError:  # pragma: no cover - scipy ships with the environment
        return 1.96


def _curves(results: Sequence[Mapping], strategy: str, rounds: int) -> dict[int, dict[int, Mapping]]:
    """seed -> round -> row, only seeds with every round 0..rounds."""
    per: dict[int, dict[int, Mapping]] = {}
    for r in results:
        if r["strategy"] == strategy:
            per.setdefault(int(r["seed"]), {})[int(r["round"])] = r
    return {s: d for s, d in sorted(per.items()) if all(k in d for k in range(rounds + 1))}


def _cum_effort(seed_rows: Mapping[int, Mapping]) -> list[float]:
    out, tot = [], 0.0
    for k in sorted(seed_rows):
        tot += float(seed_rows[k].get("effort") or 0.0)
        out.append(tot)
    return out


def _reach(curves: Mapping[int, Mapping[int, Mapping]], seeds: Sequence[int], target: float) -> float:
    xs = np.mean([_cum_effort(curves[s]) for s in seeds], axis=0)
    ys = np.mean([[curves[s][k]["class_miou"] for k in sorted(curves[s])] for s in seeds], axis=0)
    v = images_to_reach(list(xs), list(ys), target)
    return math.inf if v is None else v


def _miou_at_effort(seed_rows: Mapping[int, Mapping], effort: float) -> float:
    ys = [float(seed_rows[k]["class_miou"]) for k in sorted(seed_rows)]
    return float(np.interp(effort, _cum_effort(seed_rows), ys))


def _t_interval(d: Sequence[float]) -> dict | None:
    if len(d) < 2:
        return None
    half = _t95(len(d)) * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return {"mean": float(np.mean(d)), "ci95": [float(np.mean(d)) - half, float(np.mean(d)) + half], "n": len(d)}


def _ratio(a: float, b: float) -> float:
    if math.isinf(a):
        # neither reached the target: no ratio was measured (nan), not "the same effort" (1.0)
        return math.nan if math.isinf(b) else math.inf
    if math.isinf(b) or b <= 0:
        return math.nan if a > 0 else 1.0
    return a / b


def summarize(results: Sequence[Mapping], cfg, boot: int = 2000) -> dict:
    rounds = int(cfg.rounds)
    strategies = [s for s in cfg.strategies if _curves(results, s, 0)]
    out: dict[str, Any] = {"strategies": {}}
    for s in strategies:
        rows: dict[int, list[Mapping]] = {}
        for r in results:
            if r["strategy"] == s:
                rows.setdefault(int(r["round"]), []).append(r)
        cur = _curves(results, s, rounds)

        def m(vals):
            vals = [float(v) for v in vals if v is not None]
            return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)

        out["strategies"][s] = {"rounds": [
            {"round": k, "annotated": int(v[0]["annotated"]), "seeds": len(v),
             "class_miou_mean": m(x["class_miou"] for x in v)[0], "class_miou_sd": m(x["class_miou"] for x in v)[1],
             "rare_iou_mean": m(x.get("rare_iou") for x in v)[0], "rare_iou_sd": m(x.get("rare_iou") for x in v)[1],
             "val_class_miou_mean": m(x.get("val_class_miou") for x in v)[0],
             "effort_mean": m(x.get("effort") for x in v)[0],
             "cum_effort_mean": float(np.mean([_cum_effort(c)[k] for c in cur.values()])) if cur and k <= rounds
             else None}
            for k, v in sorted(rows.items())], "complete_seeds": sorted(cur)}
    full = [r for r in results if r["strategy"] == FULL]
    base0 = {int(r["seed"]): r for r in results if r["round"] == 0 and r["strategy"] != FULL}
    if full:
        fm = float(np.mean([r["class_miou"] for r in full]))
        gain = [r["class_miou"] - base0[r["seed"]]["class_miou"] for r in full if r["seed"] in base0]
        out["full_pool"] = {"class_miou": fm, "rare_iou": _mean(r.get("rare_iou") for r in full),
                            "val_class_miou": _mean(r.get("val_class_miou") for r in full), "seeds": len(full),
                            "annotated": int(full[0]["annotated"])}
        out["full_pool_gain"] = float(np.mean(gain)) if gain else None
        vg = [r["val_class_miou"] - base0[r["seed"]]["val_class_miou"] for r in full
              if r["seed"] in base0 and r.get("val_class_miou") is not None]
        out["val_full_pool_gain"] = float(np.mean(vg)) if vg else None
        out["target"] = TARGET_SHARE * fm
    baseline = "veg_random" if "veg_random" in strategies else "random" if "random" in strategies else None
    out["baseline"] = baseline
    if baseline and "target" in out:
        bcur = _curves(results, baseline, rounds)
        rng = np.random.default_rng(0)
        eff: dict[str, Any] = {}
        for s in strategies:
            scur = _curves(results, s, rounds)
            seeds = sorted(set(scur) & set(bcur))
            if not seeds:
                continue
            rs, rb = _reach(scur, seeds, out["target"]), _reach(bcur, seeds, out["target"])
            samples = []
            for _ in range(int(boot)):
                pick = list(rng.choice(seeds, len(seeds), replace=True))
                samples.append(_ratio(_reach(scur, pick, out["target"]), _reach(bcur, pick, out["target"])))
            arr = np.array([v for v in samples if not math.isnan(v)])
            # no interpolation between order statistics: an inf (never reached) stays inf, not nan
            lo, hi = np.quantile(arr, [0.025, 0.975], method="inverted_cdf") if len(arr) else (math.nan, math.nan)
            eff[s] = {"effort": rs, "baseline_effort": rb, "ratio": _ratio(rs, rb), "ci95": [float(lo), float(hi)],
                      "seeds": len(seeds)}
            if math.isinf(rb) and not math.isinf(rs):
                # the baseline never got there: s's effort over all the effort the baseline spent bounds the ratio
                spent = float(np.mean([_cum_effort(bcur[x])[-1] for x in seeds]))
                eff[s]["ratio_below"] = rs / spent if spent > 0 else math.nan
        out["effort_ratio"] = eff
    out["paired"] = {}
    for b in [x for x in ("random", "veg_random") if x in strategies]:
        bcur = _curves(results, b, rounds)
        for s in strategies:
            if s == b:
                continue
            scur = _curves(results, s, rounds)
            seeds = sorted(set(scur) & set(bcur))
            d = [float(np.mean([scur[x][k]["class_miou"] - bcur[x][k]["class_miou"] for k in range(1, rounds + 1)]))
                 for x in seeds]
            if (p := _t_interval(d)) is not None:
                out["paired"][f"{s}_vs_{b}"] = p
            at = [min(_cum_effort(scur[x])[-1], _cum_effort(bcur[x])[-1]) for x in seeds]
            d = [_miou_at_effort(scur[x], e) - _miou_at_effort(bcur[x], e) for x, e in zip(seeds, at) if e > 0]
            if (p := _t_interval(d)) is not None:
                out.setdefault("equal_effort", {})[f"{s}_vs_{b}"] = {**p, "effort": float(np.mean(at))}
    hint = [r for r in results if r.get("hint")]
    if hint:
        full_e = sum(r["effort"] for r in hint)
        out["hinted"] = {"effort_fraction": sum(r["hint"]["effort"] for r in hint) / max(1, full_e),
                         "iou_fraction": _mean(r["hint_miou"] for r in hint),
                         "prelabel_iou": _mean(r["pre_miou"] for r in hint),
                         "box_fraction": _mean(r.get("hint_box_fraction") for r in hint), "rounds": len(hint)}
    return out


def _mean(values) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def format_lines(summary: Mapping) -> list[str]:
    """The printed figures (issue 17's names)."""
    lines = []
    if summary.get("full_pool_gain") is not None:
        fp = summary["full_pool"]
        ok = "ok" if summary["full_pool_gain"] >= 0.10 else "BELOW 0.10: the curve is too flat to compare strategies"
        lines.append(f"full_pool_gain={summary['full_pool_gain']:.4f} ({ok}; full pool {fp['annotated']} images: "
                     f"test class mIoU {fp['class_miou']:.4f}, {fp['seeds']} seeds)")
        if summary.get("val_full_pool_gain") is not None:
            lines.append(f"val_full_pool_gain={summary['val_full_pool_gain']:.4f}")
        lines.append(f"target_class_miou={summary['target']:.4f} (95 % of the full pool's)")
    for s, d in summary["strategies"].items():
        last = d["rounds"][-1]
        lines.append(f"final_class_miou_{s}={_f(last['class_miou_mean'], 4)} +- {_f(last['class_miou_sd'], 4)} "
                     f"({last['annotated']} images, round {last['round']}, {last['seeds']} seeds)")
        if last.get("rare_iou_mean") is not None:
            lines.append(f"rare_iou_{s}={last['rare_iou_mean']:.4f} +- {last['rare_iou_sd']:.4f}")
    base = summary.get("baseline")
    for s, e in (summary.get("effort_ratio") or {}).items():
        below = (f"; {base} never reached it: the ratio is below {_f(e['ratio_below'])}, {s}'s effort over all "
                 f"of {base}'s" if e.get("ratio_below") is not None else "")
        lines.append(f"effort_ratio_{s}={_f(e['ratio'])} (effort {_f(e['effort'], 0)} vs {base} "
                     f"{_f(e['baseline_effort'], 0)} to reach the target; {e['seeds']} seeds{below})")
        lines.append(f"effort_ratio_{s}_ci95={_f(e['ci95'][0])},{_f(e['ci95'][1])}")
    for key, p in (summary.get("paired") or {}).items():
        lines.append(f"paired_diff_{key}={p['mean']:+.4f} ci95={p['ci95'][0]:+.4f},{p['ci95'][1]:+.4f} "
                     f"(class mIoU, mean over rounds 1.., n={p['n']} seeds)")
    for key, p in (summary.get("equal_effort") or {}).items():
        lines.append(f"equal_effort_diff_{key}={p['mean']:+.4f} ci95={p['ci95'][0]:+.4f},{p['ci95'][1]:+.4f} "
                     f"(class mIoU at the same cumulative effort, mean {p['effort']:.0f}; n={p['n']} seeds)")
    val = summary.get("validation") or {}
    for s, e in (val.get("effort_ratio") or {}).items():
        lines.append(f"val_effort_ratio_{s}={_f(e['ratio'])} ci95={_f(e['ci95'][0])},{_f(e['ci95'][1])} "
                     "(the same on the validation set)")
    for key, p in (val.get("equal_effort") or {}).items():
        if key.endswith(f"_vs_{base}"):
            lines.append(f"val_equal_effort_diff_{key}={p['mean']:+.4f} ci95={p['ci95'][0]:+.4f},"
                         f"{p['ci95'][1]:+.4f}")
    h = summary.get("hinted")
    if h:
        lines.append(f"hinted_effort_fraction={h['effort_fraction']:.4f}")
        lines.append(f"hinted_iou_fraction={h['iou_fraction']:.4f} (pre-label alone {h['prelabel_iou']:.4f}; "
                     f"boxes cover {h['box_fraction']:.3f} of the frame)")
    return lines


def table_markdown(summary: Mapping) -> str:
    rows = ["| strategy | round | annotated | class mIoU mean ± sd | rare IoU mean ± sd | val class mIoU | "
            "effort that round | cumulative effort |", "|---|---|---|---|---|---|---|---|"]
    for s, d in summary["strategies"].items():
        for r in d["rounds"]:
            rare = "—" if r["rare_iou_mean"] is None else f"{r['rare_iou_mean']:.4f} ± {r['rare_iou_sd']:.4f}"
            rows.append(f"| {s} | {r['round']} | {r['annotated']} | {r['class_miou_mean']:.4f} ± "
                        f"{r['class_miou_sd']:.4f} | {rare} | {_f(r['val_class_miou_mean'], 4)} | "
                        f"{_f(r['effort_mean'], 0)} | {_f(r['cum_effort_mean'], 0)} |")
    return "\n".join(rows) + "\n\n" + "\n".join(f"    {line}" for line in format_lines(summary)) + "\n"


def plot_curves(summary: Mapping, path: Path) -> None:
    from agir.figures import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for s, d in summary["strategies"].items():
        rs = [r for r in d["rounds"] if r["class_miou_mean"] is not None]
        ys = [r["class_miou_mean"] for r in rs]
        (line,) = axes[0].plot([r["annotated"] for r in rs], ys, marker="o", label=s)
        xs = [r["cum_effort_mean"] for r in rs]
        if all(x is not None for x in xs):
            axes[1].plot(np.asarray(xs) / 1000.0, ys, marker="o", color=line.get_color(), label=s)
    for ax in axes:
        if summary.get("target"):
            ax.axhline(summary["target"], color="grey", ls="--", lw=0.8, label="95 % of full pool")
        ax.set_ylabel("test class mIoU")
        ax.grid(alpha=0.3)
    seeds = max((r["seeds"] for d in summary["strategies"].values() for r in d["rounds"]), default=0)
    axes[0].set_xlabel("annotated images")
    axes[1].set_xlabel("cumulative annotator effort (thousands: px + relabelled px + clicks)")
    axes[0].set_title(f"Simulated active learning (mean of {seeds} seeds)")
    axes[1].legend(fontsize=8)
    save_png(fig, path, dpi=100)


def on_validation(results: Sequence[Mapping]) -> list[dict]:
    """The same rows with the validation class mIoU in place of the test one (rows without it dropped)."""
    return [{**r, "class_miou": r["val_class_miou"]} for r in results if r.get("val_class_miou") is not None]


def validation_check(results: Sequence[Mapping], cfg, boot: int = 2000) -> dict:
    """The comparison figures recomputed on the validation set: does a test-set ranking replicate there?"""
    v = summarize(on_validation(results), cfg, boot)
    return {k: v[k] for k in ("target", "effort_ratio", "equal_effort") if k in v}


def collect(out: Path, cfg) -> dict:
    """Summarise every results_seed*.jsonl in `out` into summary.json, table.md and al_curve.png."""
    results = read_results(out)
    summary = {"config": cfg.as_dict(), "data": read_json_or(Path(out) / "data_info.json", {}),
               **summarize(results, cfg)}
    if any(r.get("val_class_miou") is not None for r in results):
        summary["validation"] = validation_check(results, cfg)
    write_json(Path(out) / "summary.json", summary)
    write_text(Path(out) / "table.md", table_markdown(summary))
    if summary["strategies"]:
        plot_curves(summary, Path(out) / "al_curve.png")
    return summary
