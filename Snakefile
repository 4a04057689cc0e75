# agir: the active-learning loop for agricultural image segmentation.
#   query -> infer-seg -> [select] -> upload-cvat -> (people refine in CVAT) -> download-cvat -> preprocess -> train
# Run `snakemake --cores 2` for the configured round, `snakemake -n` to see what would run,
# `snakemake --cores 2 outputs/runs/demo/round_002/infer/manifest.jsonl` for any round's stage output,
# `snakemake --rulegraph mermaid-js` for the graph, `snakemake --report report.html` for the report.
#
# The run folder is a wildcard, {io.out_root}/{project}/{round}: a round's settings are this config, plus what
# was saved for that run in {run}/overrides.yaml (by agir-cvtoolkit, or by hand), plus `--config` values.
# io.out_root is relative to the working directory; `agir-cvtoolkit ... -o io.out_root=DIR` remembers DIR for
# this folder in .agir/out_root.yaml, which plain snakemake here follows too (README: outputs on another volume).
# `snakemake --report FILE <a round's file>` reports on that round: its name, its jobs and pictures only.
import sys
from pathlib import Path

# The library lives in lib/; make it importable even when the package is not installed.
sys.path.insert(0, str(Path(workflow.basedir) / "lib"))

from snakemake.utils import min_version

from agir.config import coerce_to_schema, fold_aliases, load_schema, validate_config
from agir.errors import ConfigError
from agir.workflow import release_stale_lock

min_version("8.20")

configfile: str(Path(workflow.basedir) / "config" / "config.yaml")

SCHEMA = load_schema(str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"))
# `--config` values as typed on the command line (they win over a round's saved settings).
COMMAND_LINE = {k: v for k, v in dict(workflow.config_settings.config).items()}
try:
    for tree in (config, COMMAND_LINE):
        fold_aliases(tree)
        coerce_to_schema(tree, SCHEMA)
    # One line naming the dotted key, with a suggestion for typos.
    validate_config(config, SCHEMA)
except ConfigError as exc:
    sys.exit(f"agir: config error: {exc}")

if workflow.is_main_process:
    release_stale_lock(Path.cwd())

report: "workflow/report/workflow.rst"

include: "workflow/rules/common.smk"
include: "workflow/rules/classes.smk"
include: "workflow/rules/query.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/cvat.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"

localrules: all, infer, select, upload, download


rule all:
    input:
        all_targets,
    default_target: True


# Named targets for the configured round: `snakemake --cores 2 <name>` for query, infer, select, upload,
# download, preprocess, train, all. Any round's stage output is a target too (see the header).
rule infer:
    input:
        default_path("infer/manifest.jsonl"),


rule select:
    input:
        default_path("select/selection.json"),


rule upload:
    input:
        default_path("cvat/upload.json"),


rule download:
    input:
        default_path("cvat/download.json"),


rule preprocess:
    input:
        default_path("dataset/index.csv"),


rule train:
    input:
        default_path("model/best.pth"),


rule query:
    input:
        default_path("query/query.json"),
