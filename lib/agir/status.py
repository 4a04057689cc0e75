"""`agir-cvtoolkit status`: each round's stages as done / stale / waiting for CVAT / failed, with key numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agir.config import overrides_as_tree, resolve_run_config, workflow_root
from agir.runs import project_dir, read_json_or, read_jsonl, write_yaml

# stage -> (output inside the run folder, rule names that build it, log name)
STAGE_OUTPUTS = {
    "query": ("query/query.json", ("query",), "query"),
    "infer": ("infer/manifest.jsonl", ("infer_seg", "infer_seg_shard", "infer_gather"), "infer_seg"),
    "upload": ("cvat/upload.json", ("upload_cvat",), "upload_cvat"),
    "download": ("cvat/download.json", ("download_cvat",), "download_cvat"),
    "preprocess": ("dataset/index.csv", ("preprocess",), "preprocess"),
    "train": ("model/best.pth", ("train",), "train"),
}


def key_numbers(run: Path, stage: str) -> str:
    if stage == "query":
        spec = read_json_or(run / "query" / "query_spec.json") or {}
        got, matched = spec.get("rows_returned"), spec.get("rows_matched")
        return f"{got} records" + (f" of {matched} matched" if matched is not None else "")
    if stage == "infer":
        lines = read_jsonl(run / "infer" / "manifest.jsonl", missing_ok=True)
        ok = sum(1 for line in lines if line.get("status") == "ok")
        failed = sum(1 for line in lines if line.get("status") == "failed")
        q = read_json_or(run / "infer" / "quality.json") or {}
        extra = f", pre-label IoU {q['binary_iou_mean']}" if q.get("binary_iou_mean") is not None else ""
        return f"{ok} ok, {failed} failed{extra}"
    if stage == "upload":
        rec = read_json_or(run / "cvat" / "upload.json") or {}
        tasks = rec.get("tasks") or []
        frames = sum(len(t.get("frames", [])) for t in tasks if isinstance(t, Mapping))
        return f"{len(tasks)} task(s), {frames} frames"
    if stage == "download":
        rec = read_json_or(run / "cvat" / "download.json") or {}
        m = (read_json_or(run / "cvat" / "metrics.json") or {}).get("download") or {}
        frac = m.get("changed_fraction_mean")
        return f"{len(rec.get('tasks') or [])} task(s)" + (f", changed pixels {frac:.3f}" if frac is not None else "")
    if stage == "preprocess":
        m = read_json_or(run / "dataset" / "metrics.json") or {}
        counts = m.get("counts") or {}
        splits = "/".join(str((counts.get("by_split") or {}).get(k, {}).get("samples", 0)) for k in ("train", "val", "test"))
        return f"{counts.get('samples', '?')} samples (train/val/test {splits}), {counts.get('rejected', 0)} rejected"
    if stage == "train":
        m = read_json_or(run / "model" / "metrics.json") or {}
        miou = (m.get("test") or {}).get("mIoU")
        return f"test mIoU {miou:.3f}, best epoch {m.get('best_epoch')}" if miou is not None else "no test score"
    return ""


def pending_rules(config_file: str | None, overrides: Mapping[str, Any], run: Path) -> set[str] | None:
    """Rules a dry run of the configured round would execute (None if Snakemake could not tell)."""
    import tempfile

    from agir.config import default_config_path

    tmp = Path(tempfile.mkdtemp(prefix="agir-status-")) / "overrides.yaml"
    write_yaml(tmp, overrides_as_tree(overrides))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow_root() / "Snakefile"), "-n",
           "--quiet", "rules", "--cores", "1", "--configfile", str(config_file or default_config_path()), str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    rules = set()
    for line in proc.stdout.splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s+\d+$", line.strip())
        if m:
            rules.add(m.group(1))
    return rules


def round_states(run: Path, pending: set[str] | None) -> list[tuple[str, str, str]]:
    rows = []
    for stage, (rel, rules, log_name) in STAGE_OUTPUTS.items():
        out = run / rel
        log = run / "logs" / f"{log_name}.log"
        failed = log.exists() and "ERROR" in log.read_text(errors="replace")
        if out.exists():
            state = "stale" if pending is not None and pending & set(rules) else "done"
            rows.append((stage, state, key_numbers(run, stage)))
        elif stage == "download" and (run / "cvat" / "upload.json").exists():
            rows.append((stage, "failed" if failed else "waiting for CVAT", ""))
        elif failed:
            last = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln][-1:]
            rows.append((stage, "failed", last[0].split("ERROR", 1)[-1].strip()[:100] if last else ""))
        else:
            rows.append((stage, "-", ""))
    return rows


def print_status(config_file: str | None, overrides: Iterable[str]) -> int:
    cfg, run, accumulated = resolve_run_config(config_file, overrides)
    root = project_dir(cfg)
    rounds = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if run not in rounds:
        rounds.append(run)
    pending = pending_rules(config_file, accumulated, run)
    print(f"project {cfg['project']['name']} ({root})")
    for rnd in rounds:
        current = rnd == run
        print(f"\n{rnd.name}{'  (configured round)' if current else ''}")
        for stage, state, numbers in round_states(rnd, pending if current else None):
            print(f"  {stage:<11} {state:<17} {numbers}")
    return 0
