# Shared helpers: the round wildcard, each round's settings, input functions.
import json
import os
import re

from agir.config import round_config, workflow_out_root
from agir.workflow import (
    STAGE_TARGETS,
    db_source_files,
    demo_db_path,
    earlier_round_files,
    gpu_count,
    previous_round,
    report_rounds,
    selection_applies,
    shard_ids,
    stage_config,
    stages_until,
    wants_cvat,
)

SCRIPTS = str(Path(workflow.basedir) / "scripts")
ENVS = str(Path(workflow.basedir) / "workflow" / "envs")
# io.out_root: `--config io={out_root: ...}`, the one agir-cvtoolkit chose, the folder's remembered choice
# (.agir/out_root.yaml, written by `agir-cvtoolkit ... -o io.out_root=DIR`), or the config's. Relative paths are
# relative to the working directory (the folder Snakemake runs in, or its --directory).
try:
    _OUT = workflow_out_root(config, COMMAND_LINE, Path.cwd())
except ConfigError as exc:
    sys.exit(f"agir: config error: {exc}")
OUT_ROOT = _OUT.path
config["io"]["out_root"] = OUT_ROOT
if workflow.is_main_process and _OUT.why.startswith("remembered"):
    print(f"agir: io.out_root={OUT_ROOT} ({_OUT.why})", file=sys.stderr)

# `snakemake --report FILE [targets]` reports on the rounds its targets are in (the configured round without
# targets): only their jobs are in the DAG, so the report's graph and pictures are that round's; another round's
# files (`ckpt_path: previous`) are plain inputs there.
REPORT_ROUNDS = report_rounds(sys.argv, OUT_ROOT, Path.cwd()) if workflow.is_main_process else None
if REPORT_ROUNDS == []:
    REPORT_ROUNDS = [(str(config["project"]["name"]), str(config["project"]["subname"]))]


def _names_pattern(names):
    return "|".join(re.escape(n) for n in dict.fromkeys(names)) if names else r"[A-Za-z0-9._-]+"


wildcard_constraints:
    project=_names_pattern([p for p, _ in REPORT_ROUNDS or []]),
    round=_names_pattern([r for _, r in REPORT_ROUNDS or []]),
    shard=r"\d+",

# Every stage output lives in a round's run folder; {project} and {round} are wildcards, so any round's
# output is a target and each round is built with its own settings.
RUN = OUT_ROOT + "/{project}/{round}"

_ROUNDS = {}
# `agir-cvtoolkit <stage> --dry-run -o ...` shows what the new settings would do without saving them.
_PENDING = (os.environ.get("AGIR_PENDING_RUN"), os.environ.get("AGIR_PENDING_OVERRIDES"))


def round_settings(project, round_name):
    key = (str(project), str(round_name))
    if key not in _ROUNDS:
        try:
            pending = None
            if _PENDING[0] and Path(_PENDING[0]) == Path(OUT_ROOT, *key):
                pending = json.loads(_PENDING[1] or "{}")
            _ROUNDS[key] = round_config(config, OUT_ROOT, *key, command_line=COMMAND_LINE, saved=pending)
        except ConfigError as exc:
            sys.exit(f"agir: config error: {exc}")
    return _ROUNDS[key]


def rcfg(wildcards):
    return round_settings(wildcards.project, wildcards.round)


DEFAULT = round_settings(config["project"]["name"], config["project"]["subname"])


def run_path(rel):
    return f"{RUN}/{rel}"


def default_path(rel):
    """A file of the configured round (project.name / project.subname)."""
    return f"{OUT_ROOT}/{DEFAULT['project']['name']}/{DEFAULT['project']['subname']}/{rel}"


def run_of(wildcards):
    return f"{OUT_ROOT}/{wildcards.project}/{wildcards.round}"


def rp(wildcards, rel):
    """A concrete file of the round named by the wildcards (input functions return concrete paths)."""
    return f"{run_of(wildcards)}/{rel}"


def log_path(rule_name):
    return f"{RUN}/logs/{rule_name}.log"


def bench_path(rule_name):
    return f"{RUN}/benchmarks/{rule_name}.tsv"


def stage_params(stage):
    """params: the config sections a stage reads, from its round's settings (a change reruns exactly it)."""
    return lambda wildcards: stage_config(rcfg(wildcards), stage)


def not_used(wildcards, why):
    """An input no rule makes: Snakemake then takes the other rule that builds the same output."""
    return f"{run_of(wildcards)}/.agir/not-used/{why}"


def checkpoint_input(wildcards):
    """The checkpoint a round pre-labels with: a path, `previous` (the round before's model, built through the
    DAG when missing or stale), `auto` (the best of baseline and the project's models), or none (baseline)."""
    cfg = rcfg(wildcards)
    ckpt = cfg["seg_inference"]["model"]["ckpt_path"]
    if not ckpt:
        return {}
    if str(ckpt) == "previous":
        prev = previous_round(cfg)
        if prev is None:
            sys.exit(
                f"agir: config error: seg_inference.model.ckpt_path=previous in round {wildcards.round}: "
                "there is no earlier round of this project; use null (vegetation index) or a checkpoint path"
            )
        return {"ckpt": f"{OUT_ROOT}/{wildcards.project}/{prev}/model/best.pth"}
    if str(ckpt) == "auto":
        return {"prelabeler": rp(wildcards, "infer/prelabeler.json")}
    if Path(run_of(wildcards)).resolve() in Path(str(ckpt)).resolve().parents:
        # this round's own model (the old tool's "train, then infer-seg with it, upload more" in one run):
        # used as it is, not rebuilt through the DAG, which would be a cycle; its path is in params
        return {}
    return {"ckpt": str(ckpt)}


def infer_inputs(wildcards):
    """Query records (or image files), the checkpoint, and the selection when only selected images are pre-labelled."""
    cfg = rcfg(wildcards)
    inputs = {} if cfg["seg_inference"]["source"]["images"] else {"query": rp(wildcards, "query/query.json")}
    inputs.update(checkpoint_input(wildcards))
    if selection_applies(cfg) and cfg["select"].get("score_max_side"):
        inputs["selection"] = rp(wildcards, "select/selection.json")
    return inputs


def preprocess_inputs(wildcards):
    """db_masks: the query records (+ selections); cvat: this round's download receipt plus earlier rounds'."""
    cfg = rcfg(wildcards)
    if not wants_cvat(cfg):
        inputs = {"query": rp(wildcards, "query/query.json")}
        if selection_applies(cfg):
            inputs["selection"] = rp(wildcards, "select/selection.json")
            inputs["earlier"] = earlier_round_files(cfg, "select/selection.json")
        return inputs
    return {
        "download": rp(wildcards, "cvat/download.json"),
        "earlier": earlier_round_files(cfg, "cvat/download.json"),
    }


def stage_targets(wildcards):
    """A round's stage outputs up to project.until (CVAT only when label_source is cvat)."""
    cfg = rcfg(wildcards)
    return [f"{run_of(wildcards)}/{t}" for stage in stages_until(cfg) for t in STAGE_TARGETS[stage]]


def all_targets(wildcards):
    run = f"{OUT_ROOT}/{DEFAULT['project']['name']}/{DEFAULT['project']['subname']}"
    return [f"{run}/{t}" for stage in stages_until(DEFAULT) for t in STAGE_TARGETS[stage]] + [
        f"{run}/report/summary.json"
    ]
