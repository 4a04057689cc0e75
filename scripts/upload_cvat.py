"""Rule `upload_cvat`: send images + pre-labels to CVAT -> cvat/upload.json."""
from agir.cvat.upload import run_upload_stage
from agir.rule import run_rule

# the round's class set (input `classes`); rounds built before class sets have none and use infer/masks' classes
classes = snakemake.input.classes if "classes" in snakemake.input.keys() else None
run_rule(snakemake, run_upload_stage, sections=["cvat", "cvat_upload"], classes=classes)
