"""Rule `evaluate_prelabels`: pre-label IoU against the database's masks -> infer/quality.json."""
from agir.evaluate import run_evaluate_stage
from agir.rule import run_rule

run_rule(snakemake, run_evaluate_stage)
