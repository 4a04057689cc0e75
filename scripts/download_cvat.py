"""Rule `download_cvat`: refined masks from CVAT -> cvat/download.json + cvat/annotations/."""
import os

from agir.cvat.download import run_download_stage
from agir.rule import run_rule

run_rule(snakemake, run_download_stage, sections=["cvat", "cvat_download"], refresh=os.environ.get("AGIR_REFRESH") == "1")
