# agir: the active-learning loop for agricultural image segmentation.
#   query -> infer-seg -> upload-cvat -> (people refine in CVAT) -> download-cvat -> preprocess -> train
# Run `snakemake --cores 2` for the configured round, `snakemake -n` to see what would run,
# `snakemake --rulegraph mermaid-js` for the graph, `snakemake --report report.html` for the report.
import sys
from pathlib import Path

# The library lives in lib/; make it importable even when the package is not installed.
sys.path.insert(0, str(Path(workflow.basedir) / "lib"))

from snakemake.utils import min_version, validate

from agir.config import load_schema, validate_config
from agir.errors import ConfigError

min_version("8.20")

configfile: str(Path(workflow.basedir) / "config" / "config.yaml")

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
try:
    # Our validator first: one line naming the dotted key, with a suggestion for typos.
    validate_config(config, load_schema(SCHEMA))
except ConfigError as exc:
    sys.exit(f"agir: config error: {exc}")
validate(config, SCHEMA)

report: "workflow/report/workflow.rst"

include: "workflow/rules/common.smk"
include: "workflow/rules/query.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/cvat.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"

localrules: all, infer, upload, download


rule all:
    input:
        all_targets(),
    default_target: True


# Named targets: `snakemake --cores 2 <name>` for query, infer, upload, download, preprocess, train, all
# (query, preprocess and train are the stage rules themselves).
rule infer:
    input:
        run_path("infer/manifest.jsonl"),


rule upload:
    input:
        run_path("cvat/upload.json"),


rule download:
    input:
        run_path("cvat/download.json"),
