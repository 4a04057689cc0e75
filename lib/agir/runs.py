"""Run folders, atomic writes and JSON/JSONL/YAML helpers — the one place files are written.

Every stage writes through these helpers so that a killed run never leaves a file that looks
finished: content goes to a temporary file in the same folder, is flushed to disk, then renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

SECRET_KEYS = {"password", "access_token", "token", "api_key", "secret"}


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in metrics; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_json_default, ensure_ascii=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, dumps_json(obj, indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_json_or(path: str | os.PathLike, default: Any = None) -> Any:
    """Parsed JSON, or `default` when the file is missing or unreadable (for displays and optional inputs)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return default


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    with atomic_write(path, "w") as fh:
        for rec in records:
            fh.write(dumps_json(rec, indent=None) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike, missing_ok: bool = False) -> list[dict]:
    """Read a JSONL file; a torn last line (from a killed append) is ignored."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


JOURNAL_SYNC_SECONDS = 1.0
_last_sync: dict[str, float] = {}


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any], sync_seconds: float = JOURNAL_SYNC_SECONDS) -> None:
    """Append one line for a progress journal that a rerun resumes from.

    The line reaches the OS at once (a killed process loses nothing); it is fsynced at most every `sync_seconds`
    per file (0: every line), since an fsync per line costs more than the work of a small record. A journal line
    follows the files it describes (written atomically, already on disk), so an OS crash loses at most the last
    second of lines, and a rerun redoes those items.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps_json(record, indent=None) + "\n")
        fh.flush()
        now = time.monotonic()
        if now - _last_sync.get(str(path), -math.inf) >= sync_seconds:
            os.fsync(fh.fileno())
            _last_sync[str(path)] = now


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def redact(obj: Any) -> Any:
    """A copy of a config tree with secret values removed (keys kept so readers see they were set)."""
    if isinstance(obj, Mapping):
        return {k: ("***" if str(k).lower() in SECRET_KEYS and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def run_dir(config: Mapping[str, Any]) -> Path:
    """`{io.out_root}/{project.name}/{project.subname}` — one annotation round."""
    return Path(config["io"]["out_root"]) / str(config["project"]["name"]) / str(config["project"]["subname"])


def project_dir(config: Mapping[str, Any]) -> Path:
    return Path(config["io"]["out_root"]) / str(config["project"]["name"])


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (parallel rules update the same cfg.yaml)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record_stage_config(run: str | os.PathLike, config: Mapping[str, Any], sections: Iterable[str]) -> Path:
    """Merge the given config sections into the run's `cfg.yaml` (resolved config of every stage run so far).

    Secrets are redacted. Shared sections (project, io, db, classes) are always recorded.
    """
    run = Path(run)
    target = run / "cfg.yaml"
    with file_lock(run / ".cfg.lock"):
        current = read_yaml(target) if target.exists() else {}
        current = current or {}
        for key in ("project", "io", "db", "classes", *sections):
            if key in config:
                current[key] = redact(config[key])
        write_yaml(target, current)
    return target
