"""The train stage: `dataset/` -> `model/` (DESIGN.md §3, §5).

Outputs, all written atomically:
- `model/last.ckpt`   Lightning checkpoint after every epoch; a rerun with the same settings and
                      dataset resumes from it (a changed setting or dataset starts fresh).
- `model/best.ckpt`   Lightning checkpoint of the epoch with the best validation mIoU.
- `model/metrics.csv` one row per epoch: losses, val mIoU, per-class val IoU, lr, seconds.
- `model/metrics.json` best epoch, val and test per-class IoU/F1, sample counts, timings.
- `model/plots/`      loss.png, miou.png, test_predictions.png.
- `model/best.pth`    the self-describing checkpoint (agir.checkpoint), written last: its presence
                      means the stage finished.

Pretrained encoders: `train.encoder_weights: imagenet` (or any smp weight name) downloads the
encoder weights through segmentation_models_pytorch on first use, or reads them from the
torch/Hugging Face cache (`TORCH_HOME`, `HF_HOME`) where a cluster node has no network; the
default `null` starts from random weights and needs nothing.

Where training starts (`train.init`, agir.train.init): by default from the newest earlier round's
`model/best.pth`, its head widened to this round's class set by `agir.checkpoint.transfer_weights`
(old classes' rows copied by name, new classes' rows fresh), or from scratch when it does not fit.
Without an earlier round, a retraining whose class set grew (a second species queried into the same
run folder) starts from the folder's own earlier model (`own_earlier_model`).
One INFO line says which; metrics.json and best.pth's config record it under `init`. A resumed run
keeps the record of the run it continues (init applies only to a fresh start).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from tqdm import tqdm

from agir.checkpoint import (
    FORMAT,
    VERSION,
    checkpoint_fingerprint,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from agir.errors import AgirError
from agir.logs import get_logger
from agir.runs import atomic_write, read_json_or, write_json, write_text
from agir.train.augment import denormalize
from agir.train.datamodule import (
    DatasetInfo,
    SegDataModule,
    inverse_frequency_weights,
    load_dataset_info,
    pad_collate,
)
from agir.train.init import PREVIOUS, display_name, init_choice
from agir.train.module import MONITOR, SegModule
from agir.train.plots import plot_curves, plot_predictions

log = get_logger("train")

# Settings that may change between a crash and a rerun without invalidating last.ckpt:
# more epochs, more patience, other hardware.
RESUME_NEUTRAL = (
    "epochs", "early_stopping_patience", "num_workers", "devices", "strategy", "accelerator", "precision", "resume",
)
PREDICTION_SAMPLES = 6
# bar refreshes read the loss from the device; every few steps keeps GPU steps free of host syncs
PROGRESS_REFRESH_STEPS = 5

DEFAULTS: dict[str, Any] = {
    "arch": "Unet",
    "encoder": "resnet18",
    "encoder_weights": None,
    "init": "previous",
    "epochs": 8,
    "batch_size": 8,
    "crop_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "grad_clip": 1.0,
    "precision": "32-true",
    "accelerator": "auto",
    "devices": 1,
    "strategy": "auto",
    "num_workers": 2,
    "seed": 42,
    "early_stopping_patience": 10,
    "resume": True,
    "loss": {"ce": 1.0, "dice": 1.0, "focal": 0.0},
    "class_weights": False,
    "augment": {"enabled": True, "flip": True, "rotate90": True, "scale": [0.75, 1.25], "color_jitter": 0.2},
    "max_steps_per_epoch": None,
    "val_every_n_epochs": 1,
    "max_val_batches": None,
}


def train_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg["train"]` over the defaults (the schema fills them too; this keeps library calls safe)."""
    out = copy.deepcopy(DEFAULTS)
    for k, v in (cfg.get("train") or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: a killed run never leaves a torn last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_write(path, "wb") as fh:
            torch.save(checkpoint, fh)


class EpochHistory(Callback):
    """One row per epoch in `model/metrics.csv`; the rows travel inside last.ckpt so resume keeps them.

    Rows are taken at `on_validation_end`, which runs before ModelCheckpoint saves that epoch's
    checkpoint (Lightning orders checkpoint callbacks last).
    """

    def __init__(self, csv_path: Path):
        self.csv_path = Path(csv_path)
        self.rows: list[dict[str, Any]] = []
        self._epoch_started = time.time()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: SegModule) -> None:
        self._epoch_started = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: SegModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        scores = pl_module.val_scores
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "train_loss": pl_module.epoch_train_loss(),
            "val_loss": float(metrics["val/loss"]) if "val/loss" in metrics else None,
            "val_mIoU": scores.get("mIoU"),
            "val_fg_mIoU": scores.get("fg_mIoU"),
        }
        for name, v in (scores.get("per_class_iou") or {}).items():
            row[f"val_iou_{name}"] = v
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        row["seconds"] = round(time.time() - self._epoch_started, 3)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            write_history_csv(self.csv_path, self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": copy.deepcopy(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


def write_history_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields or ["epoch"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return write_text(path, buf.getvalue())


def dataset_geometry(info: DatasetInfo) -> dict[str, Any]:
    """How the dataset's samples were cut (mode, size, overlap): what inference should tile with.

    Read from `stats.json` or `dataset/metrics.json` (`geometry`); without either, the first
    sample's size stands in for the tile size and the overlap is left to inference's setting.
    """
    for source in (info.stats, read_json_or(info.root / "metrics.json", {})):
        geom = source.get("geometry") if isinstance(source, Mapping) else None
        if isinstance(geom, Mapping) and geom.get("size"):
            return {"mode": geom.get("mode", "tile"), "size": int(geom["size"]), "overlap": geom.get("overlap")}
    row = info.index.iloc[0]
    from agir.images import image_size

    w, h = image_size(info.root / row["image"])
    log.warning("dataset has no recorded geometry; using the first sample's size %dx%d as the tile size", w, h)
    return {"mode": "tile", "size": int(max(w, h)), "overlap": None}


def training_fingerprint(tcfg: Mapping[str, Any], info: DatasetInfo, init: str | None = None) -> str:
    """Identity of a training run for resume: the settings that shape it, the dataset's content and the
    starting model's content (`init`: its fingerprint; None = scratch)."""
    shaping = {k: v for k, v in tcfg.items() if k not in RESUME_NEUTRAL}
    ident: dict[str, Any] = {"train": shaping, "dataset": info.fingerprint()}
    if init is not None:
        ident["init"] = init  # left out for scratch: a run started before train.init existed still resumes
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_encoder_weights(model: torch.nn.Module, arch: str, encoder: str, weights: str, in_channels: int) -> None:
    """Copy pretrained encoder weights (downloaded or cached by smp) into a freshly built model."""
    import segmentation_models_pytorch as smp

    try:
        donor = smp.create_model(arch, encoder_name=encoder, encoder_weights=weights, in_channels=in_channels, classes=1)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise AgirError(
            f"train.encoder_weights={weights!r}: could not load weights for encoder {encoder!r} ({exc}); "
            "set train.encoder_weights=null, or fill the torch/Hugging Face cache (TORCH_HOME/HF_HOME) where there is network"
        ) from exc
    model.encoder.load_state_dict(donor.encoder.state_dict())


def _resume_path(last: Path, fingerprint: str, resume: bool) -> tuple[Path | None, dict]:
    """(last.ckpt when it continues this very training, else None; its agir metadata)."""
    if not last.exists():
        return None, {}
    if not resume:
        log.info("resume disabled: starting fresh, replacing %s", last)
        return None, {}
    try:
        meta = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"]["agir"]
    except Exception as exc:  # torn or foreign file: never worth a crash, just retrain
        log.warning("%s unreadable (%s); starting fresh", last, str(exc).splitlines()[0] if str(exc) else exc)
        return None, {}
    if meta.get("fingerprint") != fingerprint:
        log.warning("%s was trained with other settings, another dataset or another starting model; starting fresh",
                    last)
        return None, {}
    log.info("resuming from %s", last)
    return last, dict(meta)


def _checked_init(choice: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The init choice with its file checked; (choice, the file's fingerprint or None for scratch)."""
    choice = dict(choice)
    if not choice.get("path"):
        return choice, None
    path = Path(choice["path"])
    if not path.is_file():
        raise AgirError(
            f"train.init={choice.get('setting')}: {path} not found; set train.init to an existing best.pth, "
            "previous (the newest earlier round's model) or null (from scratch)"
        )
    return choice, checkpoint_fingerprint(path)


def own_earlier_model(model_dir: Path, classes: list[str]) -> dict | None:
    """This round's model from before its class set grew (model/best.ckpt, Lightning's best epoch), loaded.

    The old tool's Example 2 queries a second species into the same run folder and trains again: with
    `train.init: previous` and no earlier round, that retraining starts from the folder's own earlier
    model (best.pth itself is gone: Snakemake removes a job's outputs before it runs). Only when the
    class set grew (a strict superset): a retraining with other settings still starts from scratch.
    """
    best = model_dir / "best.ckpt"
    if not best.is_file():
        return None
    try:
        source = load_checkpoint(best)
    except AgirError as exc:
        log.warning("%s unreadable (%s); not used as a starting model", best, exc)
        return None
    old = {str(c).strip().lower() for c in source["classes"]}
    if not old < {str(c).strip().lower() for c in classes}:
        return None
    return source


def initialise(module: SegModule, choice: Mapping[str, Any], classes: list[str], tcfg: Mapping[str, Any],
               project: Path, source: Mapping[str, Any] | None = None) -> str:
    """Start `module.model` from the chosen checkpoint (head widened by class name) or from scratch; the one line.

    `source`: an already loaded checkpoint to start from (this round's own earlier model), else choice's path.
    """
    line = f"from scratch: {choice.get('why') or 'no starting model'}"
    if source is not None:
        source = {**source, "name": f"{display_name(source['path'], project)} (this round's model before its "
                                    "class set grew)"}
        line = transfer_weights(module.model, source, classes, head="softmax")
    elif choice.get("path"):
        try:
            source = load_checkpoint(choice["path"])
        except AgirError as exc:
            raise AgirError(f"train.init={choice.get('setting')}: {exc}") from exc
        source["name"] = display_name(choice["path"], project)
        line = transfer_weights(module.model, source, classes, head="softmax")
    if line.startswith("from scratch") and tcfg.get("encoder_weights"):
        load_encoder_weights(module.model, tcfg["arch"], tcfg["encoder"], str(tcfg["encoder_weights"]), 3)
        line += f"; encoder weights {tcfg['encoder_weights']}"
    return line


def _trainer(tcfg: Mapping[str, Any], model_dir: Path, callbacks: list, progress: bool) -> L.Trainer:
    steps = tcfg.get("max_steps_per_epoch")
    try:
        return L.Trainer(
            max_epochs=int(tcfg["epochs"]),
            accelerator=tcfg["accelerator"],
            devices=tcfg["devices"],
            strategy=tcfg["strategy"],
            precision=tcfg["precision"],
            gradient_clip_val=tcfg.get("grad_clip") or None,
            limit_train_batches=int(steps) if steps else 1.0,
            # validation on a CPU can cost more than the training steps: thin it out where asked
            check_val_every_n_epoch=int(tcfg.get("val_every_n_epochs") or 1),
            limit_val_batches=int(tcfg["max_val_batches"]) if tcfg.get("max_val_batches") else 1.0,
            callbacks=[*callbacks, *([TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS)] if progress else [])],
            plugins=[AtomicCheckpointIO()],
            logger=False,  # metrics.csv is written by EpochHistory, one row per epoch
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=1,
            log_every_n_steps=1,
            default_root_dir=model_dir,
        )
    except (ValueError, TypeError, RuntimeError, ImportError, MisconfigurationException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AgirError(
            f"train.accelerator/devices/strategy/precision = {tcfg['accelerator']}/{tcfg['devices']}/"
            f"{tcfg['strategy']}/{tcfg['precision']}: {first}; use accelerator=cpu and precision=32-true without a GPU"
        ) from exc


@torch.no_grad()
def predict_samples(module: SegModule, dm: SegDataModule, count: int = PREDICTION_SAMPLES) -> list[tuple]:
    """(sample_id, image, truth, prediction) for up to `count` evenly spaced test samples."""
    ds = dm.test_ds
    if len(ds) == 0:
        return []
    picks = sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(count, len(ds)))})
    device = next(module.parameters()).device
    module.eval()
    out = []
    info = dm.info
    for i in tqdm(picks, desc="test predictions", leave=False):
        x, y, _ = ds[i]
        xb, _, _ = pad_collate([(x, y, i)])
        logits = module(xb.to(device))
        pred = logits.argmax(1)[0, : x.shape[-2], : x.shape[-1]].to(torch.uint8).cpu().numpy()
        truth = y.to(torch.uint8).numpy()
        out.append((str(ds.rows.iloc[i]["sample_id"]), denormalize(x, info.mean, info.std), truth, pred))
    return out


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _summary(scores: Mapping[str, Any]) -> dict[str, Any] | None:
    if not scores:
        return None
    return {k: _finite(v) for k, v in scores.items()}


def run_train_stage(
    cfg: Mapping[str, Any], run: str | Path, *, resume: bool | None = None, progress: bool = True,
    init: Mapping[str, Any] | None = None,
) -> dict:
    """Train on `run/dataset/`, write `run/model/` (see module docstring); returns metrics.json's content.

    Reads the `train` section of `cfg` only. `resume` overrides `train.resume` (False: ignore an
    existing last.ckpt); `progress=False` hides the Lightning progress bar (tests, benchmarks);
    `init` is the starting model as `agir.train.init.init_choice` resolved it (the rule passes the
    DAG's choice); None resolves `train.init` here against `run`'s project folder.
    """
    started = time.time()
    run = Path(run)
    tcfg = train_settings(cfg)
    info = load_dataset_info(run / "dataset")
    counts = info.counts()
    if counts["train"] == 0:
        raise AgirError(f"{info.root / 'index.csv'}: no train samples; check preprocess.split and the label source")
    val_split = "val"
    if counts["val"] == 0:
        log.warning("dataset has no val samples: validating (and picking the best epoch) on the train split")
        val_split = "train"
    if counts["test"] == 0:
        log.warning("dataset has no test samples: metrics.json will have no test scores")
    model_dir = run / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    L.seed_everything(int(tcfg["seed"]), workers=True, verbose=False)
    geometry = dataset_geometry(info)
    choice, init_id = _checked_init(init if init is not None else init_choice(cfg, run))
    fingerprint = training_fingerprint(tcfg, info, init_id)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": tcfg["arch"],
        "encoder": tcfg["encoder"],
        "in_channels": 3,
        "classes": info.class_names,
        "head": "softmax",
        "normalization": {"mean": info.mean, "std": info.std},
        "input": {"tile_size": geometry["size"], "overlap": geometry["overlap"]},
        "config": tcfg,
        "class_weights": inverse_frequency_weights(info) if tcfg["class_weights"] else None,
        "dataset": {"fingerprint": info.fingerprint(), "geometry": geometry, "samples": counts},
        "fingerprint": fingerprint,
    }
    last = model_dir / "last.ckpt"
    ckpt_path, resumed_meta = _resume_path(last, fingerprint, bool(tcfg["resume"]) if resume is None else resume)
    own = None
    if ckpt_path is None:
        if choice.get("setting") == PREVIOUS and not choice.get("path"):
            own = own_earlier_model(model_dir, info.class_names)  # read before it is deleted below
        # stale checkpoints would make ModelCheckpoint write best-v1.ckpt and confuse resume
        for stale in (last, model_dir / "best.ckpt"):
            stale.unlink(missing_ok=True)

    module = SegModule(meta)
    if ckpt_path is None:
        line = initialise(module, choice, info.class_names, tcfg, run.parent, source=own)
        init_record = {"setting": choice.get("setting"), "path": own["path"] if own else choice.get("path"),
                       "line": line}
        log.info("train: %s", line)
    else:  # the weights come from last.ckpt; the record is that of the run being continued
        init_record = dict(resumed_meta.get("init") or {"setting": choice.get("setting"), "path": choice.get("path"),
                                                        "line": "unknown (resumed)"})
        log.info("train: resumed from %s (it started %s)", last.name, init_record.get("line"))
    module.hparams["agir"]["init"] = init_record  # travels in last.ckpt for a later resume
    dm = SegDataModule(info, tcfg, val_split=val_split)
    best_cb = ModelCheckpoint(
        dirpath=model_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1, save_last=True,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    history = EpochHistory(model_dir / "metrics.csv")
    stopper = EarlyStopping(monitor=MONITOR, mode="max", patience=int(tcfg["early_stopping_patience"]))
    trainer = _trainer(tcfg, model_dir, [history, stopper, best_cb], progress)
    log.info(
        "training %s/%s on %d train / %d %s / %d test samples, classes %s",
        tcfg["arch"], tcfg["encoder"], counts["train"], counts[val_split], val_split, counts["test"], info.class_names,
    )
    fit_started = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    fit_seconds = time.time() - fit_started

    best_epoch = None
    best_path = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    if best_path and best_path.exists():
        best = torch.load(best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
        best_epoch = int(best["epoch"])
    else:
        log.warning("no best checkpoint recorded; using the final weights")

    trainer.validate(module, datamodule=dm, verbose=False)
    val_scores = dict(module.val_scores)
    test_scores: dict[str, Any] = {}
    if counts["test"]:
        trainer.test(module, datamodule=dm, verbose=False)
        test_scores = dict(module.test_scores)

    metrics = {
        "best_epoch": best_epoch,
        "epochs_run": len(history.rows),
        "stopped_early": bool(stopper.stopped_epoch),
        "monitor": MONITOR,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "init": init_record,
        "val_split": val_split,
        "val": _summary(val_scores),
        "test": _summary(test_scores),
        "classes": ["background", *info.class_names],
        "samples": counts,
        "model": {"arch": tcfg["arch"], "encoder": tcfg["encoder"], "encoder_weights": tcfg.get("encoder_weights")},
        "input": meta["input"],
        "device": str(trainer.strategy.root_device),
        "precision": str(tcfg["precision"]),
        "fit_seconds": round(fit_seconds, 2),
    }
    if not trainer.is_global_zero:
        return metrics  # other DDP ranks: rank 0 writes the files
    write_history_csv(model_dir / "metrics.csv", history.rows)
    plots = model_dir / "plots"
    plot_curves(history.rows, plots, best_epoch)
    plot_predictions(predict_samples(module, dm), info.classes, plots / "test_predictions.png")
    metrics["seconds"] = round(time.time() - started, 2)
    write_json(model_dir / "metrics.json", metrics)
    # best.pth last: its presence is the stage's "done" marker for Snakemake and for people
    save_checkpoint(
        model_dir / "best.pth",
        module.model.state_dict(),
        arch=tcfg["arch"],
        encoder=tcfg["encoder"],
        in_channels=3,
        classes=info.class_names,
        mean=info.mean,
        std=info.std,
        tile_size=geometry["size"],
        overlap=geometry["overlap"],
        metrics={"best_epoch": best_epoch, "val": metrics["val"], "test": metrics["test"]},
        config={**tcfg, "dataset": meta["dataset"], "init": init_record},
        head="softmax",
    )
    log.info(
        "best epoch %s: val mIoU %.4f, test mIoU %s -> %s",
        best_epoch, val_scores.get("mIoU", float("nan")),
        f"{test_scores['mIoU']:.4f}" if test_scores else "n/a", model_dir / "best.pth",
    )
    return metrics


__all__ = ["run_train_stage", "train_settings"]
