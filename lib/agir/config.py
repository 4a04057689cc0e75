"""Configuration: load, merge, dotted overrides, schema validation with helpful one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from agir.errors import ConfigError
from agir.runs import read_yaml, run_dir, write_text, write_yaml

OVERRIDES_FILE = "overrides.yaml"
# Where `agir-cvtoolkit --config FILE` saves how FILE differs from config/config.yaml, so every entry point
# (plain snakemake, status) sees the round as it was made; replaced whole by the next --config call.
CONFIG_FILE_SETTINGS = "config_file_settings.yaml"


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


_SCHEMAS: dict[tuple[str, int, int], dict] = {}


def load_schema(path: str | os.PathLike | None = None) -> dict:
    """The parsed schema (a fresh copy). Parsing the YAML costs ~0.15 s and a workflow validates every round's
    settings, so it is parsed once per file version (path, mtime, size)."""
    path = Path(path or schema_path()).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SCHEMAS:
        _SCHEMAS[key] = read_yaml(path)
    return copy.deepcopy(_SCHEMAS[key])


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
        elif err.validator == "pattern" and isinstance(err.instance, str):
            sub = schema
            for part in err.absolute_path:
                sub = _child_schema(sub, str(part), schema) or {}
            types = sub.get("type") if isinstance(sub.get("type"), list) else [sub.get("type")]
            other = " or ".join(t for t in types if t and t != "string")
            want = f"{err.validator_value.strip('^$')}" + (f" or an {other}" if other else "")
            lines.append(f"config key {path}: expected {want}, got {_describe(err.instance)}")
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

def yaml_error_text(exc: Exception) -> str:
    """`invalid YAML at line L, column C: <problem>` (1-based, as an editor shows them)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML ({problem})"


def load_config(
    config_file: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    validate: bool = True,
) -> dict:
    path = Path(config_file) if config_file else default_config_path()
    if not path.exists():
        raise ConfigError(f"config file {path} not found; pass --config FILE or run from the workflow folder")
    cfg = read_yaml_mapping(path, f"config file {path}", "fix the YAML there")
    fold_aliases(cfg)
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_override(o) for o in overrides)
    cfg = apply_overrides(cfg, {resolve_alias(k): v for k, v in overrides.items()})
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


def read_yaml_mapping(path: str | os.PathLike, what: str, todo: str) -> dict:
    """A YAML file that must hold a mapping; a problem is one line naming the line/column and what to do."""
    try:
        tree = read_yaml(path) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {yaml_error_text(exc)}; {todo}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{what}: expected a mapping of settings (section: ...), got {type(tree).__name__}; {todo}")
    return tree


