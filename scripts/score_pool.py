"""Rule `score_pool`: the candidate pool's uncertainty at reduced resolution -> select/pool/."""
from agir.infer.stage import run_infer_stage
from agir.rule import resolved_infer_config, run_rule

run_rule(snakemake, run_infer_stage, sections=["seg_inference", "select"], cfg=resolved_infer_config(snakemake),
         purpose="score")
