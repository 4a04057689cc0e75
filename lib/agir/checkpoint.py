"""The self-describing segmentation checkpoint (DESIGN.md §5): build, save, load, fingerprint.

`best.pth` is a plain dict that `torch.load(..., weights_only=True)` can read:
`{"format": "agir-seg", "version": 1, "arch", "encoder", "in_channels", "classes", "head",
"normalization": {"mean", "std"}, "input": {"tile_size", "overlap"}, "state_dict", "metrics", "config"}`.
`classes` are the foreground names for mask indices 1..K. Head "softmax" has K+1 outputs with
channel 0 = background; head "sigmoid" has one output (binary, K = 1).

A Lightning `.ckpt` is accepted too when `hyper_parameters["agir"]` holds the same metadata
(everything above except `state_dict`) and the model's weights are under the `model.` prefix.

Models trained with the old tool (bring your own model): a Lightning `.ckpt` whose `state_dict`
keys start with `model.` (other modules' keys, e.g. a loss's weights, are dropped), or a bare
`state_dict` `.pth`, loads when config describes it (`seg_inference.model.arch`, `encoder_name`,
`num_classes` = model outputs, `in_channels`, `normalization`); the class names come from the
caller (`classes.names` or the query). Hyper-parameters the old `.ckpt` saved under the same names
fill what config leaves null. One output means a binary sigmoid model (class "plant").

Nothing is ever unpickled beyond tensors, plain containers and Lightning's AttributeDict (a plain
dict subclass its hparams use): anything else is refused, so no code runs while loading.
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
from agir.masks import BINARY_CLASS
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


# Lightning's hparams container (a plain dict subclass, under its old and new module names) is read
# as a plain dict: allow-listed by name, so nothing of Lightning is imported or run while loading.
SAFE_AS_DICT = [
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "lightning.pytorch.utilities.parsing.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
]


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(SAFE_AS_DICT):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:[Uu]nsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
        if found:
            raise AgirError(
                f"{path}: refused to load, the file would import {found.group(1)} (only tensors and plain data "
                "are allowed); use a best.pth from agir's train stage or re-save the weights as a plain state_dict"
            ) from exc
        raise AgirError(f"{path}: not a readable PyTorch checkpoint; check seg_inference.model.ckpt_path") from exc
    except Exception as exc:  # a truncated or foreign file fails in many ways (struct, zip, EOF, ...)
        raise AgirError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}); check "
                        "seg_inference.model.ckpt_path") from exc


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


# Normalisations the old tool could name instead of listing mean/std (0-1 scale).
NAMED_NORMALIZATIONS = {
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "none": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},  # x / 255 only
}
DESCRIBE_KEYS = ("arch", "encoder_name", "num_classes", "in_channels", "normalization")
# old-tool hyper-parameter names that mean the same as a describe key
HPARAM_ALIASES = {"arch": ("arch",), "encoder_name": ("encoder_name", "encoder"),
                  "num_classes": ("num_classes", "classes", "out_classes"), "in_channels": ("in_channels",),
                  "normalization": ("normalization",)}
STRIP_PREFIXES = ("model.", "module.")


def _describe_from(describe: Mapping[str, Any] | None, hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Config's description over the old checkpoint's own hyper-parameters (config wins where set)."""
    out: dict[str, Any] = {}
    for key, aliases in HPARAM_ALIASES.items():
        for alias in aliases:
            value = (hparams or {}).get(alias)
            if value is not None and not (alias == "classes" and not isinstance(value, int)):
                out[key] = value
                break
    for key in DESCRIBE_KEYS:
        if describe is not None and describe.get(key) is not None:
            out[key] = describe[key]
    return out


def _normalization(value: Any, in_channels: int, path: Path) -> dict[str, list[float]]:
    where = f"{path}: seg_inference.model.normalization"
    if value is None:
        value = "imagenet"  # what smp encoders (and the old tool's pretrained models) expect
    if isinstance(value, str):
        named = NAMED_NORMALIZATIONS.get(value.strip().lower())
        if named is None:
            raise AgirError(f"{where}={value!r} unknown; use {' or '.join(NAMED_NORMALIZATIONS)} or {{mean: [...], std: [...]}}")
        value = named
    if not isinstance(value, Mapping) or "mean" not in value or "std" not in value:
        raise AgirError(f"{where} must be a name ({', '.join(NAMED_NORMALIZATIONS)}) or {{mean: [...], std: [...]}}")
    mean, std = [float(v) for v in value["mean"]], [float(v) for v in value["std"]]
    if len(mean) != in_channels or len(std) != in_channels or any(s <= 0 for s in std):
        raise AgirError(f"{where}: need {in_channels} mean and {in_channels} positive std values (one per channel)")
    return {"mean": mean, "std": std}


