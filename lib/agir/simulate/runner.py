"""The simulated loop: per seed a round-0 model and a full-pool reference, then per strategy R rounds of
score the unlabelled pool -> select (agir.select.strategies.select_ids, by name) -> pre-label the
picks and measure the correction effort -> add them with their true masks -> fine-tune -> evaluate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import append_jsonl, atomic_write, write_json
from agir.simulate import effort as eff
from agir.simulate import model as M
from agir.simulate.config import SimConfig, strategy_spec
from agir.simulate.pool import PoolData, Sample, prepare_data

log = get_logger("simulate")
FULL = "_full_pool"  # the reference rows: the model fine-tuned on the whole pool
# candidate-table metadata a real database knows before anyone annotates (not which weeds grew)
META_COLUMNS = ("group_id", "day", "category_common_name", "estimated_bbox_area_cm2", "state", "season")


def score_table(model: M.SimModel | None, cands: Sequence[Sample]):
    """The scores table the real loop writes: agir.select.uncertainty statistics + record metadata."""
    import pandas as pd

    from agir.select.uncertainty import flatten_uncertainty, image_uncertainty

    rows = [{"id": s.id, **{k: s.meta[k] for k in META_COLUMNS if k in s.meta}} for s in cands]
    if model is not None:
        for row, (probs, _) in zip(rows, M.predict(model, [s.rgb for s in cands])):
            row.update(flatten_uncertainty(image_uncertainty(probs, model.classes)))
    return pd.DataFrame(rows)


def select(scores, strategy: str, n: int, seed: int) -> list[str]:
    """The workflow's own selection, by name (any strategy agir.select.strategies registers)."""
    from agir.select.strategies import select_ids

    name, opts = strategy_spec(strategy)
    ids, _ = select_ids(scores, name, n, seed, **opts)
    ids = [str(i) for i in ids]
    if len(ids) != min(n, len(scores)) or len(set(ids)) != len(ids):
        raise AgirError(f"simulate: strategy {strategy!r} returned {len(ids)} ids (unique {len(set(ids))}) for n={n}")
    return ids


def correction_stats(cfg: SimConfig, model: M.SimModel, picks: Sequence[Sample], data: PoolData) -> dict:
    """Effort of correcting the picks' pre-labels, and what the hint-following annotator does."""
    k = len(data.classes) + 1
    lut = model.to_global(data.classes)
    tot = dict.fromkeys(eff.KEYS, 0)
    hint = dict.fromkeys(eff.KEYS, 0)
    cm_pre, cm_hint = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
    per_image, box_frac = [], []
    for s, (probs, label) in zip(picks, M.predict(model, [s.rgb for s in picks])):
        pre = lut[label]
        e = eff.effort(pre, s.truth)
        h = eff.hinted(pre, s.truth, probs, cfg.hint_threshold, cfg.hint_regions)
        for key in eff.KEYS:
            tot[key] += e[key]
            hint[key] += h["effort"][key]
        cm_pre += M.confusion(pre, s.truth, k)
        cm_hint += M.confusion(h["label"], s.truth, k)
        per_image.append(e["effort"])
        box_frac.append(h["box_fraction"])

    def miou(cm):  # over the classes present in these picks (truth or prediction)
        return float(np.nanmean(M.class_ious(cm)[1:])) if cm[1:].sum() or cm[:, 1:].sum() else 1.0

    return {**tot, "effort_per_image": per_image, "hint": hint, "pre_miou": miou(cm_pre),
            "hint_miou": miou(cm_hint), "hint_box_fraction": float(np.mean(box_frac)) if box_frac else 0.0}


def _eval_row(model: M.SimModel, data: PoolData) -> dict:
    t = M.evaluate(model, data.test, data.classes, data.rare)
    row = {"class_miou": t["class_miou"], "rare_iou": t["rare_iou"], "per_class": t["per_class"]}
    if data.val:
        v = M.evaluate(model, data.val, data.classes, data.rare)
        row.update(val_class_miou=v["class_miou"], val_rare_iou=v["rare_iou"])
    return row


def run_strategy(cfg: SimConfig, strategy: str, seed: int, data: PoolData, round0: dict,
                 emit: Callable[[dict], None]) -> None:
    from agir.select.strategies import needs_model

    labelled = list(round0["labelled"])
    model = round0["model"]
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        taken = {s.id for s in labelled}
        cands = [s for s in data.pool if s.id not in taken]
        if needs_model(strategy_spec(strategy)[0]):
            if r == 1 and round0.get("scores") is None:  # the round-0 model scores alike for every strategy
                round0["scores"] = score_table(model, cands)
            scores = round0["scores"] if r == 1 else score_table(model, cands)
        else:
            scores = score_table(None, cands)
        ids = select(scores, strategy, cfg.per_round, seed * 1000 + r)
        by_id = {s.id: s for s in cands}
        picks = [by_id[i] for i in ids]
        score_s = time.perf_counter() - t0
        corr = correction_stats(cfg, model, picks, data)
        labelled += picks
        classes = M.round_classes(model.classes, [s.truth for s in picks], data.classes)
        t1 = time.perf_counter()
        model = M.build(cfg, classes, model.mean, model.std, previous=model, seed=seed * 1000 + r)
        loss = M.train(cfg, model, [s.rgb for s in labelled], [s.truth for s in labelled], data.classes,
                       cfg.ft_steps, cfg.ft_lr, seed * 1000 + r)
        train_s = time.perf_counter() - t1
        emit({"seed": seed, "strategy": strategy, "round": r, "annotated": len(labelled), **_eval_row(model, data),
              **corr, "selected": ids, "groups_picked": len({s.meta.get("group_id") for s in picks}),
              "picked_species": sorted({c for s in picks for c in s.meta.get("species", "").split(",") if c}),
              "classes": classes, "transfer": model.note, "loss": round(loss, 4), "score_s": round(score_s, 1),
              "train_s": round(train_s, 1)})


