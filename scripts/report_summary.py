"""Rule `report_summary`: pictures for `snakemake --report`."""
from agir.report import run_report_stage
from agir.rule import run_rule

run_rule(snakemake, run_report_stage, stages=list(snakemake.params.stages))