def _tensor_state(obj: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The weights in a loaded file: its `state_dict` (Lightning) or the file itself (bare state_dict)."""
    for cand in (obj.get("state_dict"), obj):
        if isinstance(cand, Mapping) and cand and all(isinstance(v, torch.Tensor) for v in cand.values()):
            return dict(cand)
    return None


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the network's weights without its attribute prefix (`model.` for the old LightningModule)."""
    for prefix in STRIP_PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            return inner  # other attributes' tensors (a loss's class weights, metrics) are not the network
    return dict(state)


def _foreign(obj: Mapping[str, Any], path: Path, describe: Mapping[str, Any] | None,
             class_names: Sequence[str] | None) -> dict:
    """An old-tool Lightning .ckpt or bare state_dict, described by config -> the agir-seg dict."""
    state = _tensor_state(obj)
    hparams = obj.get("hyper_parameters") if isinstance(obj.get("hyper_parameters"), Mapping) else None
    desc = _describe_from(describe, hparams)
    if state is None:
        raise AgirError(
            f"{path}: not an agir-seg checkpoint, a Lightning .ckpt or a state_dict (no tensors under 'state_dict' "
            "or at the top level); use a best.pth from agir's train stage or the old tool's .ckpt/.pth"
        )
    missing = [k for k in ("arch", "encoder_name") if not desc.get(k)]
    if missing:
        raise AgirError(
            f"{path}: a checkpoint without agir metadata needs seg_inference.model.{' and '.join(missing)} "
            "(with num_classes, in_channels, normalization) to describe the network"
        )
    state = _strip_prefix(state)
    in_channels = int(desc.get("in_channels") or 3)
    num_out = desc.get("num_classes")
    if num_out is None:
        head_w = state.get("segmentation_head.0.weight")
        if head_w is None:
            raise AgirError(f"{path}: set seg_inference.model.num_classes (the model's output channels)")
        num_out = int(head_w.shape[0])  # smp's segmentation head says how many outputs it has
    num_out = int(num_out)
    if num_out < 1:
        raise AgirError(f"{path}: seg_inference.model.num_classes={num_out} must be >= 1")
    names = [str(c) for c in (class_names or [])]
    if num_out == 1:
        head = "sigmoid"
        if len(names) > 1:
            raise AgirError(
                f"{path}: num_classes=1 is a binary (sigmoid) model but {len(names)} class names were given "
                f"({', '.join(names[:4])}); use classes.mode binary or a multi-class checkpoint"
            )
        classes = names or [BINARY_CLASS]
    else:
        head = "softmax"
        if names and len(names) == num_out and names[0].lower() in ("background", "bg", "soil"):
            names = names[1:]
        if not names:
            raise AgirError(
                f"{path}: a {num_out}-output model needs {num_out - 1} class names (channel 0 = background); "
                "set classes.names in config"
            )
        if len(names) != num_out - 1:
            raise AgirError(
                f"{path}: num_classes={num_out} (background + {num_out - 1}) does not match {len(names)} class "
                f"names ({', '.join(names[:6])}); fix seg_inference.model.num_classes or classes.names"
            )
        classes = names
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": str(desc["arch"]),
        "encoder": str(desc["encoder_name"]),
        "in_channels": in_channels,
        "classes": classes,
        "head": head,
        "normalization": _normalization(desc.get("normalization"), in_channels, path),
        "input": {"tile_size": None, "overlap": None},
        "state_dict": state,
        "metrics": {},
        "config": {"source": "described", "describe": _plain({k: desc.get(k) for k in DESCRIBE_KEYS})},
    }


