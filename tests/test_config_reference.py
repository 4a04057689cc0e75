"""config/README.md is generated from the schema and must be current; every schema key is documented."""

from __future__ import annotations

from agir.config import all_keys, load_schema
from agir.config_reference import render


def test_config_reference_is_current(repo_root):
    current = (repo_root / "config" / "README.md").read_text(encoding="utf-8")
    assert current == render(), "config/README.md is stale: run `python -m agir.config_reference`"


def test_every_schema_key_has_a_description():
    from agir.config import _resolve

    schema = load_schema()
    missing = []
    for key in all_keys(schema):
        node = schema
        for part in key.split("."):
            node = _resolve(node, schema)["properties"][part]
        if not (node.get("description") or _resolve(node, schema).get("description")):
            missing.append(key)
    assert missing == []
