"""Rule `upload_cvat`: send images + pre-labels to CVAT -> cvat/upload.json."""
from agir.cvat.upload import run_upload_stage
from agir.rule import run_rule

run_rule(snakemake, run_upload_stage, sections=["cvat", "cvat_upload"])
