"""Rules `score_pool` / `score_pool_shard`: the candidate pool's uncertainty at reduced resolution -> select/pool/."""
from agir.infer.stage import run_infer_stage
from agir.rule import resolved_infer_config, run_rule

shard = snakemake.wildcards.get("shard")
run_rule(snakemake, run_infer_stage, sections=["seg_inference", "select"], cfg=resolved_infer_config(snakemake),
         purpose="score", shard_index=None if shard is None else int(shard),
         shard_count=int(snakemake.params.get("shard_count", 1)))