def _emitter(out: Path, seed: int, part: str, say: Callable[[str], None]) -> Callable[[dict], None]:
    """Rows go to results_seed{seed}_{part}.jsonl: one file per task, so parallel tasks never share one."""
    path = out / f"results_seed{seed}_{part}.jsonl"

    def emit(row: dict) -> None:
        append_jsonl(path, row)
        extra = f" rare {row['rare_iou']:.3f}" if row.get("rare_iou") is not None else ""
        say(f"seed {seed} {row['strategy']} round {row['round']}: {row['annotated']} images, class mIoU "
            f"{row['class_miou']:.3f}{extra}" + (f", effort {row['effort']}" if row.get("effort") else ""))

    return emit


def _round0_file(out: Path, seed: int) -> Path:
    return out / "round0" / f"seed{seed}.pt"


def round0_task(cfg: SimConfig, seed: int, out: Path, data: PoolData) -> None:
    """The seed's initial frames and round-0 model (shared by its strategies), saved to out/round0/."""
    import torch

    rng = np.random.default_rng([seed, 3])
    initial = sorted(int(i) for i in rng.choice(len(data.pool), cfg.initial, replace=False))
    init = [data.pool[i] for i in initial]
    mean, std = M.norm_stats([s.rgb for s in init])
    t0 = time.perf_counter()
    m0 = M.build(cfg, M.round_classes([], [s.truth for s in init], data.classes), mean, std, seed=seed)
    loss0 = M.train(cfg, m0, [s.rgb for s in init], [s.truth for s in init], data.classes, cfg.init_steps,
                    cfg.lr, seed)
    base = {"seed": seed, "round": 0, "annotated": len(init), **_eval_row(m0, data), "classes": m0.classes,
            "loss": round(loss0, 4), "train_s": round(time.perf_counter() - t0, 1)}
    with atomic_write(_round0_file(out, seed), "wb") as fh:  # a task that loads it never sees half a file
        torch.save({"initial": initial, "classes": m0.classes, "mean": mean, "std": std, "base": base,
                    "state_dict": m0.net.state_dict()}, fh)


def _load_round0(cfg: SimConfig, seed: int, out: Path, data: PoolData) -> tuple[dict, M.SimModel]:
    import torch

    saved = torch.load(_round0_file(out, seed), map_location="cpu", weights_only=False)
    m0 = M.build(cfg, saved["classes"], saved["mean"], saved["std"])
    m0.net.load_state_dict(saved["state_dict"])
    m0.net.eval()
    return saved, m0


def full_steps(cfg: SimConfig) -> int:
    return int(cfg.full_steps) or int(cfg.ft_steps) * max(1, int(cfg.rounds))


def full_pool_task(cfg: SimConfig, seed: int, out: Path, data: PoolData, say: Callable[[str], None]) -> None:
    """The reference: the round-0 model fine-tuned on the whole pool for `full_steps` steps (0: rounds x
    ft_steps, the compute of the last round's model); the learning curve has to be able to rise this far
    (full_pool_gain)."""
    saved, m0 = _load_round0(cfg, seed, out, data)
    t1 = time.perf_counter()
    full_classes = M.round_classes(m0.classes, [s.truth for s in data.pool], data.classes)
    mf = M.build(cfg, full_classes, m0.mean, m0.std, previous=m0, seed=seed * 1000 + 999)
    lossf = M.train(cfg, mf, [s.rgb for s in data.pool], [s.truth for s in data.pool], data.classes,
                    full_steps(cfg), cfg.ft_lr, seed * 1000 + 999)
    _emitter(out, seed, FULL, say)({"seed": seed, "strategy": FULL, "round": cfg.rounds, "annotated": len(data.pool),
                                    **_eval_row(mf, data), "classes": full_classes, "loss": round(lossf, 4),
                                    "train_s": round(time.perf_counter() - t1, 1)})


def strategy_task(cfg: SimConfig, seed: int, strategy: str, out: Path, data: PoolData,
                  say: Callable[[str], None]) -> None:
    saved, m0 = _load_round0(cfg, seed, out, data)
    emit = _emitter(out, seed, strategy, say)
    emit({"strategy": strategy, **saved["base"]})
    round0 = {"labelled": [data.pool[i] for i in saved["initial"]], "model": m0}
    run_strategy(cfg, strategy, seed, data, round0, emit)


