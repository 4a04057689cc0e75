"""A round's class set (agir.classes): order, kept indices, new species appended, binary mode, the rule's build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agir.classes import (
    ROUND_CLASSES,
    build_round_classes,
    built_before_class_sets,
    class_list,
    class_names,
    class_set_sources,
    earlier_class_lists,
    read_class_entries,
    read_round_classes,
    round_class_set,
)
from agir.errors import AgirError
from agir.masks import make_classes, write_classes
from agir.runs import write_json


def tiny_checkpoint(path: Path, classes: list[str]) -> Path:
    from agir.checkpoint import build_model, save_checkpoint

    model = build_model("Unet", "resnet18", 3, len(classes) + 1)
    save_checkpoint(path, model.state_dict(), arch="Unet", encoder="resnet18", in_channels=3, classes=classes,
                    mean=[0.5] * 3, std=[0.25] * 3, tile_size=64, overlap=0.25, metrics={}, config={})
    return path


def species_cfg(**classes):
    return {"classes": {"mode": "species", "names": None, **classes}}


def rec(cid: str, name: str, color: str | None = None) -> dict:
    r = {"cutout_id": cid, "image_id": cid, "category_common_name": name}
    if color:
        r["category_hex"] = color
    return r


def index_of(doc: dict) -> dict[str, int]:
    return {c["name"]: c["index"] for c in doc["classes"]}


def test_first_round_is_its_records_species_sorted_all_new():
    doc = round_class_set(species_cfg(), record_species=["Cereal Rye", "barley", "barley"],
                          colors={"barley": "#d66edd"})
    assert class_names(doc) == ["barley", "cereal rye"]
    assert index_of(doc) == {"barley": 1, "cereal rye": 2}
    assert doc["new"] == ["barley", "cereal rye"] and doc["earlier"] == []
    assert doc["classes"][0]["color"] == "#d66edd"


def test_second_round_keeps_old_indices_and_appends_a_new_species():
    round1 = make_classes(["barley"], {"barley": "#d66edd"})
    doc = round_class_set(species_cfg(), earlier=[round1], checkpoint_classes=["barley"],
                          record_species=["cereal rye"], colors={"cereal rye": "#123456", "barley": "#000001"})
    assert index_of(doc) == {"barley": 1, "cereal rye": 2}
    assert doc["new"] == ["cereal rye"] and doc["earlier"] == ["barley"]
    assert doc["from_checkpoint"] == ["barley"] and doc["from_records"] == ["cereal rye"]
    # an earlier round's colour wins over the database's for the same name (CVAT labels keep their colour)
    assert doc["classes"][0]["color"] == "#d66edd" and doc["classes"][1]["color"] == "#123456"


def test_third_species_on_top_and_earlier_order_not_alphabetical():
    r1 = make_classes(["soybean"])
    r2 = make_classes(["soybean", "barley"])
    doc = round_class_set(species_cfg(), earlier=[r1, r2], checkpoint_classes=["soybean", "barley"],
                          record_species=["barley", "aaa weed"])
    assert class_names(doc) == ["soybean", "barley", "aaa weed"]
    assert index_of(doc)["aaa weed"] == 3 and doc["new"] == ["aaa weed"]


def test_checkpoint_classes_come_before_the_records_species():
    doc = round_class_set(species_cfg(), checkpoint_classes=["zea", "barley"], record_species=["alfalfa"])
    assert class_names(doc) == ["zea", "barley", "alfalfa"]


def test_explicit_names_order_and_restrict_the_records():
    doc = round_class_set(species_cfg(names=["Wheat", "barley"]), record_species=["barley", "rye"])
    assert class_names(doc) == ["wheat", "barley"]


def test_binary_mode_is_plant_whatever_the_sources():
    doc = round_class_set({"classes": {"mode": "binary"}}, earlier=[make_classes(["plant"])],
                          checkpoint_classes=["barley"], record_species=["rye"])
    assert doc["mode"] == "binary" and class_names(doc) == ["plant"] and doc["new"] == []
    assert round_class_set({"classes": {"mode": "binary"}})["new"] == ["plant"]


def test_no_species_anywhere_is_plant_and_a_binary_checkpoint_adds_no_species():
    assert class_names(round_class_set(species_cfg())) == ["plant"]
    doc = round_class_set(species_cfg(), checkpoint_classes=["plant"], record_species=["rye"])
    assert class_names(doc) == ["rye"]


def test_previous_set_of_the_same_round_is_kept_but_not_earlier():
    doc = round_class_set(species_cfg(), previous=make_classes(["barley"]), record_species=["wheat"])
    assert class_names(doc) == ["barley", "wheat"] and doc["new"] == ["barley", "wheat"]
    assert doc["previous"] == ["barley"]


def test_too_many_classes_is_one_clear_error():
    with pytest.raises(AgirError, match="at most 254"):
        round_class_set(species_cfg(), record_species=[f"s{i:03d}" for i in range(255)])


def test_read_round_classes_checks_indices(tmp_path):
    write_json(tmp_path / ROUND_CLASSES, {"classes": [{"index": 1, "name": "a", "color": "#000000"},
                                                      {"index": 1, "name": "b", "color": "#000000"}]})
    with pytest.raises(AgirError, match="repeated"):
        read_round_classes(tmp_path)
    with pytest.raises(AgirError, match="missing"):
        read_round_classes(tmp_path / "nope" / ROUND_CLASSES)


# ---------------------------------------------------------------- building the file (rule round_classes)


def make_run(tmp_path: Path, name: str = "round_002") -> tuple[dict, Path]:
    cfg = {"project": {"name": "p", "subname": name}, "io": {"out_root": str(tmp_path)},
           "classes": {"mode": "species", "names": None}, "seg_inference": {"model": {"ckpt_path": None}}}
    run = tmp_path / "p" / name
    run.mkdir(parents=True)
    return cfg, run


def test_build_from_earlier_round_records_and_checkpoint(tmp_path, caplog):
    cfg, run = make_run(tmp_path)
    r1 = tmp_path / "p" / "round_001"
    write_json(r1 / ROUND_CLASSES, round_class_set(species_cfg(), record_species=["barley"],
                                                   colors={"barley": "#d66edd"}))
    ckpt = tiny_checkpoint(r1 / "model" / "best.pth", ["barley"])
    write_json(run / "query" / "query.json", [rec("c1", "cereal rye", "#aabbcc"), rec("c2", "cereal rye")])
    caplog.set_level("INFO")
    doc = build_round_classes(cfg, run, query=run / "query" / "query.json", ckpt=ckpt,
                              earlier=earlier_class_lists([r1]))
    saved = read_round_classes(run)
    assert saved == json.loads(json.dumps(doc))
    assert class_list(saved) == [{"index": 1, "name": "barley", "color": "#d66edd"},
                                 {"index": 2, "name": "cereal rye", "color": "#aabbcc"}]
    assert saved["new"] == ["cereal rye"] and saved["from_checkpoint"] == ["barley"]
    assert saved["checkpoint"] == str(ckpt)
    lines = [r.getMessage() for r in caplog.records if "round round_002 has" in r.getMessage()]
    assert lines == ["classes: round round_002 has 2 class(es) [1 barley, 2 cereal rye]; new this round: cereal rye"]


def test_a_new_query_in_the_same_round_grows_its_set(tmp_path):
    cfg, run = make_run(tmp_path, "round_001")
    q = run / "query" / "query.json"
    write_json(q, [rec("c1", "barley")])
    build_round_classes(cfg, run, query=q)
    write_json(q, [rec("c2", "wheat")])
    doc = build_round_classes(cfg, run, query=q)
    assert class_names(doc) == ["barley", "wheat"] and doc["previous"] == ["barley"]
    # a switch to binary mode starts afresh
    doc = build_round_classes({**cfg, "classes": {"mode": "binary"}}, run, query=q)
    assert class_names(doc) == ["plant"]


def test_rounds_built_before_class_sets_fall_back_to_their_dataset_and_mask_classes(tmp_path):
    cfg, run = make_run(tmp_path, "round_003")
    old = tmp_path / "p" / "round_001"
    write_classes(old / "dataset", make_classes(["maize"]))
    write_classes(old / "infer" / "masks", make_classes(["soybean", "maize"]))
    (old / "dataset" / "index.csv").write_text("sample_id\n")
    newer = tmp_path / "p" / "round_002"
    write_json(newer / ROUND_CLASSES, round_class_set(species_cfg(), earlier=[make_classes(["maize", "soybean"])],
                                                      record_species=["barley"]))
    sources = class_set_sources([old, newer])
    assert sources == [str(old / "dataset" / "classes.json"), str(old / "infer" / "masks" / "classes.json"),
                       str(newer / ROUND_CLASSES)]
    assert [c["name"] for c in read_class_entries(sources[2])] == ["maize", "soybean", "barley"]
    # one list per round: round_001's two files merged (dataset first), round_002's set
    lists = earlier_class_lists([old, newer, tmp_path / "p" / "nothing"])
    assert [[c["name"] for c in lst] for lst in lists] == [["maize", "soybean"], ["maize", "soybean", "barley"]]
    write_json(run / "query" / "query.json", [rec("x", "alfalfa")])
    doc = build_round_classes(cfg, run, query=run / "query" / "query.json", earlier=lists)
    assert class_names(doc) == ["maize", "soybean", "barley", "alfalfa"] and doc["new"] == ["alfalfa"]
    # round_001 has outputs but no set: its stages do not take one (nothing of it is rebuilt)
    assert built_before_class_sets(old) and not built_before_class_sets(newer) and not built_before_class_sets(run)


def test_images_round_without_records_takes_the_checkpoint_classes(tmp_path):
    cfg, run = make_run(tmp_path)
    ckpt = tiny_checkpoint(tmp_path / "m.pth", ["barley", "wheat"])
    doc = build_round_classes(cfg, run, ckpt=ckpt)
    assert class_names(doc) == ["barley", "wheat"] and doc["from_records"] == []


def test_a_round_pre_labelling_with_its_own_model_keeps_its_dataset_classes(tmp_path):
    """The old tool's Example 2 in one run folder: its own model (not an input) knows the dataset's classes."""
    cfg, run = make_run(tmp_path, "round_001")
    write_classes(run / "dataset", make_classes(["barley", "weed x"]))  # preprocess appended "weed x"
    write_json(run / "query" / "query.json", [rec("c", "cereal rye")])
    doc = build_round_classes(cfg, run, query=run / "query" / "query.json")
    assert class_names(doc) == ["barley", "weed x", "cereal rye"] and doc["previous"] == ["barley", "weed x"]


def test_prelabeler_choice_names_the_checkpoint(tmp_path):
    cfg, run = make_run(tmp_path)
    write_json(run / "infer" / "prelabeler.json", {"chosen": "baseline"})
    write_json(run / "query" / "query.json", [rec("a", "rye")])
    doc = build_round_classes(cfg, run, query=run / "query" / "query.json",
                              prelabeler=run / "infer" / "prelabeler.json")
    assert doc["checkpoint"] is None and class_names(doc) == ["rye"]


def test_an_old_tool_state_dict_adds_no_classes_of_its_own(tmp_path):
    import torch

    from agir.checkpoint import build_model

    cfg, run = make_run(tmp_path)
    torch.save(build_model("Unet", "resnet18", 3, 2).state_dict(), tmp_path / "old.pth")
    write_json(run / "query" / "query.json", [rec("a", "rye")])
    doc = build_round_classes(cfg, run, query=run / "query" / "query.json", ckpt=tmp_path / "old.pth")
    assert class_names(doc) == ["rye"] and doc["from_checkpoint"] == []
