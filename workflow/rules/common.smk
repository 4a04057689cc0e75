# Shared helpers: run paths, the config each stage depends on, input functions.
from agir.runs import project_dir, run_dir
from agir.workflow import (
    db_source_files,
    earlier_round_receipts,
    shard_ids,
    gpu_count,
    stage_config,
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


def all_targets():
    targets = [run_path("query/query.json"), run_path("infer/manifest.jsonl"), run_path("infer/quality.json")]
    if wants_cvat(config):
        targets += [run_path("cvat/upload.json"), run_path("cvat/download.json")]
    targets += [run_path("dataset/index.csv"), run_path("model/best.pth"), run_path("report/summary.json")]
    return targets
