"""Rule `choose_prelabeler`: the best pre-labeler of the vegetation index and the project's models -> infer/prelabeler.json."""
from agir.prelabeler import choose_prelabeler
from agir.rule import run_rule

run_rule(snakemake, choose_prelabeler, sections=["seg_inference"], candidates=list(snakemake.input.models))
