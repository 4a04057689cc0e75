"""Rule `train_model`: dataset/ -> model/best.pth, curves and test metrics."""
from agir.rule import run_rule
from agir.train.stage import run_train_stage

# params.init: the starting model the DAG chose (train.init resolved), so the run uses exactly what was declared
run_rule(snakemake, run_train_stage, sections=["train"], init=snakemake.params.init)
