"""What labels an item's pixels: a trained checkpoint, or (round 1) the vegetation-index baseline.

A backend's `predict(rgb, boxes, top)` returns `(mask, info)`. The baseline labels plant pixels
inside each record's bbox with that record's class; the model labels pixels itself and also returns
`info["uncertainty"]`, per-image statistics computed from the probabilities of the same forward pass
(for active selection), so scoring a pool never needs a second pass.

With the round's class set (`ModelBackend.use_classes`) the model's classes are mapped to the round's
indices by name, and records of species the model does not know (a species new this round, or any
species for a binary model) are labelled by their own species inside their box on the model's plant
shape (`agir.infer.baseline.label_unknown_species`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agir import records as recs
from agir.infer.baseline import label_unknown_species, paint_boxes, plant_mask
from agir.masks import BACKGROUND, BINARY_CLASS, IGNORE


class Backend:
    """The vegetation-index baseline (no model)."""

    name = "baseline"
    device = "cpu"

    def __init__(self, settings: Mapping, post: Mapping):
        self.settings = dict(settings)
        self.post = dict(post)

    def fingerprint_info(self) -> dict:
        return {"backend": self.name, "baseline": self.settings}

    def predict(self, rgb: np.ndarray, boxes: list, top: Any) -> tuple[np.ndarray, dict]:
        b = self.settings
        plant, thr = plant_mask(
            rgb,
            index=b.get("index", "exg"),
            threshold=b.get("threshold", "otsu"),
            open_radius=int(b.get("open_radius", 1)),
            close_radius=int(b.get("close_radius", 1)),
            max_side=int(b.get("max_side", 2048)),
        )
        return paint_boxes(plant, boxes, top), {"tiles": 0, "threshold": round(thr, 5)}


BaselineBackend = Backend


def _load(path: Path, describe: Mapping | None, class_names: Sequence[str] | None) -> dict:
    """load_checkpoint, describing foreign (old-tool) checkpoints where that loader understands it."""
    from agir.checkpoint import load_checkpoint

    params = inspect.signature(load_checkpoint).parameters
    kwargs: dict[str, Any] = {}
    if "describe" in params and describe is not None:
        kwargs["describe"] = describe
    if "class_names" in params and class_names:
        kwargs["class_names"] = list(class_names)
    return load_checkpoint(path, **kwargs)


def checkpoint_classes(path: str | Path, cfg: Mapping, records: Sequence[Mapping] | None = None) -> list[str]:
    """The class names of the checkpoint at `path`, read as inference reads it (old-tool models described by
    seg_inference.model and named by classes.names or the records)."""
    model = (cfg.get("seg_inference") or {}).get("model") or {}
    return [str(n) for n in _load(Path(path), model, wanted_class_names(cfg, records))["classes"]]


class ModelBackend(Backend):
    name = "model"

    def __init__(self, sc: Mapping, post: Mapping, class_names: Sequence[str] | None = None,
                 uncertain_margin: float | None = None):
        from agir.checkpoint import checkpoint_fingerprint, model_from_checkpoint
        from agir.infer.predictor import TiledPredictor, resolve_device

        model_cfg = sc.get("model") or {}
        path = Path(model_cfg["ckpt_path"])
        ckpt = _load(path, model_cfg, class_names)
        dev = resolve_device(sc.get("device", "auto"))
        self.device = str(dev)
        tile = sc.get("tile") or {}
        ck_in = ckpt.get("input") or {}
        size = tile.get("size") or ck_in.get("tile_size") or 512
        overlap = tile.get("overlap")
        overlap = ck_in.get("overlap") if overlap is None else overlap
        overlap = 0.25 if overlap is None else overlap
        self.classes = list(ckpt["classes"])
        self.uncertain_margin = uncertain_margin
        self.ckpt_info = {
            "path": str(path),
            "fingerprint": checkpoint_fingerprint(path),
            "arch": ckpt["arch"],
            "encoder": ckpt["encoder"],
            "head": ckpt["head"],
            "classes": self.classes,
        }
        self.settings = {"tile_size": int(size), "overlap": float(overlap), "blend": sc.get("blend", "gaussian"),
                         "threshold": float(post.get("threshold", 0.5))}
        self.post = dict(post)
        norm = ckpt["normalization"]
        model = model_from_checkpoint(ckpt, dev)
        del ckpt
        self.predictor = TiledPredictor(
            model,
            head=self.ckpt_info["head"],
            mean=norm["mean"],
            std=norm["std"],
            tile_size=int(size),
            overlap=float(overlap),
            batch_size=sc.get("batch_size", "auto"),
            blend=self.settings["blend"],
            device=dev,
            threshold=self.settings["threshold"],
        )
        # no global torch.set_grad_enabled(False): the predictor runs under inference_mode, and a
        # process-wide switch would leak into whatever runs next (training, tests)
        self._lut: np.ndarray | None = None  # model index -> round index (None: the model's own indices)
        self._known: frozenset[int] = frozenset()

    def use_classes(self, classes: Sequence[Mapping], binary: bool = False) -> None:
        """Label in the round's class indices (`classes`: [{"index", "name"}]), mapping model classes by name.

        Binary mode: every model class is `plant`. Species mode: a model class the round lacks becomes
        background when it is `plant` (a binary model: the records' boxes say which species) and ignore
        otherwise (never someone else's label).
        """
        index = {str(c["name"]).strip().lower(): int(c["index"]) for c in classes}
        lut = np.full(256, IGNORE, dtype=np.uint8)
        lut[BACKGROUND] = BACKGROUND
        known = set()
        for i, name in enumerate(self.classes, start=1):
            name = str(name).strip().lower()
            target = index.get(BINARY_CLASS) if binary else index.get(name)
            if target is None:
                lut[i] = BACKGROUND if name == BINARY_CLASS else IGNORE
            else:
                lut[i] = target
                known.add(target)
        self._known = frozenset(known)
        identity = np.arange(256, dtype=np.uint8)
        n = len(self.classes) + 1
        self._lut = None if np.array_equal(lut[:n], identity[:n]) else lut

    def fingerprint_info(self) -> dict:
        return {"backend": self.name, "model": self.ckpt_info["fingerprint"], **self.settings}

    def predict(self, rgb: np.ndarray, boxes: list, top: Any) -> tuple[np.ndarray, dict]:
        from agir.select.uncertainty import UncertaintyAccumulator

        kw = {} if self.uncertain_margin is None else {"uncertain_margin": float(self.uncertain_margin)}
        stats = UncertaintyAccumulator(self.classes, **kw)
        # records of species the model does not know: their boxes are labelled on the model's plant shape
        unknown = any(cls not in self._known for _, cls in [*boxes, *([top] if top is not None else [])])
        mask, info = self.predictor.predict(rgb, stats=stats, return_shape=unknown)
        if self._lut is not None:
            mask = self._lut[mask]
        if unknown:
            mask = label_unknown_species(mask, info["shape"], boxes, top, self._known)
        # review_regions: contract C3, boxes of the most uncertain regions (coords of this rgb)
        return mask, {"tiles": info["tiles"], "uncertainty": stats.result(), "review_regions": stats.review_regions()}


def wanted_class_names(cfg: Mapping, records: Sequence[Mapping] | None) -> list[str] | None:
    """The class names the run asks for (classes.names, binary mode, or the records' species)."""
    classes = cfg.get("classes") or {}
    if records is not None:
        return recs.class_names_for(records, cfg)
    if classes.get("mode", "species") == "binary":
        return [BINARY_CLASS]
    return [str(n).lower() for n in classes["names"]] if classes.get("names") else None


def make_backend(cfg: Mapping, records: Sequence[Mapping] | None = None) -> Backend:
    sc = cfg["seg_inference"]
    post = sc.get("post_process") or {}
    if (sc.get("model") or {}).get("ckpt_path"):
        select = cfg.get("select") or {}
        return ModelBackend(sc, post, class_names=wanted_class_names(cfg, records),
                            uncertain_margin=select.get("uncertain_margin"))
    return Backend(sc.get("baseline") or {}, post)
