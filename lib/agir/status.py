"""`agir-cvtoolkit status`: every round under io.out_root with its stages as done / stale / waiting for CVAT /
failed, key numbers, the round's class set (which classes are new), the active selection, the chosen
pre-labeler, where training started and how much annotators changed.

Each round is judged by its own settings (`round_config`: the project config + the run folder's saved
`overrides.yaml`), and staleness comes from one `snakemake --summary` dry run over the outputs that exist
in every listed round, so a round made with other settings is not reported stale by today's config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agir.config import (
    OUT_ROOT_ENV,
    choose_out_root,
    default_config_path,
    list_rounds,
    load_config,
    overrides_as_tree,
    parse_override,
    round_config,
)
from agir.errors import AgirError
from agir.runs import read_json_or, read_jsonl, write_yaml

# stage -> (output inside the run folder that says the stage ran, log file names its rules write)
STAGE_OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "query": ("query/query.json", ("query",)),
    "infer": ("infer/manifest.jsonl", ("infer_seg", "infer_seg_shard_*", "infer_gather", "choose_prelabeler")),
    "select": ("select/selection.json", ("select_images", "score_pool")),
    "upload": ("cvat/upload.json", ("upload_cvat",)),
    "download": ("cvat/download.json", ("download_cvat",)),
    "preprocess": ("dataset/index.csv", ("preprocess",)),
    "train": ("model/best.pth", ("train",)),
}

DRY_RUN_TIMEOUT_S = 600


# ------------------------------------------------------------------ key numbers and extra lines

def _fmt(value: Any, spec: str = ".3f") -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return "?"


def key_numbers(run: Path, stage: str) -> str:
    """The one-line figures of a stage that ran (records, ok/failed, frames, samples, test mIoU...)."""
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
    if stage == "select":
        sel = read_json_or(run / "select" / "selection.json") or {}
        return f"{len(sel.get('selected') or [])} of {sel.get('pool_size', '?')} selected"
    if stage == "upload":
        rec = read_json_or(run / "cvat" / "upload.json") or {}
        tasks = rec.get("tasks") or []
        frames = sum(len(t.get("frames", [])) for t in tasks if isinstance(t, Mapping))
        return f"{len(tasks)} task(s), {frames} frames"
    if stage == "download":
        rec = read_json_or(run / "cvat" / "download.json") or {}
        frac = changed_fraction(run)
        return f"{len(rec.get('tasks') or [])} task(s)" + (f", changed pixels {frac:.3f}" if frac is not None else "")
    if stage == "preprocess":
        m = read_json_or(run / "dataset" / "metrics.json") or {}
        counts = m.get("counts") or {}
        by_split = counts.get("by_split") or {}
        splits = "/".join(str((by_split.get(k) or {}).get("samples", 0)) for k in ("train", "val", "test"))
        return f"{counts.get('samples', '?')} samples (train/val/test {splits}), {counts.get('rejected', 0)} rejected"
    if stage == "train":
        m = read_json_or(run / "model" / "metrics.json") or {}
        miou = (m.get("test") or {}).get("mIoU")
        return f"test mIoU {_fmt(miou)}, best epoch {m.get('best_epoch')}" if miou is not None else "no test score"
    return ""


def changed_fraction(run: Path) -> float | None:
    """Mean fraction of pixels annotators changed in this round's CVAT download (None before one)."""
    down = (read_json_or(run / "cvat" / "metrics.json") or {}).get("download") or {}
    value = down.get("changed_fraction_mean")
    return float(value) if isinstance(value, (int, float)) else None


def _named(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", +{len(names) - limit} more" if len(names) > limit else "")


def class_set_summary(run: Path) -> dict[str, Any] | None:
    """{"classes": [names in index order], "new": [...]} from the round's classes.json (None without one)."""
    from agir.classes import ROUND_CLASSES, class_names, read_round_classes

    if not (run / ROUND_CLASSES).is_file():
        return None
    try:
        doc = read_round_classes(run / ROUND_CLASSES)
    except (AgirError, OSError, ValueError, KeyError, TypeError) as exc:
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"classes": class_names(doc), "new": [str(n) for n in doc.get("new") or []]}


