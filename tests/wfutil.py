"""Helpers for tests that run real Snakemake on a tiny generated project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "project": {"name": "tiny", "subname": "round_001"},
    "io": {
        "out_root": "outputs/runs",
        "roots": {
            "longterm_images": "demo/storage/longterm_images",
            "longterm_images2": "demo/storage/longterm_images2",
            "GROW_DATA": "demo/storage/GROW_DATA",
        },
        "field_storage_dir": "demo/storage/field",
    },
    "db": {
        "semif": {"path": "demo/agir_demo.duckdb", "table": "semif", "id_column": "cutout_id"},
        "field": {"path": "demo/agir_demo.duckdb", "table": "field_data", "id_column": "id"},
    },
    "seg_inference": {"tile": {"size": 128, "overlap": 0.25}, "batch_size": 4, "device": "cpu",
                      "post_process": {"min_area": 16}},
    "preprocess": {"tile": {"size": 128, "overlap": 0.0}, "workers": 1, "keep_background_fraction": 0.5},
    "train": {"arch": "Unet", "encoder": "resnet18", "epochs": 1, "batch_size": 4, "crop_size": 64,
              "num_workers": 0, "max_steps_per_epoch": 2, "accelerator": "cpu"},
    "cvat": {"project_name": "agir-tiny"},
}


def run_snakemake(workdir: Path, *args: str, config: str = "config.yaml", check: bool = True,
                  timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / config), "--cores", "2", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_rules(workdir: Path, *args: str, config: str = "config.yaml") -> dict[str, int]:
    """Rules (and job counts) a dry run would execute."""
    proc = run_snakemake(workdir, *args, "-n", "--quiet", "rules", config=config)
    out: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            out[parts[0]] = int(parts[1])
    return out


def write_config(workdir: Path, name: str = "config.yaml", **overrides) -> Path:
    from agir.config import apply_overrides

    cfg = apply_overrides(TINY, overrides)
    path = workdir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`agir-cvtoolkit ARGS` in `workdir` (as `python -m agir.cli`, the same entry point)."""
    proc = subprocess.run([sys.executable, "-m", "agir.cli", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"agir-cvtoolkit {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
