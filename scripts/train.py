"""Rule `train_model`: dataset/ -> model/best.pth, curves and test metrics."""
from agir.rule import run_rule
from agir.train.stage import run_train_stage

run_rule(snakemake, run_train_stage, sections=["train"])