def _saved_tree(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return flatten(read_yaml_mapping(path, str(path), "fix it or clear it (agir-cvtoolkit overrides --clear)"))


def saved_overrides(run: str | os.PathLike) -> dict[str, Any]:
    """The run's `overrides.yaml` (-o values of stage commands, or written by hand) as dotted keys."""
    return _saved_tree(Path(run) / OVERRIDES_FILE)


def saved_config_file_settings(run: str | os.PathLike) -> dict[str, Any]:
    """How the `--config FILE` the run was made with differs from config/config.yaml (dotted keys)."""
    return _saved_tree(Path(run) / CONFIG_FILE_SETTINGS)


def persisted_overrides(run: str | os.PathLike) -> dict[str, Any]:
    """Everything saved for a run, as dotted keys: the --config FILE settings, then overrides.yaml on top."""
    return {**saved_config_file_settings(run), **saved_overrides(run)}


def persist_config_file_settings(run: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    path = Path(run) / CONFIG_FILE_SETTINGS
    write_yaml(path, overrides_as_tree(settings))
    return path


def persist_overrides(run: str | os.PathLike, overrides: Mapping[str, Any]) -> Path:
    """Write the run's accumulated dotted overrides as a config tree (`{run}/overrides.yaml`).

    Overrides given to one stage command stay in force for the run, so a later stage run without
    repeating them does not make earlier stages look stale.
    """
    path = Path(run) / OVERRIDES_FILE
    write_yaml(path, overrides_as_tree(overrides))
    return path


def config_file_differences(config_file: str | os.PathLike | None) -> dict[str, Any]:
    """Dotted settings where a `--config FILE` differs from the workflow's config/config.yaml.

    Saved with the run, so plain `snakemake` (which reads config/config.yaml) sees the run's settings.
    """
    if config_file is None or Path(config_file).resolve() == default_config_path().resolve():
        return {}
    if not default_config_path().exists():
        return {}
    base = flatten(load_config(None, validate=False))
    mine = flatten(load_config(config_file, validate=False))
    out = {k: v for k, v in mine.items() if base.get(k, object()) != v}
    # a section the default has but FILE leaves out keeps the default: nothing to save for it
    return {k: v for k, v in out.items() if not k.startswith(("project.", "io.out_root"))}


def resolve_run_config(
    config_file: str | os.PathLike | None,
    overrides: Iterable[str] | Mapping[str, Any],
    replace_prefixes: Iterable[str] = (),
    out_root: str | None = None,
) -> tuple[dict, Path, dict[str, Any]]:
    """The CLI's view: base config + the run's saved settings + new overrides (validated before anything is saved).

    `replace_prefixes`: earlier saved keys under these prefixes are dropped (a stage's new flags replace
    that stage's earlier flags). A value of null clears a saved key (back to the config's value).
    `out_root`: the io.out_root chosen by choose_out_root (the folder's remembered one included); it locates
    the run and is not saved in it.
    Returns (resolved config, run folder, accumulated overrides to save in overrides.yaml).
    """
    import logging

    log = logging.getLogger("agir")
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    new = {resolve_alias(k): v for k, v in items}
    base = load_config(config_file, validate=False)
    if out_root is not None:
        base.setdefault("io", {})["out_root"] = out_root
        new.pop("io.out_root", None)
    first = apply_overrides(base, {k: v for k, v in new.items() if k.startswith("project.") or k == "io.out_root"})
    validate_config(first)
    run = run_dir(first)
    saved = {resolve_alias(k): v for k, v in saved_overrides(run).items()}
    replaced = {k: v for k, v in saved.items() if any(k.startswith(p) for p in replace_prefixes) and k not in new}
    if replaced:
        log.info("earlier settings of this stage replaced: %s",
                 ", ".join(f"{k}={v!r}" for k, v in sorted(replaced.items())))
    # io.out_root is where the run is, never a setting of the run (a copy saved by an older version is ignored)
    accumulated = {k: v for k, v in saved.items() if k not in replaced and k != "io.out_root"}
    base_flat = flatten(base)
    for key, value in new.items():
        if value is None and base_flat.get(key) is None:
            accumulated.pop(key, None)  # null clears: back to the config's value
        else:
            accumulated[key] = value
    file_settings = (config_file_differences(config_file) if config_file is not None
                     else saved_config_file_settings(run))
    resolved = apply_overrides(base, {**file_settings, **accumulated})
    try:
        validate_config(resolved)
    except ConfigError as exc:
        bad = [k for k in new if k in str(exc)]
        where = "" if bad or not saved else f" (saved for this run in {run / OVERRIDES_FILE})"
        raise ConfigError(f"{exc}{where}") from exc
    return resolved, run, accumulated


# ---------------------------------------------------------------- where outputs go (io.out_root)

# A workflow folder's remembered io.out_root: `agir-cvtoolkit ... -o io.out_root=DIR` (or --config FILE with another
# io.out_root) writes it, so later commands, plain `snakemake` and `status` in the same folder find the runs in DIR
# without repeating it. Kept outside the run folder, which cannot be found without it.
OUT_ROOT_POINTER = Path(".agir") / "out_root.yaml"


@dataclasses.dataclass(frozen=True)
class OutRoot:
    """The io.out_root a command uses, and why (`explicit`: typed on this command; it is then remembered)."""

    path: str
    why: str
    explicit: bool = False
    instead_of: str | None = None  # the configured value an explicit choice replaces


def normalize_out_root(value: Any) -> str:
    """One spelling per folder (`./runs/` -> `runs`, `~` expanded), so rule outputs and targets match.

    A relative io.out_root is relative to the workflow folder: the directory the command runs in
    (Snakemake's working directory, or its --directory).
    """
    text = os.path.expanduser(str(value).strip())
    if not text:
        raise ConfigError("config key io.out_root: empty; give a folder, e.g. -o io.out_root=/scratch/$USER/runs")
    return os.path.normpath(text)


def remembered_out_root(workdir: str | os.PathLike) -> dict[str, str] | None:
    """The pointer `{workdir}/.agir/out_root.yaml` ({out_root, instead_of}), or None when there is none."""
    path = Path(workdir) / OUT_ROOT_POINTER
    if not path.exists():
        return None
    todo = "fix it, or delete it to use the config's io.out_root"
    tree = read_yaml_mapping(path, str(path), todo)
    if not tree.get("out_root") or "instead_of" not in tree:
        raise ConfigError(f"{path}: expected out_root: and instead_of: entries; {todo}")
    return {"out_root": str(tree["out_root"]), "instead_of": str(tree["instead_of"])}


def effective_out_root(configured: Any, workdir: str | os.PathLike, explicit: Any = None,
                       instead_of: Any = None) -> OutRoot:
    """io.out_root: `explicit` (typed now) > the folder's remembered choice > the configured value.

    The remembered choice applies while the configured value is still the one it replaced: edit the config's
    io.out_root and the config wins again.
    """
    if explicit is not None:
        value = normalize_out_root(explicit)
        return OutRoot(value, "given on the command line", True,
                       normalize_out_root(configured if instead_of is None else instead_of))
    configured = normalize_out_root(configured)
    pointer = remembered_out_root(workdir)
    if pointer and normalize_out_root(pointer["instead_of"]) == configured:
        return OutRoot(normalize_out_root(pointer["out_root"]), f"remembered in {OUT_ROOT_POINTER}")
    return OutRoot(configured, "config")


def remember_out_root(workdir: str | os.PathLike, root: OutRoot, command: str = "") -> str | None:
    """Save an explicit choice as the folder's pointer (choosing the configured value again removes it).

    Returns one line saying what changed, or None when nothing did.
    """
    if not root.explicit or root.instead_of is None:
        return None
    path = Path(workdir) / OUT_ROOT_POINTER
    before = remembered_out_root(workdir) if path.exists() else None
    if root.path == root.instead_of:
        if before is None:
            return None
        path.unlink(missing_ok=True)
        return f"io.out_root back to the config's {root.path} ({OUT_ROOT_POINTER} removed)"
    if before == {"out_root": root.path, "instead_of": root.instead_of}:
        return None
    text = (
        "# The io.out_root chosen for this workflow folder (written by agir-cvtoolkit). Used instead of the\n"
        "# config's value `instead_of` while the config still says that; relative paths are relative to this\n"
        "# folder. Change it with -o io.out_root=DIR; -o io.out_root=null or deleting this file forgets it.\n"
    )
    text += yaml.safe_dump({"out_root": root.path, "instead_of": root.instead_of, "chosen_by": command or None},
                           sort_keys=False, width=10**9)
    write_text(path, text)
    return (f"io.out_root={root.path} remembered for this folder ({OUT_ROOT_POINTER}): later commands, "
            "status and plain snakemake here use it")


def choose_out_root(config_file: str | os.PathLike | None, overrides: Iterable[str] | Mapping[str, Any],
                    workdir: str | os.PathLike | None = None) -> OutRoot:
    """The io.out_root of a CLI command: -o io.out_root (null: the config's), a --config FILE whose io.out_root
    differs from config/config.yaml's, the folder's remembered choice, or the config's value."""
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    typed = dict(items)
    workdir = Path(workdir or Path.cwd())
    default = (read_yaml_mapping(default_config_path(), str(default_config_path()), "fix the YAML there")
               if default_config_path().exists() else {})
    default_root = get_dotted(default, "io.out_root") or "outputs/runs"
    mine = default_root
    if config_file is not None:
        tree = read_yaml_mapping(Path(config_file), f"config file {config_file}", "fix the YAML there") \
            if Path(config_file).exists() else {}
        mine = get_dotted(tree, "io.out_root") or default_root
    if "io.out_root" in typed:
        value = typed["io.out_root"]
        return effective_out_root(mine, workdir, explicit=mine if value is None else value, instead_of=mine)
    found = effective_out_root(mine, workdir)
    if found.why == "config" and normalize_out_root(mine) != normalize_out_root(default_root):
        # FILE's own io.out_root: remembered, so later commands without --config FILE find the runs
        return OutRoot(normalize_out_root(mine), f"io.out_root of {config_file}", True, normalize_out_root(default_root))
    return found


# Set by agir-cvtoolkit for the Snakemake it starts (an environment variable: a user's own `-- --config ...`
# would replace a --config the CLI added, and Snakemake's jobs inherit it).
OUT_ROOT_ENV = "AGIR_RUN_OUT_ROOT"


def workflow_out_root(config: Mapping, command_line: Mapping, workdir: str | os.PathLike,
                      environ: Mapping[str, str] | None = None) -> OutRoot:
    """The Snakefile's io.out_root: `--config io={out_root: ...}`, else the one agir-cvtoolkit chose, else the
    folder's remembered choice while the config files still say what it replaced, else the config files' value."""
    typed = get_dotted(command_line, "io.out_root")
    if typed is not None:
        return OutRoot(normalize_out_root(typed), "--config")
    chosen = (os.environ if environ is None else environ).get(OUT_ROOT_ENV)
    if chosen:
        return OutRoot(normalize_out_root(chosen), "agir-cvtoolkit")
    return effective_out_root(get_dotted(config, "io.out_root") or "outputs/runs", workdir)


# ---------------------------------------------------------------- the old tool's keys

# AgIR-CVToolkit's documented keys -> ours. Each use is reported once as an INFO line naming our key.
ALIASES: dict[str, str] = {
    "seg_inference.output.save_images": "seg_inference.overlays",
    "cvat_upload.project_id": "cvat.project_id",
    "train.max_epochs": "train.epochs",
    "train.model.encoder_name": "train.encoder",
    "train.model.arch": "train.arch",
}

_reported_aliases: set[str] = set()


def resolve_alias(key: str) -> str:
    """Our key for an old tool's key (one INFO line the first time), else the key itself."""
    ours = ALIASES.get(key)
    if ours is None:
        return key
    if key not in _reported_aliases:
        _reported_aliases.add(key)
        import logging

        logging.getLogger("agir").info("%s is AgIR-CVToolkit's name for %s; using %s", key, ours, ours)
    return ours


def fold_aliases(cfg: MutableMapping) -> None:
    """Move old-tool keys in a config tree to our keys, in place (ours wins when both are set)."""
    for old, ours in ALIASES.items():
        parts = old.split(".")
        node: Any = cfg
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, Mapping) else None
            if node is None:
                break
        if not isinstance(node, MutableMapping) or parts[-1] not in node:
            continue
        value = node.pop(parts[-1])
        # drop sections the alias emptied (train.model: {} would be an unknown key)
        parent: Any = cfg
        chain = []
        for p in parts[:-1]:
            chain.append((parent, p))
            parent = parent[p]
        for holder, p in reversed(chain):
            if isinstance(holder.get(p), Mapping) and not holder[p]:
                del holder[p]
        resolve_alias(old)
        set_dotted(cfg, ours, value)


# ---------------------------------------------------------------- strings from `snakemake --config`

def coerce_to_schema(cfg: MutableMapping, schema: Mapping, root: Mapping | None = None) -> None:
    """`snakemake --config "query={limit: 20}"` gives '20' as text: turn scalar strings into the schema's type."""
    root = root or schema
    for key in list(cfg):
        sub = _child_schema(schema, str(key), root)
        if sub is None:
            continue
        value = cfg[key]
        if isinstance(value, MutableMapping):
            coerce_to_schema(value, sub, root)
        elif isinstance(value, str):
            cfg[key] = _coerce_scalar(value, sub)


def _coerce_scalar(text: str, schema: Mapping) -> Any:
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    if not types and "enum" in schema:
        return text
    if "string" in types:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    want = {"integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    if value is None and "null" in types:
        return None
    for t in types:
        kind = want.get(t)
        if kind is not None and isinstance(value, kind) and not (t in ("integer", "number") and isinstance(value, bool)):
            return value
    return text


# ---------------------------------------------------------------- one round's settings

def round_config(base: Mapping, out_root: str | os.PathLike | None, project: str, round_name: str,
                 command_line: Mapping | None = None, saved: Mapping[str, Any] | None = None) -> dict:
    """The settings of one round: project config + what was saved for that run + `snakemake --config` values.

    The same for every entry point (CLI, plain Snakemake with any round's output as target, status).
    The folder decides the round: project.name/subname are the folder's, whatever was saved.
    """
    cfg = copy.deepcopy(dict(base))
    cfg.setdefault("project", {})
    cfg.setdefault("io", {})
    if out_root is not None:
        cfg["io"]["out_root"] = str(out_root)
    cfg["project"]["name"], cfg["project"]["subname"] = str(project), str(round_name)
    if saved is None:
        saved = persisted_overrides(run_dir(cfg))
    cfg = apply_overrides(cfg, {resolve_alias(k): v for k, v in saved.items()})
    if command_line:
        cfg = deep_merge(cfg, command_line)
    cfg["io"]["out_root"] = str(out_root if out_root is not None else base["io"]["out_root"])
    cfg["project"]["name"], cfg["project"]["subname"] = str(project), str(round_name)
    try:
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"round {project}/{round_name} ({run_dir(cfg) / OVERRIDES_FILE}): {exc}") from exc
    return cfg


def list_rounds(out_root: str | os.PathLike, project: str | None = None) -> list[Path]:
    """Every run folder `{out_root}/{project}/{round}` (rounds sorted by name), optionally one project's."""
    root = Path(out_root)
    if not root.is_dir():
        return []
    projects = [root / project] if project else sorted(p for p in root.iterdir() if p.is_dir())
    out = []
    for proj in projects:
        if proj.is_dir():
            out.extend(sorted(r for r in proj.iterdir() if r.is_dir() and not r.name.startswith(".")))
    return out
