# Shared helpers: run paths, the config each stage depends on, input functions.
from agir.runs import project_dir, run_dir
from agir.workflow import (
    db_source_files,
    demo_db_path,
    earlier_round_receipts,
    gpu_count,
    shard_ids,
    stage_config,
    stages_until,
    wants_cvat,
)

RUN = str(run_dir(config))
SCRIPTS = str(Path(workflow.basedir) / "scripts")
ENVS = str(Path(workflow.basedir) / "workflow" / "envs")


def run_path(rel):
    return f"{RUN}/{rel}"


def log_path(rule_name):
    return f"{RUN}/logs/{rule_name}.log"


def bench_path(rule_name):
    return f"{RUN}/benchmarks/{rule_name}.tsv"


def infer_inputs(wildcards):
    """Query records, plus the checkpoint file when a model is configured (a retrained model reruns inference)."""
    inputs = {"query": run_path("query/query.json")}
    ckpt = config["seg_inference"]["model"]["ckpt_path"]
    if ckpt:
        inputs["ckpt"] = ckpt
    if config["seg_inference"]["source"]["images"]:
        inputs = {k: v for k, v in inputs.items() if k != "query"}
    return inputs


def preprocess_inputs(wildcards):
    """db_masks: the query records; cvat: this round's download receipt plus earlier rounds' receipts."""
    if not wants_cvat(config):
        return {"query": run_path("query/query.json")}
    return {
        "download": run_path("cvat/download.json"),
        "earlier": earlier_round_receipts(config),
    }


STAGE_TARGETS = {
    "query": ["query/query.json"],
    "infer": ["infer/manifest.jsonl", "infer/quality.json"],
    "upload": ["cvat/upload.json"],
    "download": ["cvat/download.json"],
    "preprocess": ["dataset/index.csv"],
    "train": ["model/best.pth"],
}


def stage_targets():
    """This round's stage outputs up to project.until (CVAT only when label_source is cvat)."""
    return [run_path(t) for stage in stages_until(config) for t in STAGE_TARGETS[stage]]


def all_targets():
    return stage_targets() + [run_path("report/summary.json")]