def classes_line(run: Path) -> str:
    """`classes: 2 (barley, cereal rye); new: 1 (cereal rye)`, or `classes: —` for a round without classes.json."""
    info = class_set_summary(run)
    if info is None:
        return "classes: —"
    if "error" in info:
        return f"classes: unreadable ({info['error']})"
    names, new = info["classes"], info["new"]
    return (f"classes: {len(names)} ({_named(names)}); "
            + (f"new: {len(new)} ({_named(new)})" if new else "new: none"))


def init_line(run: Path) -> str | None:
    """`model: initialised from round_001/model/best.pth: kept ...` (train's one line) when metrics.json has it."""
    init = (read_json_or(run / "model" / "metrics.json") or {}).get("init")
    if isinstance(init, Mapping) and init.get("line"):
        return f"model: {init['line']}"
    return None


def selection_line(run: Path) -> str | None:
    """`selection: entropy, 20 of 120 in the pool selected, 5 excluded` when select/selection.json exists."""
    sel = read_json_or(run / "select" / "selection.json")
    if not isinstance(sel, Mapping):
        return None
    strategy = str(sel.get("strategy", "?"))
    used = sel.get("strategy_used")
    if used and used != strategy:
        strategy += f" (used {used}: {sel['fallback']})" if sel.get("fallback") else f" (used {used})"
    excluded = sel.get("excluded")
    n_excl = excluded.get("count") if isinstance(excluded, Mapping) else len(excluded or [])
    return (f"selection: {strategy}, {len(sel.get('selected') or [])} of {sel.get('pool_size', '?')} in the pool "
            f"selected, {n_excl} excluded (annotated in earlier rounds)")


def prelabeler_line(run: Path) -> str | None:
    """`pre-labeler: <name> (plant IoU 0.905, +0.040 over baseline)` when infer/prelabeler.json exists."""
    info = read_json_or(run / "infer" / "prelabeler.json")
    if not isinstance(info, Mapping):
        return None
    name = info.get("chosen_name") or info.get("chosen") or "?"
    cands = [c for c in info.get("candidates") or [] if isinstance(c, Mapping)]
    chosen = next((c for c in cands if c.get("name") == name or c.get("path") == info.get("chosen")), None)
    others = sorted((c for c in cands if c is not chosen and c.get("plant_iou") is not None),
                    key=lambda c: -float(c["plant_iou"]))
    parts = []
    if chosen and chosen.get("plant_iou") is not None:
        parts.append(f"plant IoU {_fmt(chosen['plant_iou'])} on {chosen.get('images', '?')} images")
    if info.get("margin") is not None:
        runner = f" over {others[0]['name']}" if others else " over the runner-up"
        parts.append(f"{float(info['margin']):+.3f}{runner}")
    text = f"pre-labeler: {name}" + (f" ({', '.join(parts)})" if parts else "")
    return text + (f"; {info['reason']}" if info.get("reason") and not parts else "")


# ------------------------------------------------------------------ the dry run

@dataclass
class Plan:
    """What one Snakemake dry run says about the listed outputs."""

    pending: dict[Path, str] = field(default_factory=dict)  # output (resolved) -> why it would be rebuilt
    error: str | None = None  # the dry run failed: staleness unknown

    def state_of(self, path: Path) -> str:
        if self.error is not None:
            return "unknown"
        why = self.pending.get(path.resolve())
        if why is None:
            return "done"
        # status `ok` with an update pending: something upstream of it will be rebuilt first
        return f"stale ({why})" if why and why != "ok" else "stale (upstream)"


def parse_summary(text: str, cwd: Path) -> dict[Path, str]:
    """`snakemake --summary` table -> {output path: status} for outputs whose plan is `update pending`."""
    pending: dict[Path, str] = {}
    header = None
    for line in text.splitlines():
        cols = line.split("\t")
        if header is None:
            if cols[0] == "output_file" and "plan" in cols:
                header = cols
            continue
        if len(cols) != len(header):
            continue
        row = dict(zip(header, cols))
        if row.get("plan", "").strip() == "update pending":
            p = Path(row["output_file"])
            pending[(p if p.is_absolute() else cwd / p).resolve()] = row.get("status", "").strip()
    return pending