def _self_described(obj: Mapping[str, Any]) -> bool:
    """An old-tool .ckpt whose hyper-parameters name the architecture describes itself."""
    hparams = obj.get("hyper_parameters")
    return isinstance(hparams, Mapping) and bool(_describe_from(None, hparams).get("arch")) and (
        _tensor_state(obj) is not None
    )


def _is_described(describe: Mapping[str, Any] | None) -> bool:
    return describe is not None and any(describe.get(k) is not None for k in DESCRIBE_KEYS)


def load_checkpoint(
    path: str | os.PathLike,
    describe: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Read a checkpoint into the best.pth dict form (state_dict keys unprefixed).

    agir's own best.pth and Lightning .ckpt carry their description; any other `.ckpt`/`.pth`
    (the old tool's) needs `describe` (seg_inference.model: arch, encoder_name, num_classes,
    in_channels, normalization) and `class_names` for multi-class models.
    """
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
    elif _is_described(describe) or _self_described(obj):
        out = _foreign(obj, path, describe, class_names)
    else:
        raise AgirError(
            f"{path}: not an agir-seg checkpoint (no format='{FORMAT}' and no hyper_parameters['agir']); use a "
            "best.pth from agir's train stage, or describe an old-tool model with seg_inference.model.arch, "
            "encoder_name, num_classes, in_channels and normalization"
        )
    _check_meta(out, path)
    out.setdefault("metrics", {})
    out.setdefault("config", {})
    out["path"] = str(path)
    return out


def _few(keys: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(list(keys)[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def state_dict_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """One line naming a few missing/unexpected keys and shape mismatches, or None when the weights fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (file vs model): {_few(shapes, 2)}")
    return "; ".join(parts) or None


def model_from_checkpoint(ckpt: Mapping[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the network described by a loaded checkpoint dict, load its weights, eval mode."""
    model = build_model(ckpt["arch"], ckpt["encoder"], ckpt["in_channels"], num_outputs_for(ckpt["classes"], ckpt["head"]))
    where = ckpt.get("path", "checkpoint")
    problem = state_dict_mismatch(model, ckpt["state_dict"])
    if problem:
        raise AgirError(
            f"{where}: weights do not fit {ckpt['arch']}/{ckpt['encoder']} with {num_outputs_for(ckpt['classes'], ckpt['head'])} "
            f"output(s): {problem}; check seg_inference.model.arch/encoder_name/num_classes/in_channels"
        )
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
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


def _key(name: Any) -> str:
    return str(name).strip().lower()


def _source_name(source: Mapping[str, Any]) -> str:
    """A short readable name: `round_001/model/best.pth` rather than the whole absolute path."""
    if source.get("name"):
        return str(source["name"])
    path = source.get("path")
    return "/".join(Path(str(path)).parts[-3:]) if path else "checkpoint"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _model_description(model: torch.nn.Module) -> dict[str, Any]:
    """arch/encoder/in_channels of an smp model as far as it tells (smp names a model `<prefix>-<encoder>`)."""
    out: dict[str, Any] = {"arch": type(model).__name__}
    smp_name = getattr(model, "name", None)
    if isinstance(smp_name, str) and "-" in smp_name:
        out["encoder"] = smp_name.split("-", 1)[1]
    in_ch = getattr(getattr(model, "encoder", None), "_in_channels", None)
    if in_ch is not None:
        out["in_channels"] = int(in_ch)
    return out


def _architecture_mismatch(model: torch.nn.Module, source: Mapping[str, Any]) -> str | None:
    ours = _model_description(model)
    for key in ("arch", "encoder", "in_channels"):
        theirs = source.get(key)
        if key in ours and theirs is not None and _key(theirs) != _key(ours[key]):
            return f"is {key} {theirs}, this model {ours[key]}"
    return None


def _head_rows(head: str, classes: Sequence[str]) -> list[str | None]:
    """What each output row of a head means: None = background (softmax row 0), else a class key."""
    keys = [_key(c) for c in classes]
    return keys if head == "sigmoid" else [None, *keys]


def transfer_weights(
    model: torch.nn.Module, source: Mapping[str, Any], classes: Sequence[str], head: str = "softmax"
) -> str:
    """Initialise `model` (built for `classes` with `head`) from a loaded checkpoint dict `source`.

    Every tensor whose name and shape fit is copied; the segmentation head's output rows are matched
    by class name (softmax row 0 = background), so old classes keep their weights whatever their new
    index, and new classes keep the model's fresh initialisation. A binary sigmoid source (one logit z
    for its one class) becomes the softmax rows background = 0, class = z: softmax([0, z]) = sigmoid(z),
    so the widened model predicts exactly what the old one did; the reverse (a softmax source with one
    class into a sigmoid model) uses z = class row - background row. Anything else that does not fit
    (arch, encoder, in_channels, another head, other shapes) leaves `model` untouched.
    Returns one line: "initialised from <name>: kept ..., new head rows for ..." or "from scratch: <why>".
    """
    name = _source_name(source)
    classes = [str(c) for c in classes]
    n_out = num_outputs_for(classes, head)
    src_classes = [str(c) for c in source.get("classes") or []]
    src_head = str(source.get("head", "softmax"))
    why = _architecture_mismatch(model, source)
    if why:
        return f"from scratch: {name} {why}"
    if src_head not in HEADS or not src_classes:
        return f"from scratch: {name} has no usable head/classes description"
    # a sigmoid head is always one class; converting between heads is exact only for one class
    if head != src_head and len(src_classes) != 1 or src_head == "sigmoid" and len(src_classes) != 1:
        return f"from scratch: {name} has a {src_head} head over {len(src_classes)} classes, this model a {head} head"
    src_out = num_outputs_for(src_classes, src_head)
    expected = model.state_dict()
    outs = {int(v.shape[0]) for k, v in expected.items() if k.startswith("segmentation_head.") and v.ndim >= 1}
    if outs and n_out not in outs:
        raise AgirError(f"transfer_weights: the model has {sorted(outs)} outputs but {len(classes)} classes with head "
                        f"{head!r} need {n_out}; build the model with num_outputs_for(classes, head)")
    state = source.get("state_dict") or {}
    head_keys = [
        k for k, v in expected.items()
        if k.startswith("segmentation_head.") and v.ndim >= 1 and v.shape[0] == n_out
        and k in state and state[k].ndim == v.ndim and state[k].shape[0] == src_out
        and tuple(state[k].shape[1:]) == tuple(v.shape[1:])
    ]
    if not head_keys:
        return f"from scratch: {name} has no segmentation head with {src_out} output(s) that fits this model"
    body = {k: v for k, v in state.items() if k not in head_keys}
    problem = state_dict_mismatch(_Shapes({k: v for k, v in expected.items() if k not in head_keys}), body)
    if problem:
        return f"from scratch: {name} does not fit this model ({problem})"

    new_state = {k: v.to(dtype=expected[k].dtype) for k, v in body.items()}
    src_rows = _head_rows(src_head, src_classes)
    dst_rows = _head_rows(head, classes)
    kept: list[str] = []
    fresh: list[str] = []
    for k in head_keys:
        old, mine = state[k].to(dtype=expected[k].dtype), expected[k].clone()
        if src_head == head:
            rows = {r: old[i] for i, r in enumerate(src_rows)}
        elif src_head == "sigmoid":  # one logit z -> softmax rows (background 0, class z): same probabilities
            rows = {None: torch.zeros_like(old[0]), src_rows[0]: old[0]}
        else:  # softmax with one class -> one logit: class row - background row
            rows = {src_rows[1]: old[1] - old[0]}
        for i, r in enumerate(dst_rows):
            if r in rows:
                mine[i] = rows[r]
        new_state[k] = mine
    for c in classes:
        (kept if _key(c) in src_rows else fresh).append(c)
    dropped = [c for c in src_classes if _key(c) not in {_key(x) for x in classes}]
    model.load_state_dict(new_state, strict=True)
    line = (f"initialised from {name}: kept {_plural(len(kept), 'class')}" + (f" ({', '.join(kept)})" if kept else "")
            + f", new head rows for {len(fresh)}" + (f" ({', '.join(fresh)})" if fresh else ""))
    if src_head != head:
        line += f" ({src_head} head converted to {head})"
    if dropped:
        line += f"; dropped {len(dropped)} ({', '.join(dropped)})"
    return line


class _Shapes:
    """Just enough of a module for state_dict_mismatch: a fixed state_dict."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self._state = state

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return self._state
