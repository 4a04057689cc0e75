"""Rules `infer_seg` / `infer_seg_shard`: pre-label masks -> infer/ (or one shard of it)."""
import os

from agir.infer.stage import run_infer_stage
from agir.rule import resolved_infer_config, run_rule, selected_ids

shard = snakemake.wildcards.get("shard")
run_rule(
    snakemake,
    run_infer_stage,
    sections=["classes", "seg_inference"],
    cfg=resolved_infer_config(snakemake),
    shard_index=None if shard is None else int(shard),
    shard_count=int(snakemake.params.get("shard_count", 1)),
    force=os.environ.get("AGIR_FORCE") == "1",
    # the round's class set (absent in rounds built before class sets: the checkpoint's or the records' list)
    classes=snakemake.input.classes if "classes" in snakemake.input.keys() else None,
    **selected_ids(snakemake),
)
