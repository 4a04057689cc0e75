"""Simulated annotator: what active selection buys, measured without waiting for people.

The database's own masks stand in for the corrections people would make in CVAT. On a demo
database (agir.demo, default difficulty mix), a fixed test set is set aside and never selectable;
the rest is the candidate pool. Per seed an initial labelled set is drawn at random and a round-0
model trained on it (shared by every strategy of that seed). Then, per strategy, R rounds of:
infer on the unlabelled pool -> score (agir.select.uncertainty) -> pick N (agir.select.strategies,
the workflow's own selection) -> add those images with their database masks -> retrain from
scratch -> evaluate on the test set.

Recorded per (seed, strategy, round): annotated images, test mIoU and plant IoU (binary mode), and
the annotator effort for the images selected that round: the fraction of pixels where the model's
pre-label differs from the database mask (what the CVAT download records as changed pixels).

Training uses the demo's small CPU model (scripts/demo.py: binary classes, Linknet /
timm-mobilenetv3_small_minimal_100, crop 224, batch 8, lr 0.003) with a fixed number of optimiser
steps per model (`epochs` x `steps_per_epoch`, the labelled images repeated to fill an epoch), so
every strategy's model gets the same compute whatever the size of its labelled set.

Entry points: `run_simulation(SimConfig(...), out)` and `main(argv)` (the CLI:
`agir-cvtoolkit simulate --rounds 4 --per-round 15 --strategies random,entropy,...`).
Outputs in `out/` (rewritten atomically as results arrive, so a partial run has results):
`results_seed{s}.jsonl` (one line per strategy/round), `data_info.json`, `config.json`, `summary.json`, `table.md`, `al_curve.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import append_jsonl, write_json, write_text

log = get_logger("simulate")

ALL_STRATEGIES = ("random", "stratified", "entropy", "margin", "least_confidence", "diverse", "kcenter")
# least_confidence ranks as margin_mean does in binary mode (1 - max p = (1 - margin) / 2 per pixel)
DEFAULT_STRATEGIES = ("random", "entropy", "diverse", "stratified", "margin")
# strategies that rank by the model's scores need the whole unlabelled pool inferred each round;
# the others only need pre-labels of the images they pick (for the effort figure)
METADATA_ONLY = frozenset({"random", "stratified"})
CLASS_NAMES = ["plant"]  # binary mode, as the demo trains


@dataclasses.dataclass
class SimConfig:
    """Every knob of one simulation; defaults are the full benchmark's choices (see docs/active_learning.md)."""

    pool: int = 200  # candidate images (with database masks)
    test: int = 40  # fixed test images, never selectable
    initial: int = 10  # random initial labelled set
    rounds: int = 4
    per_round: int = 15
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 0  # demo generator seed (the same database for every seed/strategy)
    width: int = 576  # demo image size (the default mix of difficulties at a lower resolution)
    height: int = 384
    # the demo's small CPU model (scripts/demo.py DEMO_SETTINGS)
    arch: str = "Linknet"
    encoder: str = "timm-mobilenetv3_small_minimal_100"
    crop_size: int = 224
    batch_size: int = 8
    lr: float = 0.003
    epochs: int = 7
    steps_per_epoch: int = 20
    tile_size: int = 384
    overlap: float = 0.25
    infer_batch: int = 8
    threads: int = 2
    jobs: int = 1  # seeds run in parallel processes
    data_dir: str | None = None  # reuse a generated demo database (else {out}/data)

    def check(self) -> None:
        unknown = [s for s in self.strategies if s not in ALL_STRATEGIES]
        if unknown:
            raise AgirError(f"simulate --strategies: unknown {unknown}; choose from {', '.join(ALL_STRATEGIES)}")
        if not self.strategies or not self.seeds:
            raise AgirError("simulate: need at least one strategy and one seed")
        for name in ("pool", "test", "initial", "per_round", "epochs", "steps_per_epoch", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise AgirError(f"simulate --{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        if self.rounds < 0:
            raise AgirError(f"simulate --rounds={self.rounds}: must be >= 0")
        if self.initial + self.rounds * self.per_round > self.pool:
            raise AgirError(
                f"simulate: initial {self.initial} + rounds {self.rounds} x per-round {self.per_round} exceeds the "
                f"pool of {self.pool}; enlarge --pool or select fewer"
            )

    def train_settings(self) -> dict[str, Any]:
        from agir.train.stage import train_settings

        return train_settings({"train": {
            "arch": self.arch, "encoder": self.encoder, "crop_size": self.crop_size, "batch_size": self.batch_size,
            "lr": self.lr, "epochs": self.epochs, "max_steps_per_epoch": self.steps_per_epoch, "num_workers": 0,
            "accelerator": "cpu", "precision": "32-true",
        }})


# ---------------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class Sample:
    id: str
    image_path: Path
    mask_path: Path  # binary class-index mask (0 background, 1 plant, 255 ignore) written for training
    rgb: np.ndarray
    truth: np.ndarray
    meta: dict
    moments: dict


def _images_table(db: Path) -> list[dict]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT image_id, any_value(ncsu_nfs) AS volume, any_value(image_path) AS image_path, "
            "any_value(mask_path) AS mask_path, max(has_masks) AS has_masks, "
            "arg_max(category_common_name, pixel_area) AS category_common_name, "
            "count(*) AS cutouts, any_value(state) AS state, any_value(season) AS season "
            "FROM semif GROUP BY image_id ORDER BY image_id"
        ).fetchall()
        cols = [d[0] for d in con.description]
    finally:
        con.close()
    return [dict(zip(cols, r)) for r in rows]


def prepare_data(cfg: SimConfig, out: Path) -> tuple[list[Sample], list[Sample], dict]:
    """(pool, test, info): generate the demo database, split it, write binary masks, keep pixels in memory."""
    from agir.data.stats import pixel_moments
    from agir.demo import generate_demo_data
    from agir.images import read_image
    from agir.masks import IGNORE, make_classes, read_mask, write_classes, write_mask

    data = Path(cfg.data_dir) if cfg.data_dir else out / "data"
    # ~8 % of demo images have no database mask (as in the real repository); generate enough to cover
    need = cfg.pool + cfg.test
    n_gen = int(math.ceil(need / 0.88)) + 4
    summary_file = data / "demo_summary.json"
    started = time.perf_counter()
    if summary_file.exists():
        from agir.runs import read_json

        summary = read_json(summary_file)
        if summary.get("images", 0) < n_gen or summary.get("size") != [cfg.width, cfg.height]:
            raise AgirError(f"{data}: holds a demo database of another size; remove it or point --data-dir elsewhere")
    else:
        summary = generate_demo_data(data, images=n_gen, seed=cfg.data_seed, width=cfg.width, height=cfg.height)
    gen_s = time.perf_counter() - started
    rows = [r for r in _images_table(data / "agir_demo.duckdb") if r["has_masks"]]
    if len(rows) < need:
        raise AgirError(f"{data}: only {len(rows)} images with masks, need pool {cfg.pool} + test {cfg.test}")
    order = np.random.default_rng([cfg.data_seed, 7]).permutation(len(rows))
    chosen = [rows[i] for i in order[:need]]
    classes = make_classes(CLASS_NAMES)
    mask_dir = out / "masks"
    write_classes(mask_dir, classes)
    samples = []
    for r in chosen:
        img_path = Path(summary["storage"]) / r["volume"] / r["image_path"]
        db_mask = read_mask(Path(summary["storage"]) / r["volume"] / r["mask_path"])
        truth = np.where(db_mask == IGNORE, IGNORE, (db_mask > 0).astype(np.uint8)).astype(np.uint8)
        mpath = mask_dir / f"{r['image_id']}.png"
        write_mask(mpath, truth, classes)
        rgb = read_image(img_path)
        meta = {k: r[k] for k in ("category_common_name", "cutouts", "state", "season")}
        samples.append(Sample(r["image_id"], img_path, mpath, rgb, truth, meta, pixel_moments(rgb, truth)))
    test, pool = samples[: cfg.test], samples[cfg.test:]
    info = {"generated_images": summary["images"], "images_with_masks": len(rows), "data_dir": str(data),
            "generate_seconds": round(gen_s, 1), "size": [cfg.width, cfg.height],
            "test_plant_fraction": round(float(np.mean([(s.truth == 1).mean() for s in test])), 4),
            "pool_species": _counts(s.meta["category_common_name"] for s in pool)}
    return pool, test, info


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------- model

def train_model(cfg: SimConfig, labelled: Sequence[Sample], workdir: Path, seed: int):
    """Train the demo network from scratch on `labelled`; returns (model in eval mode, mean, std, seconds)."""
    import lightning as L

    from agir.data.stats import mean_std, merge_moments
    from agir.masks import make_classes, write_classes
    from agir.train.datamodule import SegDataModule, load_dataset_info
    from agir.train.module import SegModule

    started = time.perf_counter()
    tcfg = cfg.train_settings()
    ds = workdir / "dataset"
    write_classes(ds, make_classes(CLASS_NAMES))
    mean, std = mean_std(merge_moments(s.moments for s in labelled))
    write_json(ds / "stats.json", {"mean": mean, "std": std})
    # repeat the labelled images so every epoch has steps_per_epoch batches: the same number of
    # optimiser steps (and the demo's warm-up/cosine schedule) whatever the labelled set's size
    reps = max(1, math.ceil(cfg.steps_per_epoch * cfg.batch_size / len(labelled)))
    lines = ["sample_id,split,image,mask"]
    for k in range(reps):
        lines += [f"{s.id}_{k},train,{s.image_path},{s.mask_path}" for s in labelled]
    write_text(ds / "index.csv", "\n".join(lines) + "\n")
    info = load_dataset_info(ds)
    L.seed_everything(int(seed), workers=True, verbose=False)
    meta = {"arch": cfg.arch, "encoder": cfg.encoder, "in_channels": 3, "classes": CLASS_NAMES, "head": "softmax",
            "normalization": {"mean": mean, "std": std}, "input": {"tile_size": cfg.tile_size, "overlap": cfg.overlap},
            "config": tcfg, "class_weights": None}
    module = SegModule(meta)
    trainer = L.Trainer(
        max_epochs=cfg.epochs, limit_train_batches=cfg.steps_per_epoch, limit_val_batches=0,
        num_sanity_val_steps=0, accelerator="cpu", devices=1, precision="32-true",
        gradient_clip_val=tcfg.get("grad_clip") or None, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
    )
    trainer.fit(module, datamodule=SegDataModule(info, tcfg, val_split="train"))
    return module.model.eval(), mean, std, time.perf_counter() - started


def make_predictor(cfg: SimConfig, model, mean, std):
    from agir.infer.predictor import TiledPredictor

    return TiledPredictor(model, head="softmax", mean=mean, std=std, tile_size=cfg.tile_size, overlap=cfg.overlap,
                          batch_size=cfg.infer_batch, device="cpu")


def changed_fraction(prelabel: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of (non-ignore) pixels where the pre-label differs from the database mask."""
    from agir.masks import IGNORE

    valid = truth != IGNORE
    n = int(valid.sum())
    return float((prelabel[valid] != truth[valid]).sum() / n) if n else 0.0


def evaluate_test(predictor, test: Sequence[Sample]) -> dict[str, float]:
    from agir.evaluate import confusion_counts, iou_from_confusion

    cm = np.zeros((2, 2), np.int64)
    for s in test:
        pred, _ = predictor.predict(s.rgb)
        cm += confusion_counts(pred, s.truth, 2)
    iou = iou_from_confusion(cm)
    return {"plant_iou": float(iou[1]), "miou": float(np.nanmean(iou)), "background_iou": float(iou[0])}


def score_pool(predictor, candidates: Sequence[Sample], with_probs: bool) -> tuple[Any, dict[str, np.ndarray]]:
    """(scores DataFrame for select_ids, {id: pre-label mask}); without probabilities only masks and metadata."""
    import pandas as pd

    from agir.select.uncertainty import flatten_uncertainty, image_uncertainty

    rows, masks = [], {}
    for s in candidates:
        pred, info = predictor.predict(s.rgb, return_probs=with_probs)
        masks[s.id] = pred
        row = {"id": s.id}
        if with_probs:
            row.update(flatten_uncertainty(image_uncertainty(info["probs"], CLASS_NAMES)))
        row.update(s.meta)
        rows.append(row)
    return pd.DataFrame(rows), masks


def select(scores, strategy: str, n: int, seed: int) -> list[str]:
    """The workflow's own selection (agir.select.strategies.select_ids)."""
    from agir.select.strategies import select_ids

    ids, _ = select_ids(scores, strategy, n, seed)
    ids = [str(i) for i in ids]
    if len(ids) != min(n, len(scores)) or len(set(ids)) != len(ids):
        raise AgirError(f"simulate: strategy {strategy!r} returned {len(ids)} ids (unique {len(set(ids))}) for n={n}")
    return ids


# ------------------------------------------------------------------------------------------- loop

def run_strategy(cfg: SimConfig, strategy: str, seed: int, pool: Sequence[Sample], test: Sequence[Sample],
                 round0: dict, workdir: Path, emit: Callable[[dict], None]) -> None:
    by_id = {s.id: s for s in pool}
    labelled = list(round0["labelled"])
    model, mean, std = round0["model"], round0["mean"], round0["std"]
    predictor = round0["predictor"]
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        taken = {s.id for s in labelled}
        candidates = [s for s in pool if s.id not in taken]
        needs_scores = strategy not in METADATA_ONLY
        if r == 1 and needs_scores and round0.get("scores") is not None:
            scores, masks = round0["scores"], round0["masks"]  # round-0 model's scores: same for every strategy
        elif needs_scores:
            scores, masks = score_pool(predictor, candidates, with_probs=True)
            if r == 1:
                round0["scores"], round0["masks"] = scores, masks
        else:
            import pandas as pd

            scores, masks = pd.DataFrame([{"id": s.id, **s.meta} for s in candidates]), {}
        infer_s = time.perf_counter() - t0
        picked = select(scores, strategy, cfg.per_round, seed * 1000 + r)
        efforts = []
        for i in picked:
            pre = masks.get(i)
            if pre is None:
                pre, _ = predictor.predict(by_id[i].rgb)
            efforts.append(changed_fraction(pre, by_id[i].truth))
        labelled += [by_id[i] for i in picked]
        model, mean, std, train_s = train_model(cfg, labelled, workdir / f"seed{seed}" / strategy / f"round{r}",
                                                seed * 1000 + r)
        predictor = make_predictor(cfg, model, mean, std)
        t1 = time.perf_counter()
        metrics = evaluate_test(predictor, test)
        emit({"seed": seed, "strategy": strategy, "round": r, "annotated": len(labelled), **metrics,
              "effort_mean": float(np.mean(efforts)), "effort_per_image": [round(e, 5) for e in efforts],
              "selected": picked, "selected_species": _counts(by_id[i].meta["category_common_name"] for i in picked),
              "infer_s": round(infer_s, 1), "train_s": round(train_s, 1),
              "eval_s": round(time.perf_counter() - t1, 1)})


def _say(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    return progress or (lambda m: print(m, flush=True))


def run_seed(cfg: SimConfig, seed: int, out: Path, pool: Sequence[Sample], test: Sequence[Sample],
             say: Callable[[str], None]) -> None:
    """One seed: the shared round-0 model, then every strategy's rounds; lines go to results_seed{seed}.jsonl."""
    results_file = out / f"results_seed{seed}.jsonl"
    results_file.unlink(missing_ok=True)

    def emit(row: dict) -> None:
        append_jsonl(results_file, row)
        say(f"seed {row['seed']} {row['strategy']:>16s} round {row['round']}: {row['annotated']} images, "
            f"plant IoU {row['plant_iou']:.4f}, mIoU {row['miou']:.4f}"
            + (f", effort {row['effort_mean']:.4f}" if row.get("effort_mean") is not None else "")
            + f" (train {row['train_s']} s, infer {row.get('infer_s', 0)} s, eval {row['eval_s']} s)")

    rng = np.random.default_rng([seed, 11])
    initial = [pool[i] for i in sorted(rng.choice(len(pool), cfg.initial, replace=False))]
    model, mean, std, train_s = train_model(cfg, initial, out / "work" / f"seed{seed}" / "round0", seed * 1000)
    predictor = make_predictor(cfg, model, mean, std)
    t1 = time.perf_counter()
    metrics = evaluate_test(predictor, test)
    base = {"round": 0, "annotated": len(initial), **metrics, "effort_mean": None, "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t1, 1)}
    round0 = {"labelled": initial, "model": model, "mean": mean, "std": std, "predictor": predictor}
    for strategy in cfg.strategies:
        emit({"seed": seed, "strategy": strategy, **base})  # the shared round-0 model, once per strategy
        run_strategy(cfg, strategy, seed, pool, test, round0, out / "work", emit)
        collect(out, cfg)  # partial results stay readable while the rest runs


def _seed_worker(cfg: SimConfig, out: str, seed: int) -> None:
    """A process per seed (spawned): single-threaded torch, data re-read from the parent's database."""
    import torch

    torch.set_num_threads(int(cfg.threads))
    pool, test, _ = prepare_data(cfg, Path(out))
    run_seed(cfg, seed, Path(out), pool, test, _say(None))


def run_simulation(cfg: SimConfig, out: str | Path, progress: Callable[[str], None] | None = None) -> dict:
    """Run the whole simulation into `out`; returns the summary (also `out/summary.json`).

    `cfg.jobs` > 1 runs seeds in parallel processes with `threads // jobs` torch threads each: on a
    shared CPU one single-threaded process per core wastes far less than threads spinning at barriers.
    """
    cfg.check()  # before the slow torch import: a bad setting fails at once
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _say(progress)
    started = time.perf_counter()
    for old in out.glob("results_seed*.jsonl"):
        old.unlink()
    pool, test, data_info = prepare_data(cfg, out)
    write_json(out / "data_info.json", data_info)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    say(f"data: pool {len(pool)}, test {len(test)} images at {cfg.width}x{cfg.height} "
        f"({data_info['generate_seconds']} s to generate)")
    jobs = min(int(cfg.jobs), len(cfg.seeds))
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        child = dataclasses.replace(cfg, data_dir=data_info["data_dir"], threads=max(1, int(cfg.threads) // jobs))
        del pool, test
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            for f in [ex.submit(_seed_worker, child, str(out), seed) for seed in cfg.seeds]:
                f.result()
    else:
        torch.set_num_threads(int(cfg.threads))
        for seed in cfg.seeds:
            run_seed(cfg, seed, out, pool, test, say)
    summary = collect(out, cfg)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "summary.json", summary)
    return summary


def read_results(out: Path) -> list[dict]:
    from agir.runs import read_jsonl

    rows: list[dict] = []
    for f in sorted(Path(out).glob("results_seed*.jsonl")):
        rows += read_jsonl(f)
    return rows


def collect(out: Path, cfg: SimConfig) -> dict:
    """Summarise every results_seed*.jsonl in `out` into summary.json, table.md and al_curve.png."""
    from agir.runs import read_json_or

    results = read_results(out)
    summary = {"config": dataclasses.asdict(cfg), "data": read_json_or(out / "data_info.json", {}),
               **summarize(results, cfg)}
    write_outputs(out, summary, results, cfg)
    return summary


# --------------------------------------------------------------------------------------- summary

def _curve(results: Sequence[Mapping], strategy: str, key: str) -> dict[int, list[float]]:
    """round -> values over seeds."""
    out: dict[int, list[float]] = {}
    for r in results:
        if r["strategy"] == strategy and r.get(key) is not None:
            out.setdefault(int(r["round"]), []).append(float(r[key]))
    return dict(sorted(out.items()))


def _annotated(results: Sequence[Mapping], strategy: str) -> dict[int, int]:
    return {int(r["round"]): int(r["annotated"]) for r in results if r["strategy"] == strategy}


def images_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """Images at which the (linearly interpolated) curve first reaches `target`; None if it never does."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) * (x - x0) / (y - y0)) if y != y0 else float(x)
    return None


def summarize(results: Sequence[Mapping], cfg: SimConfig, key: str = "plant_iou") -> dict:
    """Mean/spread per strategy and round, label efficiency against random, effort per round."""
    per: dict[str, dict] = {}
    for strategy in cfg.strategies:
        rounds = _curve(results, strategy, key)
        if not rounds:
            continue
        ann = _annotated(results, strategy)
        miou = _curve(results, strategy, "miou")
        effort = _curve(results, strategy, "effort_mean")
        per[strategy] = {"rounds": [
            {"round": r, "annotated": ann[r], "seeds": len(v),
             "plant_iou_mean": float(np.mean(v)), "plant_iou_sd": float(np.std(v)),
             "plant_iou_min": float(np.min(v)), "plant_iou_max": float(np.max(v)),
             "miou_mean": float(np.mean(miou[r])), "miou_sd": float(np.std(miou[r])),
             "effort_mean": float(np.mean(effort[r])) if r in effort else None,
             "effort_sd": float(np.std(effort[r])) if r in effort else None}
            for r, v in rounds.items()]}
    out: dict[str, Any] = {"metric": key, "strategies": per}
    # paired with random on the same seed and round (same initial set, same training seed): the
    # training noise both share cancels, which a flat learning curve needs
    base = {(r["seed"], r["round"]): r[key] for r in results if r["strategy"] == "random" and r["round"] >= 1}
    gains = {}
    for strategy in per:
        if strategy == "random":
            continue
        d = [float(r[key]) - float(base[(r["seed"], r["round"])]) for r in results
             if r["strategy"] == strategy and r["round"] >= 1 and (r["seed"], r["round"]) in base]
        if d:
            gains[strategy] = {"mean": float(np.mean(d)), "sd": float(np.std(d)), "n": len(d),
                               "wins": int(sum(v > 0 for v in d))}
    out["paired_gain_vs_random"] = gains
    rnd = per.get("random")
    complete = rnd and rnd["rounds"][-1]["round"] == cfg.rounds
    if complete:
        target = rnd["rounds"][-1]["plant_iou_mean"]
        used = rnd["rounds"][-1]["annotated"]
        eff = {}
        for strategy, d in per.items():
            xs = [r["annotated"] for r in d["rounds"]]
            ys = [r["plant_iou_mean"] for r in d["rounds"]]
            reach = images_to_reach(xs, ys, target)
            eff[strategy] = {"images": reach, "ratio": None if reach is None else reach / used,
                             "reached": reach is not None, "final_round": d["rounds"][-1]["round"]}
        out["random_final"] = {"plant_iou": target, "annotated": used, "rounds": cfg.rounds}
        out["label_efficiency"] = eff
    return out


def format_lines(summary: Mapping) -> list[str]:
    """The printed figures: final IoUs with spread, label_efficiency_*, effort_per_image_*."""
    lines = []
    for strategy, d in summary["strategies"].items():
        last = d["rounds"][-1]
        lines.append(f"final_plant_iou_{strategy}={last['plant_iou_mean']:.4f} +- {last['plant_iou_sd']:.4f} "
                     f"[{last['plant_iou_min']:.4f}, {last['plant_iou_max']:.4f}] "
                     f"(mIoU {last['miou_mean']:.4f} +- {last['miou_sd']:.4f}; {last['annotated']} images, "
                     f"round {last['round']}, {last['seeds']} seeds)")
    for strategy, e in (summary.get("label_efficiency") or {}).items():
        if e["final_round"] < summary["random_final"].get("rounds", e["final_round"]) and not e["reached"]:
            lines.append(f"label_efficiency_{strategy}=pending (only round {e['final_round']} done so far)")
        elif e["reached"]:
            lines.append(f"label_efficiency_{strategy}={e['ratio']:.3f} ({e['images']:.1f} images)")
        else:
            lines.append(f"label_efficiency_{strategy}=>1 (never reached random's final "
                         f"{summary['random_final']['plant_iou']:.4f} within round {e['final_round']})")
    for strategy, g in (summary.get("paired_gain_vs_random") or {}).items():
        lines.append(f"paired_gain_vs_random_{strategy}={g['mean']:+.4f} +- {g['sd']:.4f} "
                     f"(test plant IoU minus random's, same seed and round; {g['wins']}/{g['n']} better)")
    for strategy, d in summary["strategies"].items():
        for r in d["rounds"]:
            if r["effort_mean"] is not None:
                lines.append(f"effort_per_image_{strategy}_round_{r['round']}={r['effort_mean']:.4f} "
                             f"+- {r['effort_sd']:.4f}")
    return lines


def table_markdown(summary: Mapping) -> str:
    head = ("| strategy | round | annotated | plant IoU mean ± sd [min, max] | mIoU mean ± sd | "
            "effort (changed px) of that round's picks |\n|---|---|---|---|---|---|")
    rows = [head]
    for strategy, d in summary["strategies"].items():
        for r in d["rounds"]:
            eff = "—" if r["effort_mean"] is None else f"{r['effort_mean']:.4f} ± {r['effort_sd']:.4f}"
            rows.append(f"| {strategy} | {r['round']} | {r['annotated']} | {r['plant_iou_mean']:.4f} ± "
                        f"{r['plant_iou_sd']:.4f} [{r['plant_iou_min']:.4f}, {r['plant_iou_max']:.4f}] | "
                        f"{r['miou_mean']:.4f} ± {r['miou_sd']:.4f} | {eff} |")
    return "\n".join(rows) + "\n\n" + "\n".join(f"    {line}" for line in format_lines(summary)) + "\n"


def plot_curves(summary: Mapping, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agir.runs import write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, d in summary["strategies"].items():
        xs = [r["annotated"] for r in d["rounds"]]
        ys = np.array([r["plant_iou_mean"] for r in d["rounds"]])
        lo = [r["plant_iou_min"] for r in d["rounds"]]
        hi = [r["plant_iou_max"] for r in d["rounds"]]
        (line,) = ax.plot(xs, ys, marker="o", label=strategy)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    if summary.get("random_final"):  # the level label_efficiency measures against
        ax.axhline(summary["random_final"]["plant_iou"], color="grey", ls="--", lw=0.8,
                   label="random's final IoU")
    seeds = max((r["seeds"] for d in summary["strategies"].values() for r in d["rounds"]), default=0)
    ax.set_xlabel("annotated images")
    ax.set_ylabel("test plant IoU")
    ax.set_title(f"Simulated active learning (mean over {seeds} seeds, band = min..max)")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def write_outputs(out: Path, summary: Mapping, results: Sequence[Mapping], cfg: SimConfig) -> None:
    write_json(out / "summary.json", summary)
    write_text(out / "table.md", table_markdown(summary))
    plot_curves(summary, out / "al_curve.png")


# ------------------------------------------------------------------------------------------- CLI

def build_parser(prog: str = "agir-cvtoolkit simulate") -> argparse.ArgumentParser:
    d = SimConfig()
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/simulate", help="results folder (default outputs/simulate)")
    ap.add_argument("--strategies", default=",".join(d.strategies), help="comma list of " + ",".join(ALL_STRATEGIES))
    ap.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="comma list of seeds (default 0,1)")
    for name, typ in (("pool", int), ("test", int), ("initial", int), ("rounds", int), ("per_round", int),
                      ("data_seed", int), ("width", int), ("height", int), ("epochs", int), ("steps_per_epoch", int),
                      ("tile_size", int), ("batch_size", int), ("crop_size", int), ("lr", float), ("threads", int),
                      ("jobs", int),
                      ("arch", str), ("encoder", str)):
        ap.add_argument(f"--{name.replace('_', '-')}", type=typ, default=getattr(d, name),
                        help=f"default {getattr(d, name)}")
    ap.add_argument("--data-dir", default=None, help="reuse a demo database generated by an earlier run")
    ap.add_argument("--summarize-only", action="store_true",
                    help="only rebuild summary/table/plot from --out's results (a partial or finished run)")
    return ap


def config_from_args(args: argparse.Namespace) -> SimConfig:
    try:
        seeds = tuple(int(s) for s in str(args.seeds).split(",") if s.strip())
    except ValueError as exc:
        raise AgirError(f"simulate --seeds={args.seeds!r}: give integers separated by commas") from exc
    fields = {f.name for f in dataclasses.fields(SimConfig)} - {"strategies", "seeds"}
    if getattr(args, "summarize_only", False):
        from agir.runs import read_json_or

        saved = read_json_or(Path(args.out) / "config.json", None)
        if saved:  # the run's own settings, not this command line's defaults
            return SimConfig(**{**saved, "strategies": tuple(saved["strategies"]), "seeds": tuple(saved["seeds"])})
    kw = {k: v for k, v in vars(args).items() if k in fields}
    return SimConfig(strategies=tuple(s.strip() for s in str(args.strategies).split(",") if s.strip()),
                     seeds=seeds, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """`agir-cvtoolkit simulate ...`: run, print the figures, return 0 (AgirError -> message, 2)."""
    import sys

    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.summarize_only:
            if not read_results(Path(args.out)):
                raise AgirError(f"{args.out}: no results_seed*.jsonl to summarise; run the simulation first")
            summary = collect(Path(args.out), cfg)
        else:
            summary = run_simulation(cfg, args.out, progress=lambda m: print(m, flush=True))
    except AgirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    for line in format_lines(summary):
        print(line)
    print(f"results: {Path(args.out) / 'table.md'}  {Path(args.out) / 'al_curve.png'}  ({summary.get('seconds', '?')} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
