"""Rule `preprocess_dataset`: labelled rounds -> dataset/ (tiles, grouped split, stats)."""
from agir.data.preprocess import run_preprocess_stage
from agir.rule import run_rule

run_rule(snakemake, run_preprocess_stage, sections=["classes", "preprocess"], workers=snakemake.threads,
         classes=snakemake.input.classes if "classes" in snakemake.input.keys() else None)
