"""Generate config/README.md (the configuration reference) from the JSON schema.

`python -m agir.config_reference` rewrites it; a test checks that it is current.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from agir.config import _resolve, load_schema, workflow_root

HEADER = """# Configuration reference

`config/config.yaml` holds every setting with a comment and a default that runs on a laptop.
This page is generated from `workflow/schemas/config.schema.yaml` by `python -m agir.config_reference`
(a test fails when it is out of date). Override any key for one run with
`agir-cvtoolkit <stage> -o dotted.key=value` (values are YAML: `3`, `0.5`, `true`, `null`, `[a, b]`);
overrides persist in the run's `overrides.yaml`, which every entry point (the CLI, plain `snakemake` with any
round's output as target, `status`) applies on top of this file; `key=null` clears a saved value.
With plain Snakemake use `--configfile my.yaml` or the nested form `--config 'query={limit: 20}'`
(Snakemake 9 refuses dotted keys there; values are typed by the schema). The old AgIR-CVToolkit's keys
(`train.max_epochs`, `train.model.encoder_name`, `train.model.arch`, `cvat_upload.project_id`,
`seg_inference.output.save_images`) are accepted and reported once naming ours.

Sections: `project` (which run folder), `io` (where outputs go, where images live), `db` (database sources),
`query`, `classes`, `seg_inference`, `select` (active selection), `cvat` / `cvat_upload` / `cvat_download`,
`preprocess`, `train`.
Each stage reruns only when the sections it reads change (see `lib/agir/workflow.py: STAGE_SECTIONS`).

| key | type | default | description |
|---|---|---|---|
"""


def _type(sub: Mapping) -> str:
    if "enum" in sub:
        return " \\| ".join(json.dumps(v) for v in sub["enum"])
    t = sub.get("type", "")
    return " \\| ".join(t) if isinstance(t, list) else str(t)


def rows(schema: Mapping, root: Mapping | None = None, prefix: str = "") -> list[str]:
    root = root or schema
    schema = _resolve(schema, root)
    out = []
    for key, sub in schema.get("properties", {}).items():
        own_desc = sub.get("description")  # a description beside a $ref wins over the referenced one
        sub = _resolve(sub, root)
        dotted = f"{prefix}{key}"
        default = json.dumps(sub["default"]) if "default" in sub else ""
        desc = str(own_desc or sub.get("description", "")).replace("|", "\\|")
        if "properties" in sub:
            out.append(f"| **`{dotted}`** | section | | {desc} |")
            out.extend(rows(sub, root, dotted + "."))
        elif isinstance(sub.get("additionalProperties"), Mapping) and sub.get("type") == "object":
            out.append(f"| `{dotted}` | map | {default} | {desc} |")
            extra = _resolve(sub["additionalProperties"], root)
            out.extend(rows(extra, root, dotted + ".<name>."))
        else:
            out.append(f"| `{dotted}` | {_type(sub)} | {default.replace('|', chr(92) + '|')} | {desc} |")
    return out


def render() -> str:
    return HEADER + "\n".join(rows(load_schema())) + "\n"


def main() -> int:
    target = workflow_root() / "config" / "README.md"
    Path(target).write_text(render(), encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
