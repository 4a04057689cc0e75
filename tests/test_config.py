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


# ---------------------------------------------------------------- the old tool's keys, --config strings, rounds

def test_old_tool_keys_are_aliases_reported_once(caplog):
    import logging

    from agir.config import ALIASES, fold_aliases, load_config

    caplog.set_level(logging.INFO, logger="agir")
    cfg = load_config(None, overrides=[f"{old}=" + ("2" if "epochs" in old else "x") for old in ALIASES
                                       if not old.endswith(("save_images", "project_id"))]
                      + ["seg_inference.output.save_images=true", "cvat_upload.project_id=7"])
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["encoder"] == "x" and cfg["train"]["arch"] == "x"
    assert cfg["seg_inference"]["overlays"] is True and cfg["cvat"]["project_id"] == 7
    tree = {"train": {"model": {"arch": "FPN", "encoder_name": "resnet34"}, "max_epochs": 3}}
    fold_aliases(tree)
    assert tree == {"train": {"arch": "FPN", "encoder": "resnet34", "epochs": 3}}
    lines = [r.getMessage() for r in caplog.records if "AgIR-CVToolkit's name" in r.getMessage()]
    assert len(lines) == len(set(lines)) and any("using train.epochs" in ln for ln in lines)


def test_config_strings_from_snakemake_are_typed_by_the_schema():
    from agir.config import coerce_to_schema, load_schema

    cfg = {"query": {"limit": "20", "filters": "state=NC", "sample": "random:n=3"}, "train": {"lr": "0.01"},
           "seg_inference": {"overlays": "false", "model": {"ckpt_path": "null"}}}
    coerce_to_schema(cfg, load_schema())
    assert cfg["query"] == {"limit": 20, "filters": "state=NC", "sample": "random:n=3"}
    assert cfg["train"]["lr"] == 0.01 and cfg["seg_inference"]["overlays"] is False


def test_round_config_is_project_config_plus_saved_settings(tmp_path):
    from agir.config import list_rounds, load_config, round_config

    base = load_config(None, overrides=[f"io.out_root={tmp_path}"])
    run = tmp_path / "p" / "round_002"
    run.mkdir(parents=True)
    (run / "overrides.yaml").write_text("train:\n  max_epochs: 3\nproject:\n  subname: elsewhere\n")
    cfg = round_config(base, tmp_path, "p", "round_002")
    assert cfg["train"]["epochs"] == 3 and cfg["project"]["subname"] == "round_002"
    assert round_config(base, tmp_path, "p", "round_002", command_line={"train": {"epochs": 5}})["train"]["epochs"] == 5
    (run / "overrides.yaml").write_text("train:\n  epochs: [\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        round_config(base, tmp_path, "p", "round_002")
    assert list_rounds(tmp_path) == [run]


# ---------------------------------------------------------------- io.out_root: where the runs are

def test_out_root_precedence_and_the_remembered_choice(tmp_path):
    from agir.config import (
        OUT_ROOT_POINTER,
        choose_out_root,
        effective_out_root,
        remember_out_root,
        workflow_out_root,
    )

    # nothing chosen: the config's value, spelled one way (rule outputs and targets must match textually)
    assert effective_out_root("./outputs/runs/", tmp_path).path == "outputs/runs"
    chosen = choose_out_root(None, ["io.out_root=/scratch/me/runs/"], tmp_path)
    assert (chosen.path, chosen.explicit, chosen.instead_of) == ("/scratch/me/runs", True, "outputs/runs")
    assert "remembered" in remember_out_root(tmp_path, chosen, "agir-cvtoolkit query -o io.out_root=/scratch/me/runs")
    assert remember_out_root(tmp_path, chosen) is None  # unchanged: said once
    # later commands and the Snakefile (plain snakemake) in this folder find it without repeating it
    assert choose_out_root(None, [], tmp_path).path == "/scratch/me/runs"
    assert workflow_out_root({"io": {"out_root": "outputs/runs"}}, {}, tmp_path, environ={}).path == "/scratch/me/runs"
    # what is typed wins: `snakemake --config io=...`, then the CLI's choice for the Snakemake it starts
    assert workflow_out_root({"io": {"out_root": "x"}}, {"io": {"out_root": "y"}}, tmp_path, {}).path == "y"
    env = {"AGIR_RUN_OUT_ROOT": "/z"}
    assert workflow_out_root({"io": {"out_root": "outputs/runs"}}, {}, tmp_path, env).path == "/z"
    # a config that now says something else wins over the remembered choice (it replaced outputs/runs only)
    assert workflow_out_root({"io": {"out_root": "/elsewhere"}}, {}, tmp_path, {}).path == "/elsewhere"
    # -o io.out_root=null: back to the config's value, and the folder forgets its choice
    back = choose_out_root(None, ["io.out_root=null"], tmp_path)
    assert back.path == "outputs/runs" and "removed" in remember_out_root(tmp_path, back)
    assert not (tmp_path / OUT_ROOT_POINTER).exists()
    assert choose_out_root(None, [], tmp_path).path == "outputs/runs"


def test_out_root_of_a_config_file_is_remembered_and_a_broken_pointer_is_one_line(tmp_path, repo_root):
    from agir.config import OUT_ROOT_POINTER, choose_out_root, remember_out_root

    cfg = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    cfg["io"]["out_root"] = "/scratch/runs"
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    chosen = choose_out_root(tmp_path / "cluster.yaml", [], tmp_path)
    assert (chosen.path, chosen.explicit, chosen.instead_of) == ("/scratch/runs", True, "outputs/runs")
    remember_out_root(tmp_path, chosen)
    assert choose_out_root(None, [], tmp_path).path == "/scratch/runs"  # later, without --config FILE
    (tmp_path / OUT_ROOT_POINTER).write_text("out_root: [\n")
    with pytest.raises(ConfigError, match=r"out_root.yaml: invalid YAML at line \d+.*delete it"):
        choose_out_root(None, [], tmp_path)


def test_report_rounds_are_the_rounds_of_the_report_targets(tmp_path):
    from agir.workflow import report_rounds

    out = "outputs/runs"
    assert report_rounds(["snakemake", "-n"], out, tmp_path) is None
    assert report_rounds(["snakemake", "--report", "r.html"], out, tmp_path) == []
    argv = ["snakemake", "--cores", "2", "outputs/runs/demo/round_002/report/summary.json",
            "--report", "outputs/runs/demo/round_002/report.html", "--configfile", "outputs/runs/demo/x/o.yaml",
            f"{tmp_path}/outputs/runs/demo/round_003/infer/manifest.jsonl"]
    assert report_rounds(argv, out, tmp_path) == [("demo", "round_002"), ("demo", "round_003")]
    argv = ["snakemake", f"--report={tmp_path}/r.html", f"{tmp_path}/scratch/p/r9/report/summary.json"]
    assert report_rounds(argv, str(tmp_path / "scratch"), tmp_path) == [("p", "r9")]


def test_schema_parsed_once_per_file_version_and_handed_out_as_copies(tmp_path):
    from agir.config import load_schema

    path = tmp_path / "schema.yaml"
    path.write_text("type: object\nproperties: {a: {type: integer, default: 1}}\n")
    first = load_schema(path)
    first["properties"]["a"]["default"] = 99  # a caller's change stays its own
    assert load_schema(path)["properties"]["a"]["default"] == 1
    path.write_text("type: object\nproperties: {a: {type: integer, default: 22}}\n")  # edited: read again
    assert load_schema(path)["properties"]["a"]["default"] == 22
