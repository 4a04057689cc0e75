"""Configuration: load, merge, dotted overrides, schema validation with helpful one-line errors."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from agir.errors import ConfigError
from agir.runs import read_yaml, run_dir, write_yaml

OVERRIDES_FILE = "overrides.yaml"


def workflow_root() -> Path:
    """The folder holding the Snakefile: $AGIR_WORKFLOW_ROOT, the source checkout, or the cwd."""
    env = os.environ.get("AGIR_WORKFLOW_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[2]
    if (here / "Snakefile").exists():
        return here
    return Path.cwd()


def default_config_path() -> Path:
    return workflow_root() / "config" / "config.yaml"


def schema_path() -> Path:
    return workflow_root() / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path: str | os.PathLike | None = None) -> dict:
    return read_yaml(path or schema_path())


# ---------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value, e.g. seg_inference.tile.size=256")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key part; write it as dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML (e.g. "a: b: c"): keep the text as given
    return key, value


def set_dotted(cfg: MutableMapping, key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, MutableMapping):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def get_dotted(cfg: Mapping, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def deep_merge(base: Mapping, update: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: Mapping, overrides: Mapping[str, Any] | Iterable[str]) -> dict:
    """Return a copy of cfg with dotted overrides (a mapping or `key=value` strings) applied."""
    out = copy.deepcopy(dict(cfg))
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        set_dotted(out, key, value)
    return out


def expand_dotted_keys(cfg: MutableMapping) -> None:
    """`snakemake --config a.b=1` sets a top-level key "a.b"; fold such keys into the tree in place."""
    for key in [k for k in cfg if isinstance(k, str) and "." in k]:
        value = cfg.pop(key)
        set_dotted(cfg, key, value)


# ---------------------------------------------------------------- validation

def _resolve(schema: Mapping, root: Mapping) -> Mapping:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"schema: only local $ref supported, got {ref}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _child_schema(schema: Mapping, key: str, root: Mapping) -> Mapping | None:
    schema = _resolve(schema, root)
    props = schema.get("properties", {})
    if key in props:
        return _resolve(props[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        return _resolve(extra, root)
    return None


def all_keys(schema: Mapping, root: Mapping | None = None, prefix: str = "") -> list[str]:
    """Every dotted key the schema names (for suggestions and the configuration reference)."""
    root = root or schema
    schema = _resolve(schema, root)
    out = []
    for k, sub in schema.get("properties", {}).items():
        dotted = f"{prefix}{k}"
        out.append(dotted)
        out.extend(all_keys(sub, root, dotted + "."))
    return out


def fill_defaults(cfg: MutableMapping, schema: Mapping, root: Mapping | None = None) -> None:
    """Insert schema defaults for missing keys, creating missing sections, in place."""
    root = root or schema
    schema = _resolve(schema, root)
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in cfg:
            if "default" in sub:
                cfg[key] = copy.deepcopy(sub["default"])
            elif sub.get("type") == "object" and "properties" in sub:
                cfg[key] = {}
            elif "null" in (sub.get("type") if isinstance(sub.get("type"), list) else [sub.get("type")]):
                cfg[key] = None
        if isinstance(cfg.get(key), MutableMapping) and "properties" in sub:
            fill_defaults(cfg[key], sub, root)


def _suggest(bad: str, candidates: Iterable[str]) -> str:
    best = difflib.get_close_matches(bad, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {best[0]}?" if best else ""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_errors(cfg: Mapping, schema: Mapping) -> list[str]:
    """One readable line per problem, each naming the dotted key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    keys = all_keys(schema)
    lines = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
            sub = schema
            for p in err.absolute_path:
                sub = _child_schema(sub, str(p), schema) or {}
            allowed = set(_resolve(sub, schema).get("properties", {}))
            for extra in sorted(set(err.instance) - allowed):
                dotted = f"{path}.{extra}" if path else str(extra)
                lines.append(f"unknown config key {dotted}{_suggest(dotted, keys)}")
        elif err.validator == "type":
            want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
            lines.append(f"config key {path or '<root>'}: expected {want}, got {_describe(err.instance)}")
        elif err.validator == "enum":
            lines.append(f"config key {path}: {_describe(err.instance)} is not one of {err.validator_value}")
        else:
            lines.append(f"config key {path or '<root>'}: {err.message}")
    return lines


def validate_config(cfg: MutableMapping, schema: Mapping | None = None) -> MutableMapping:
    """Fold dotted keys, check against the schema, fill defaults — in place. Raises ConfigError."""
    schema = schema if schema is not None else load_schema()
    expand_dotted_keys(cfg)
    errors = config_errors(cfg, schema)
    if errors:
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more)
    fill_defaults(cfg, schema)
    _check_cross_field(cfg)
    return cfg


def _check_cross_field(cfg: Mapping) -> None:
    split = get_dotted(cfg, "preprocess.split") or {}
    if split:
        total = sum(float(split.get(k, 0)) for k in ("train", "val", "test"))
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"config key preprocess.split: train+val+test = {total:g}, must be 1.0 (e.g. 0.7/0.15/0.15)"
            )
        if float(split.get("train", 0)) <= 0:
            raise ConfigError("config key preprocess.split.train: must be > 0")
    name = get_dotted(cfg, "query.db")
    if name is not None and cfg.get("db") and name not in cfg["db"]:
        raise ConfigError(f"config key query.db: {name!r} is not a db entry{_suggest(name, cfg['db'])}")


# ---------------------------------------------------------------- loading

def load_config(
    config_file: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    validate: bool = True,
) -> dict:
    path = Path(config_file) if config_file else default_config_path()
    if not path.exists():
        raise ConfigError(f"config file {path} not found; pass --config FILE or run from the workflow folder")
    try:
        cfg = read_yaml(path) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    cfg = apply_overrides(cfg, overrides)
    if validate:
        validate_config(cfg)
    return cfg


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def overrides_as_tree(overrides: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for k, v in overrides.items():
        set_dotted(tree, k, v)
    return tree


def persisted_overrides(run: str | os.PathLike) -> dict[str, Any]:
    """The run's overrides.yaml (a config tree Snakemake can read with --configfile) as dotted keys."""
    p = Path(run) / OVERRIDES_FILE
    return flatten(read_yaml(p) or {}) if p.exists() else {}


def persist_overrides(run: str | os.PathLike, overrides: Mapping[str, Any]) -> Path:
    """Write the run's accumulated dotted overrides as a config tree (`{run}/overrides.yaml`).

    Overrides given to one stage command stay in force for the run, so a later stage run without
    repeating them does not make earlier stages look stale.
    """
    path = Path(run) / OVERRIDES_FILE
    write_yaml(path, overrides_as_tree(overrides))
    return path


def resolve_run_config(
    config_file: str | os.PathLike | None, overrides: Iterable[str]
) -> tuple[dict, Path, dict[str, Any]]:
    """The CLI's view: base config + the run's persisted overrides + new ones.

    Returns (resolved config, run folder, accumulated overrides to persist).
    """
    new = dict(parse_override(o) for o in overrides)
    base = load_config(config_file, validate=False)
    first = apply_overrides(base, new)
    validate_config(first)
    run = run_dir(first)
    accumulated = {**persisted_overrides(run), **new}
    resolved = apply_overrides(base, accumulated)
    validate_config(resolved)
    return resolved, run, accumulated
