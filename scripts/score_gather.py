"""Rule `score_gather`: merge the scoring shards -> select/pool/manifest.jsonl."""
from agir.infer.stage import merge_infer_shards
from agir.rule import run_rule

run_rule(snakemake, merge_infer_shards, shard_count=int(snakemake.params.shard_count), purpose="score")
