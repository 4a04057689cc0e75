"""Rule `download_cvat`: refined masks from CVAT -> cvat/download.json + cvat/annotations/."""
import os

from agir.cvat.download import run_download_stage
from agir.rule import run_rule

# the round's class set (input `classes`) orders cvat/annotations/masks/classes.json
classes = snakemake.input.classes if "classes" in snakemake.input.keys() else None
run_rule(snakemake, run_download_stage, sections=["cvat", "cvat_download"], refresh=os.environ.get("AGIR_REFRESH") == "1",
         classes=classes)
