"""Rule `round_classes`: the round's class set -> {run}/classes.json."""
from agir.classes import build_round_classes
from agir.rule import run_rule

given = snakemake.input.keys()
run_rule(
    snakemake,
    build_round_classes,
    sections=["classes"],
    out=snakemake.output.classes,
    query=snakemake.input.query if "query" in given else None,
    ckpt=snakemake.input.ckpt if "ckpt" in given else None,
    prelabeler=snakemake.input.prelabeler if "prelabeler" in given else None,
    earlier=list(snakemake.params.earlier),
)
