"""Config loading, validation messages, dotted overrides and their persistence per run."""

from __future__ import annotations

import pytest
import yaml

from agir.config import (
    all_keys,
    apply_overrides,
    load_config,
    load_schema,
    parse_override,
    persist_overrides,
    persisted_overrides,
    resolve_run_config,
    validate_config,
)
from agir.errors import ConfigError


def test_default_config_is_valid_and_complete(repo_root):
    cfg = load_config(repo_root / "config" / "config.yaml")
    assert cfg["project"]["subname"] == "round_001"
    assert cfg["seg_inference"]["tile"]["overlap"] == 0.25
    # every key the schema names is present in the documented default config
    raw = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    missing = []
    for key in all_keys(load_schema()):
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    # db.* entries are free-form names, not schema properties
    assert missing == []


def test_unknown_key_names_dotted_key_and_suggests():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["seg_inference.tile.sizee=3"])
    assert str(exc.value) == "unknown config key seg_inference.tile.sizee; did you mean seg_inference.tile.size?"


def test_unknown_top_level_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key seg_inferance; did you mean seg_inference\?"):
        load_config(overrides=["seg_inferance.batch_size=2"])


def test_wrong_type_is_one_line():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["seg_inference.batch_size=abc"])
    msg = str(exc.value)
    assert "seg_inference.batch_size" in msg and "integer" in msg and "\n" not in msg


def test_enum_and_range_errors():
    with pytest.raises(ConfigError, match="seg_inference.blend"):
        load_config(overrides=["seg_inference.blend=triangle"])
    with pytest.raises(ConfigError, match="seg_inference.tile.overlap"):
        load_config(overrides=["seg_inference.tile.overlap=1.0"])
    with pytest.raises(ConfigError, match=r"preprocess.split: train\+val\+test = 1.1"):
        load_config(overrides=["preprocess.split.train=0.8"])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a.b=3", ("a.b", 3)),
        ("a.b=0.5", ("a.b", 0.5)),
        ("a.b=true", ("a.b", True)),
        ("a.b=null", ("a.b", None)),
        ("a.b=[1, 2]", ("a.b", [1, 2])),
        ("a.b=hello", ("a.b", "hello")),
        ("a.b='42'", ("a.b", "42")),
        ("a.b=x=y", ("a.b", "x=y")),
        ("a.b=", ("a.b", "")),
    ],
)
def test_parse_override_yaml_values(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_parse_override_rejects(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_override_into_value_is_error():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_snakemake_style_dotted_top_level_keys_are_folded():
    cfg = load_config(validate=False)
    cfg["seg_inference.tile.size"] = 256
    validate_config(cfg)
    assert cfg["seg_inference"]["tile"]["size"] == 256
    assert "seg_inference.tile.size" not in cfg


def test_defaults_filled_for_missing_sections(repo_root):
    cfg = load_config(validate=False)
    del cfg["train"]
    validate_config(cfg)
    assert cfg["train"]["arch"] == "Unet" and cfg["train"]["loss"]["dice"] == 1.0


def test_overrides_persist_per_run(tmp_path, repo_root):
    cfg_file = tmp_path / "config.yaml"
    base = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    base["io"]["out_root"] = str(tmp_path / "runs")
    cfg_file.write_text(yaml.safe_dump(base))

    cfg, run, acc = resolve_run_config(cfg_file, ["seg_inference.tile.size=256", "query.filters=[state=NC]"])
    assert cfg["seg_inference"]["tile"]["size"] == 256
    persist_overrides(run, acc)
    # stored as a config tree that Snakemake reads with --configfile
    assert yaml.safe_load((run / "overrides.yaml").read_text())["seg_inference"] == {"tile": {"size": 256}}
    # a later stage command without the override still sees it
    cfg2, run2, acc2 = resolve_run_config(cfg_file, [])
    assert run2 == run and cfg2["seg_inference"]["tile"]["size"] == 256
    assert persisted_overrides(run) == {"seg_inference.tile.size": 256, "query.filters": ["state=NC"]}
    # a different round does not inherit it
    cfg3, run3, _ = resolve_run_config(cfg_file, ["project.subname=round_002"])
    assert run3 != run and cfg3["seg_inference"]["tile"]["size"] == base["seg_inference"]["tile"]["size"]
