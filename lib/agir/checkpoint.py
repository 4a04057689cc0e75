"""The self-describing segmentation checkpoint (DESIGN.md §5): build, save, load, fingerprint.

`best.pth` is a plain dict that `torch.load(..., weights_only=True)` can read:
`{"format": "agir-seg", "version": 1, "arch", "encoder", "in_channels", "classes", "head",
"normalization": {"mean", "std"}, "input": {"tile_size", "overlap"}, "state_dict", "metrics", "config"}`.
`classes` are the foreground names for mask indices 1..K. Head "softmax" has K+1 outputs with
channel 0 = background; head "sigmoid" has one output (binary, K = 1).

A Lightning `.ckpt` is accepted too when `hyper_parameters["agir"]` holds the same metadata
(everything above except `state_dict`) and the model's weights are under the `model.` prefix.
Nothing is ever unpickled beyond tensors and plain containers: anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from agir.errors import AgirError
from agir.runs import atomic_write, dumps_json

FORMAT = "agir-seg"
VERSION = 1
HEADS = ("softmax", "sigmoid")
META_KEYS = ("arch", "encoder", "in_channels", "classes", "head", "normalization", "input")


def num_outputs_for(classes: Sequence[str], head: str) -> int:
    """Model output channels for K foreground classes: K+1 (softmax, channel 0 = background) or 1."""
    if head == "sigmoid":
        if len(classes) != 1:
            raise AgirError(f"head 'sigmoid' is for one foreground class, got {len(classes)}; use head 'softmax'")
        return 1
    if head != "softmax":
        raise AgirError(f"checkpoint head {head!r} unknown; use one of {', '.join(HEADS)}")
    return len(classes) + 1


def build_model(arch: str, encoder: str, in_channels: int, num_outputs: int) -> torch.nn.Module:
    """Any segmentation_models_pytorch architecture, never downloading weights."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(
            arch, encoder_name=encoder, encoder_weights=None, in_channels=int(in_channels), classes=int(num_outputs)
        )
    except (KeyError, ValueError) as exc:
        raise AgirError(
            f"cannot build model arch={arch!r} encoder={encoder!r}: {exc}; use a segmentation_models_pytorch "
            "architecture/encoder name"
        ) from exc


def _plain(obj: Any) -> Any:
    # metrics/config may hold numpy scalars or paths; weights_only loading accepts only plain types.
    return json.loads(dumps_json(obj if obj is not None else {}, indent=None))


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str,
    encoder: str,
    in_channels: int,
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    tile_size: int | None,
    overlap: float | None,
    metrics: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    head: str = "softmax",
) -> Path:
    """Write a best.pth atomically; returns its path."""
    classes = [str(c) for c in classes]
    if not classes:
        raise AgirError(f"{path}: a checkpoint needs at least one foreground class name")
    num_outputs_for(classes, head)
    if len(mean) != int(in_channels) or len(std) != int(in_channels):
        raise AgirError(f"{path}: normalization mean/std need {in_channels} values (one per input channel)")
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "arch": str(arch),
        "encoder": str(encoder),
        "in_channels": int(in_channels),
        "classes": classes,
        "head": head,
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "input": {
            "tile_size": None if tile_size is None else int(tile_size),
            "overlap": None if overlap is None else float(overlap),
        },
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "metrics": _plain(metrics),
        "config": _plain(config),
    }
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if path.suffix == ".ckpt" and "AttributeDict" in text:
            # Lightning stores hparams as AttributeDict, a plain dict subclass: safe to allow.
            from lightning.fabric.utilities.data import AttributeDict

            with torch.serialization.safe_globals([AttributeDict]):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as exc2:
                    text = str(exc2)
        found = re.search(r"(?:[Uu]nsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)
        if found:
            raise AgirError(
                f"{path}: refused to load, the file would import {found.group(1)} (only tensors and plain data "
                "are allowed); use a best.pth written by agir's train stage"
            ) from exc
        raise AgirError(f"{path}: not a readable PyTorch checkpoint; check seg_inference.model.ckpt_path") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise AgirError(f"{path}: not a readable PyTorch checkpoint ({exc}); check seg_inference.model.ckpt_path") from exc


def _check_meta(meta: Mapping[str, Any], path: Path) -> None:
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise AgirError(f"{path}: agir-seg checkpoint lacks {', '.join(missing)}; re-save it with agir's train stage")
    if int(meta.get("version", VERSION)) > VERSION:
        raise AgirError(f"{path}: checkpoint version {meta['version']} is newer than this agir reads ({VERSION}); upgrade agir")
    if not meta["classes"]:
        raise AgirError(f"{path}: checkpoint lists no classes")
    num_outputs_for(meta["classes"], meta["head"])
    norm = meta["normalization"]
    if not isinstance(norm, Mapping) or len(norm.get("mean", ())) != int(meta["in_channels"]):
        raise AgirError(f"{path}: normalization.mean must have in_channels={meta['in_channels']} values")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a best.pth or a Lightning .ckpt into the best.pth dict form (state_dict keys unprefixed)."""
    path = Path(path)
    if not path.is_file():
        raise AgirError(f"{path}: checkpoint not found; set seg_inference.model.ckpt_path to a best.pth or .ckpt")
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise AgirError(f"{path}: not an agir-seg checkpoint (a {type(obj).__name__}, expected a dict)")
    if obj.get("format") == FORMAT:
        if not isinstance(obj.get("state_dict"), Mapping):
            raise AgirError(f"{path}: agir-seg checkpoint has no state_dict")
        out = dict(obj)
    elif isinstance(obj.get("hyper_parameters"), Mapping) and isinstance(obj["hyper_parameters"].get("agir"), Mapping):
        meta = dict(obj["hyper_parameters"]["agir"])
        if meta.get("format", FORMAT) != FORMAT:
            raise AgirError(f"{path}: hyper_parameters.agir.format is {meta.get('format')!r}, expected {FORMAT!r}")
        sd = obj.get("state_dict") or {}
        state = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        if not state:
            raise AgirError(f"{path}: Lightning checkpoint has no 'model.'-prefixed weights; the LightningModule must hold the network as self.model")
        out = {"format": FORMAT, "version": VERSION, "metrics": {}, "config": {}, **meta, "state_dict": state}
    else:
        raise AgirError(
            f"{path}: not an agir-seg checkpoint (no format='{FORMAT}' and no hyper_parameters['agir']); "
            "use a best.pth from agir's train stage"
        )
    _check_meta(out, path)
    out.setdefault("metrics", {})
    out.setdefault("config", {})
    out["path"] = str(path)
    return out


def model_from_checkpoint(ckpt: Mapping[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the network described by a loaded checkpoint dict, load its weights, eval mode."""
    model = build_model(ckpt["arch"], ckpt["encoder"], ckpt["in_channels"], num_outputs_for(ckpt["classes"], ckpt["head"]))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        where = ckpt.get("path", "checkpoint")
        first = str(exc).strip().splitlines()[0]
        raise AgirError(f"{where}: weights do not fit {ckpt['arch']}/{ckpt['encoder']} ({first}); the file's metadata and weights disagree") from exc
    return model.to(device).eval()


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes (first 16 hex digits): what resume compares to detect a new model."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