def _first_error(text: str) -> str:
    """One line out of Snakemake's error text (`WorkflowError:` alone is followed by the message)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if any(k in ln for k in ("Error", "error", "Exception")):
            if ln.endswith(":") and i + 1 < len(lines):
                ln = f"{ln} {lines[i + 1]}"
            return ln[:200]
    return (lines[-1] if lines else "no output")[:200]


def dry_run_plan(config_file: str | Path | None, overrides: Mapping[str, Any], targets: Sequence[Path],
                 cwd: Path | None = None) -> Plan:
    """One `snakemake --summary` over `targets`: which of them (and what feeds them) would be rebuilt."""
    from agir.config import workflow_root

    if not targets:
        return Plan()
    cwd = Path(cwd or Path.cwd())
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow_root() / "Snakefile"),
           "--cores", "1", "--summary", *map(str, targets)]
    # --configfile takes several values: it goes last so that it does not swallow the targets
    cmd += ["--configfile", str(config_file or default_config_path())]
    with tempfile.TemporaryDirectory(prefix="agir-status-") as tmp:
        if overrides:
            extra = Path(tmp) / "overrides.yaml"
            write_yaml(extra, overrides_as_tree(overrides))
            cmd.append(str(extra))
        try:
            env = {**os.environ, OUT_ROOT_ENV: str(overrides["io.out_root"])} if "io.out_root" in overrides else None
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=DRY_RUN_TIMEOUT_S, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Plan(error=f"snakemake could not run: {exc}")
    if proc.returncode != 0:
        return Plan(error=_first_error(proc.stderr + "\n" + proc.stdout))
    return Plan(pending=parse_summary(proc.stdout, cwd))


# ------------------------------------------------------------------ one round

def _failed_reason(run: Path, log_names: Iterable[str]) -> str | None:
    """The last ERROR line of the stage's logs (None when no log has one)."""
    last = None
    for name in log_names:
        for log in sorted((run / "logs").glob(f"{name}.log")):
            errors = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln]
            if errors:
                last = errors[-1].split("ERROR", 1)[-1].strip(" :-")[:100]
    return last


def round_targets(run: Path) -> dict[str, Path]:
    """Stage -> its output in this run folder, for the stages that have one."""
    return {stage: run / rel for stage, (rel, _) in STAGE_OUTPUTS.items() if (run / rel).exists()}


