"""Helpers the Snakefile's rule files use (kept here so they are unit-tested, not buried in .smk)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agir.runs import project_dir

# The config sections each stage reads. A change in one of them reruns that stage (via params:).
# Every stage also gets project.name/subname and io.out_root (to find its run folder); stages that
# open image files get the whole `io` section (storage roots).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "query": ("db", "query"),
    "infer": ("io", "db", "query", "classes", "seg_inference"),
    "score": ("io", "db", "query", "classes", "seg_inference"),
    "select": ("io", "db", "query", "classes", "preprocess", "select"),
    "prelabeler": ("io", "db", "query", "classes", "seg_inference", "preprocess"),
    "evaluate": ("io", "db", "query", "classes", "seg_inference"),
    "upload": ("cvat", "cvat_upload", "select"),
    "download": ("cvat", "cvat_download"),
    "preprocess": ("io", "db", "query", "classes", "preprocess", "select"),
    "train": ("train",),
    "report": ("project",),
}

# Stages that read only some keys of a section: a change of the others must not rerun them
# (choosing another select.n reruns the selection, not the inference).
STAGE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "infer": {"select": ("uncertain_margin",)},
    "score": {"select": ("uncertain_margin", "score_max_side")},
    # preprocess and upload follow the selection's file; of the settings only whether one runs
    "preprocess": {"select": ("strategy",)},
    "upload": {"select": ("strategy",)},
}

# The files that say a stage of a round is built (inside the run folder); `all` and the CLI's `run` ask for these.
STAGE_TARGETS: dict[str, list[str]] = {
    "query": ["query/query.json"],
    "infer": ["infer/manifest.jsonl", "infer/quality.json"],
    "select": ["select/selection.json"],
    "upload": ["cvat/upload.json"],
    "download": ["cvat/download.json"],
    "preprocess": ["dataset/index.csv"],
    "train": ["model/best.pth"],
}

STAGE_ORDER = ("query", "infer", "select", "upload", "download", "preprocess", "train")


def stage_config(config: Mapping[str, Any], stage: str) -> dict:
    """The part of the config a stage depends on (passed to rules through params:)."""
    out: dict[str, Any] = {
        "project": {k: config["project"][k] for k in ("name", "subname")},
        "io": {"out_root": config["io"]["out_root"]},
    }
    for key in STAGE_SECTIONS[stage]:
        if key in config:
            out[key] = config[key]
    for section, keys in STAGE_KEYS.get(stage, {}).items():
        if section in config:
            out[section] = {k: config[section][k] for k in keys if k in config[section]}
    return out


def stages_until(config: Mapping[str, Any]) -> list[str]:
    """Stages `all` builds for this round: up to project.until, skipping CVAT unless label_source is cvat."""
    last = config["project"].get("until", "train")
    stages = list(STAGE_ORDER[: STAGE_ORDER.index(last) + 1])
    if not wants_cvat(config):
        stages = [s for s in stages if s not in ("upload", "download")]
    if not selection_applies(config):
        stages = [s for s in stages if s != "select"]
    return stages


def selection_applies(config: Mapping[str, Any]) -> bool:
    """True when the round picks a subset of its candidate pool (select.strategy other than `all`)."""
    return str((config.get("select") or {}).get("strategy", "all")) != "all"


def wants_cvat(config: Mapping[str, Any]) -> bool:
    return config["preprocess"]["label_source"] == "cvat"


def gpu_count(device: Any) -> int:
    """1 when a device setting asks for CUDA (cuda, cuda:N, gpu), else 0."""
    text = str(device).lower()
    return 1 if text.startswith("cuda") or text == "gpu" else 0


def round_names(config: Mapping[str, Any]) -> list[str]:
    """Rounds of the project that preprocess combines: preprocess.rounds, or every round up to this one."""
    explicit = config["preprocess"].get("rounds")
    current = str(config["project"]["subname"])
    if explicit:
        return [str(r) for r in explicit]
    root = project_dir(config)
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return sorted({r for r in found if r <= current} | {current})


def earlier_round_files(config: Mapping[str, Any], rel: str = "cvat/download.json") -> list[str]:
    """`rel` in the earlier rounds that have it (existing files: no rule rebuilds them)."""
    current = str(config["project"]["subname"])
    root = project_dir(config)
    out = []
    for name in round_names(config):
        if name == current:
            continue
        receipt = root / name / rel
        if receipt.exists():
            out.append(str(receipt))
    return out


def earlier_round_receipts(config: Mapping[str, Any]) -> list[str]:
    return earlier_round_files(config, "cvat/download.json")


def previous_round(config: Mapping[str, Any]) -> str | None:
    """The round before this one: the nearest earlier run folder by name, or round_NNN-1 by its number."""
    import re

    current = str(config["project"]["subname"])
    root = project_dir(config)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name < current) if root.is_dir() else []
    if found:
        return found[-1]
    m = re.match(r"^(.*?)(\d+)$", current)
    if m and int(m.group(2)) > 1:
        return f"{m.group(1)}{int(m.group(2)) - 1:0{len(m.group(2))}d}"
    return None


def release_stale_lock(workdir: Path) -> bool:
    """Remove Snakemake's lock files when no live Snakemake runs in `workdir` (left by a killed run).

    A lock held by a live process is left alone (Snakemake then says the directory is locked).
    """
    import logging

    locks = Path(workdir) / ".snakemake" / "locks"
    files = [p for p in locks.glob("*.lock")] if locks.is_dir() else []
    from agir.processes import ancestors, snakemake_processes

    if not files or snakemake_processes(workdir, {pid for pid, _ in ancestors()}):
        return False
    for p in files:
        p.unlink(missing_ok=True)
    logging.getLogger("agir").warning(
        "agir: released a Snakemake lock left by a run that no longer exists (killed?) in %s", workdir
    )
    print(f"agir: released a Snakemake lock left by a run that no longer exists in {Path(workdir).resolve()}",
          file=__import__("sys").stderr)
    return True


def relpath(path: str | Path, start: str | Path) -> str:
    return str(Path(path).resolve().relative_to(Path(start).resolve()))


def db_source_files(config: Mapping[str, Any]) -> list[str]:
    """The database file(s) behind query.db, so editing the database reruns the query."""
    import glob

    entry = config["db"].get(config["query"]["db"]) or {}
    path = str(entry.get("path", ""))
    if any(ch in path for ch in "*?["):
        return sorted(glob.glob(path))
    return [path] if path else []


def shard_ids(config: Mapping[str, Any]) -> list[int]:
    return list(range(int(config["seg_inference"]["shards"])))


DEMO_DB_NAME = "agir_demo.duckdb"


def demo_db_path(config: Mapping[str, Any]) -> str | None:
    """The configured database when it is the generated demo database (a rule can then build it)."""
    entry = config["db"].get(config["query"]["db"]) or {}
    path = str(entry.get("path", ""))
    return path if Path(path).name == DEMO_DB_NAME else None


def report_rounds(argv: list[str], out_root: str, cwd: Path) -> list[tuple[str, str]] | None:
    """`snakemake --report FILE [targets]`: the (project, round) pairs its targets are in, in order; [] when no
    target is in a run folder (the report is the configured round's); None when this is not a report call."""
    args = list(argv[1:])
    if not any(a == "--report" or a.startswith("--report=") for a in args):
        return None
    root = (Path(cwd) / out_root).resolve()
    found: list[tuple[str, str]] = []
    for i, arg in enumerate(args):
        if arg.startswith("-") or (i and args[i - 1] in ("--report", "--configfile", "--configfiles")):
            continue  # options, the report file itself, a config file
        try:
            parts = (Path(cwd) / arg).resolve().relative_to(root).parts
        except ValueError:
            continue
        if len(parts) >= 3 and (parts[0], parts[1]) not in found:
            found.append((parts[0], parts[1]))
    return found
