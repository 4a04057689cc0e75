"""Rule `select_images`: pick the images people annotate -> select/selection.json (+ scores, pictures)."""
from agir.rule import run_rule
from agir.select.stage import run_select_stage

run_rule(snakemake, run_select_stage, sections=["select"])