def round_states(run: Path, plan: Plan | None, stages: Sequence[str] | None = None,
                 not_in_round: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(stage, state, key numbers) rows of one round.

    `stages`: the stages of this round by its settings (None: unknown, show every stage that left a
    trace). `not_in_round`: stage -> why it is not part of the round (shown instead of `-`).
    """
    rows = []
    not_in_round = not_in_round or {}
    for stage, (rel, logs) in STAGE_OUTPUTS.items():
        out = run / rel
        failed = _failed_reason(run, logs)
        if out.exists():
            state = plan.state_of(out) if plan is not None else "unknown"
            if failed is not None and state.startswith("stale"):
                state = "failed"  # the last attempt to rebuild it stopped with an error
            rows.append((stage, state, key_numbers(run, stage)))
        elif stage == "download" and (run / "cvat" / "upload.json").exists():
            rows.append((stage, "failed" if failed else "waiting for CVAT", failed or ""))
        elif failed is not None:
            rows.append((stage, "failed", failed))
        elif stage in not_in_round:
            if stage != "select":  # a round without active selection needs no line for it
                rows.append((stage, "-", not_in_round[stage]))
        elif stages is None and stage == "select":
            continue
        else:
            rows.append((stage, "-", ""))
    return rows


def not_in_round_reasons(cfg: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(stages of the round, stage -> why it is not part of it) from the round's settings."""
    from agir.workflow import STAGE_ORDER, stages_until

    stages = stages_until(cfg)
    until = cfg["project"].get("until", "train")
    reasons = {}
    for stage in STAGE_ORDER:
        if stage in stages or stage not in STAGE_OUTPUTS:
            continue
        if STAGE_ORDER.index(stage) > STAGE_ORDER.index(until):
            reasons[stage] = f"not in this round (project.until={until})"
        elif stage in ("upload", "download"):
            reasons[stage] = f"not in this round (preprocess.label_source={cfg['preprocess']['label_source']})"
        else:
            reasons[stage] = "not in this round"
    return stages, reasons


@dataclass
class Round:
    run: Path
    cfg: dict | None = None
    error: str | None = None  # its settings could not be computed


def round_lines(rnd: Round, plan: Plan | None, configured: bool = False) -> list[str]:
    """The printed block of one round."""
    head = rnd.run.name + ("  (configured round)" if configured else "")
    lines = [head]
    if not rnd.run.exists():
        return lines + ["  nothing built yet"]
    if rnd.error:
        lines.append(f"  settings: {rnd.error}")
    lines.append(f"  {classes_line(rnd.run)}")
    stages, reasons = not_in_round_reasons(rnd.cfg) if rnd.cfg is not None else (None, {})
    rows = round_states(rnd.run, plan if rnd.cfg is not None else None, stages, reasons)
    width = max([16] + [len(state) for _, state, _ in rows])
    for stage, state, numbers in rows:
        lines.append(f"  {stage:<11} {state:<{width}} {numbers}".rstrip())
    for extra in (selection_line(rnd.run), prelabeler_line(rnd.run), init_line(rnd.run)):
        if extra:
            lines.append(f"  {extra}")
    frac = changed_fraction(rnd.run)
    if frac is not None:
        lines.append(f"  annotators changed {frac:.1%} of the pre-labelled pixels")
    return lines


# ------------------------------------------------------------------ the command

def status_report(config_file: str | None, overrides: Iterable[str], project: str | None = None,
                  cwd: Path | None = None) -> list[str]:
    """The lines `agir-cvtoolkit status` prints (see print_status)."""
    new = dict(parse_override(o) for o in overrides)
    base = load_config(config_file, new)  # a bad override is a one-line error before any work
    cwd = Path(cwd or Path.cwd())
    base["io"]["out_root"] = choose_out_root(config_file, new, cwd).path  # -o, --config FILE or remembered (.agir/)
    out_root = Path(base["io"]["out_root"])
    root = out_root if out_root.is_absolute() else cwd / out_root
    runs = list_rounds(root, project)
    configured = root / str(base["project"]["name"]) / str(base["project"]["subname"])
    if (project in (None, base["project"]["name"])) and configured not in runs:
        runs.append(configured)
    if not runs:
        where = f"{root / project}" if project else str(root)
        return [f"no rounds under {where} (io.out_root); run `agir-cvtoolkit run` or `snakemake` first"]

    rounds = []
    for run in runs:
        try:
            cfg = round_config(base, base["io"]["out_root"], run.parent.name, run.name)
            rounds.append(Round(run, cfg))
        except (AgirError, OSError, ValueError, yaml.YAMLError) as exc:
            rounds.append(Round(run, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    plans = round_plans(config_file, {**new, "io.out_root": base["io"]["out_root"]}, rounds,
                        Path(base["io"]["out_root"]), cwd)

    lines: list[str] = []
    project_of = None
    errors = {p.error for p in plans.values() if p.error is not None}
    shared_error = len(errors) == 1 and all(p.error is not None for p in plans.values())
    for rnd in rounds:
        if rnd.run.parent != project_of:
            project_of = rnd.run.parent
            lines += ([""] if lines else []) + [f"project {project_of.name} ({project_of})"]
        lines.append("")
        plan = plans.get(rnd.run, Plan())
        lines += round_lines(rnd, plan, configured=rnd.run == configured)
        if plan.error is not None and not shared_error:
            lines.append(f"  staleness unknown: the Snakemake dry run of this round failed: {plan.error}")
    if shared_error:
        lines += ["", f"staleness unknown: the Snakemake dry run failed: {errors.pop()}"]
    return lines


def round_plans(config_file: str | Path | None, overrides: Mapping[str, Any], rounds: Sequence[Round],
                out_root: Path, cwd: Path) -> dict[Path, Plan]:
    """One dry run over every round's existing stage outputs; when it fails, one per round, so that a round
    Snakemake cannot plan (e.g. files of an older layout) does not hide the state of the others."""
    targets: dict[Path, list[Path]] = {}
    for r in rounds:
        if r.cfg is not None and r.run.exists():
            # relative to io.out_root as configured, like the paths Snakemake's rules produce
            targets[r.run] = [out_root / r.run.parent.name / r.run.name / out.relative_to(r.run)
                              for out in round_targets(r.run).values()]
    targets = {run: t for run, t in targets.items() if t}
    plan = dry_run_plan(config_file, overrides, [t for ts in targets.values() for t in ts], cwd)
    if plan.error is None or len(targets) <= 1:
        return {run: plan for run in targets}
    return {run: dry_run_plan(config_file, overrides, ts, cwd) for run, ts in targets.items()}


def print_status(config_file: str | None, overrides: Iterable[str], project: str | None = None) -> int:
    """Print every round of every project under io.out_root (or of `project`); 0 on success."""
    for line in status_report(config_file, overrides, project):
        print(line)
    return 0