def _say(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    return progress or (lambda m: log.info("%s", m))


_WORKER_DATA: dict[str, PoolData] = {}


def _task_worker(cfg: SimConfig, out: str, kind: str, seed: int, strategy: str | None = None) -> str:
    """One task in a spawned process: single-threaded torch; the data made once per process (deterministic)."""
    import torch

    torch.set_num_threads(int(cfg.threads))
    key = repr(cfg.as_dict())
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = prepare_data(cfg, Path(out))
    data = _WORKER_DATA[key]
    say = lambda m: print(m, flush=True)  # noqa: E731
    if kind == "round0":
        round0_task(cfg, seed, Path(out), data)
    elif kind == "full":
        full_pool_task(cfg, seed, Path(out), data, say)
    else:
        strategy_task(cfg, seed, str(strategy), Path(out), data, say)
    return kind


_RESUME_IGNORES = ("jobs", "threads", "data_dir")


def _finished_tasks(cfg: SimConfig, out: Path) -> set[str]:
    """File names of tasks an earlier run of the same settings finished (round-0 models, complete result
    files); nothing when out/config.json holds other settings."""
    from agir.runs import read_json_or, read_jsonl

    saved = read_json_or(out / "config.json", None) or {}
    now = cfg.as_dict()
    if any(_plain(saved.get(k)) != _plain(v) for k, v in now.items() if k not in _RESUME_IGNORES):
        return set()
    keep = {p.name for p in out.glob("round0/seed*.pt")}
    for f in out.glob("results_seed*.jsonl"):
        rounds = {int(r["round"]) for r in read_jsonl(f)}
        if FULL in f.name and rounds or rounds >= set(range(cfg.rounds + 1)):
            keep.add(f.name)
    return keep


def _tasks_after_round0(cfg: SimConfig, seed: int, done: set[str]) -> list[tuple[str, str | None]]:
    """The seed's full-pool and strategy tasks whose result files a resumed run does not already have."""
    tasks: list[tuple[str, str | None]] = [("full", None)] + [("strategy", s) for s in cfg.strategies]
    return [(k, s) for k, s in tasks if f"results_seed{seed}_{FULL if k == 'full' else s}.jsonl" not in done]


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def run_simulation(cfg: SimConfig, out: str | Path, progress: Callable[[str], None] | None = None,
                   resume: bool = False) -> dict:
    """Run the whole simulation into `out`; returns the summary (also `out/summary.json`).

    With jobs > 1 the work is split into tasks (per seed: round 0, then the full-pool reference and
    one task per strategy, which start from the saved round-0 model) on `jobs` processes, so no core
    idles while the last seed runs alone."""
    from agir.simulate.report import collect

    cfg = cfg.resolved()
    cfg.check()  # before the slow work: a bad setting fails at once
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _say(progress)
    started = time.perf_counter()
    done = _finished_tasks(cfg, out) if resume else set()
    for old in list(out.glob("results_seed*.jsonl")) + list(out.glob("round0/seed*.pt")):
        if old.name not in done:
            old.unlink()
    if done:
        say(f"resume: {len(done)} finished task files kept in {out}")
    data = prepare_data(cfg, out)
    write_json(out / "data_info.json", data.info)
    write_json(out / "config.json", cfg.as_dict())
    say(f"data: {cfg.pool} pool of {len(data.pool)} images, val {len(data.val)}, test {len(data.test)} "
        f"({data.info['generate_seconds']} s to generate); strategies {', '.join(cfg.strategies)}")
    if int(cfg.jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        child = dataclasses.replace(cfg, data_dir=data.info.get("data_dir"))
        del data
        with ProcessPoolExecutor(max_workers=int(cfg.jobs), mp_context=mp.get_context("spawn")) as ex:
            def after_round0(seed: int) -> None:  # that seed's model is saved: its other tasks can start
                for kind, strategy in _tasks_after_round0(cfg, seed, done):
                    pending[ex.submit(_task_worker, child, str(out), kind, seed, strategy)] = seed

            pending: dict = {}
            for seed in cfg.seeds:
                if f"seed{seed}.pt" in done:
                    after_round0(seed)
                else:
                    pending[ex.submit(_task_worker, child, str(out), "round0", seed)] = seed
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    seed = pending.pop(f)
                    if f.result() == "round0":
                        after_round0(seed)
                    else:
                        collect(out, cfg)  # partial results stay readable while the rest runs
    else:
        torch.set_num_threads(int(cfg.threads))
        for seed in cfg.seeds:
            if f"seed{seed}.pt" not in done:
                round0_task(cfg, seed, out, data)
            for kind, strategy in _tasks_after_round0(cfg, seed, done):
                if kind == "full":
                    full_pool_task(cfg, seed, out, data, say)
                else:
                    strategy_task(cfg, seed, str(strategy), out, data, say)
            collect(out, cfg)
    summary = collect(out, cfg)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "summary.json", summary)
    return summary
