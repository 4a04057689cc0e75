"""Report pictures: a fixed set of files for every round, CVAT changes across rounds, the pre-labeler choice,
and a colour legend of the classes on every gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agir import report
from agir.runs import read_json, write_json

CLASSES = [{"index": 1, "name": "barley", "color": "#d66edd"}, {"index": 2, "name": "clover", "color": "#12ab34"}]


def cfg_for(tmp_path: Path, subname: str, **project) -> dict:
    return {"project": {"name": "p", "subname": subname, **project}, "io": {"out_root": str(tmp_path / "runs")}}


def run_of(tmp_path: Path, subname: str) -> Path:
    return tmp_path / "runs" / "p" / subname


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def rounds(tmp_path) -> Path:
    """Three rounds: 1 and 2 downloaded from CVAT, 3 only uploaded (its people are still at work)."""
    for name, frac in (("round_001", 0.30), ("round_002", 0.12)):
        write_json(run_of(tmp_path, name) / "cvat" / "metrics.json",
                   {"upload": {"frames": 4, "shapes": 9}, "download": {"changed_fraction_mean": frac, "frames": 4}})
    write_json(run_of(tmp_path, "round_003") / "cvat" / "metrics.json", {"upload": {"frames": 5}})
    write_json(run_of(tmp_path, "round_003") / "query" / "query.json",
               [{"category_common_name": "barley", "estimated_area_bin": "small"}])
    return tmp_path


def test_every_round_writes_the_fixed_set_of_files(rounds):
    run = run_of(rounds, "round_003")
    summary = report.run_report_stage(cfg_for(rounds, "round_003", until="infer"), run, ["query", "infer"])
    for name in report.REPORT_FILES:
        assert (run / "report" / name).is_file(), name
        if name.endswith(".png"):
            assert is_png(run / "report" / name), name
    assert set(report.REPORT_FILES) == {
        "summary.json", "class_sets.png", "query_summary.png", "prelabel_quality.png", "prelabeler.png", "cvat_changes.png",
        "dataset_stats.png", "training_curves.png", "test_iou.png", "test_predictions.png"}
    assert summary["not_in_round"] == {
        "download": "download is not part of this round (project.until is infer)",
        "preprocess": "preprocess is not part of this round (project.until is infer)",
        "train": "train is not part of this round (project.until is infer)",
    }
    assert read_json(run / "report" / "summary.json")["query"]["records"] == 1
    assert summary["prelabeler"] is None  # no infer/prelabeler.json: a placeholder picture


def test_class_sets_of_every_round_up_to_this_one(tmp_path):
    from agir.classes import round_class_set, write_round_classes

    species = {"classes": {"mode": "species"}}
    first = round_class_set(species, record_species=["barley"])
    second = round_class_set(species, earlier=[first["classes"]], record_species=["cereal rye"])
    third = round_class_set(species, earlier=[first["classes"], second["classes"]], record_species=["hairy vetch"])
    run_of(tmp_path, "round_001").mkdir(parents=True)  # made before class sets existed
    for name, doc in (("round_002", first), ("round_003", second), ("round_004", third)):
        write_round_classes(run_of(tmp_path, name) / "classes.json", doc)
    run = run_of(tmp_path, "round_003")
    summary = report.run_report_stage(cfg_for(tmp_path, "round_003", until="query"), run, ["query"])
    assert summary["class_sets"] == [
        {"round": "round_001", "classes": None, "new": None, "error": None},
        {"round": "round_002", "classes": ["barley"], "new": ["barley"], "error": None},
        {"round": "round_003", "classes": ["barley", "cereal rye"], "new": ["cereal rye"], "error": None},
    ]  # round_004 comes after this report's round
    assert summary["classes"] == {"classes": ["barley", "cereal rye"], "new": ["cereal rye"]}
    assert read_json(run / "report" / "summary.json")["classes"] == summary["classes"]
    assert is_png(run / "report" / "class_sets.png")
    # the report of a round without a class set still draws the picture
    lone = report.run_report_stage(cfg_for(tmp_path, "round_001", until="query"), run_of(tmp_path, "round_001"),
                                   ["query"])
    assert lone["classes"] == {"classes": None, "new": None}
    assert is_png(run_of(tmp_path, "round_001") / "report" / "class_sets.png")


def test_cvat_skipped_by_label_source_says_so(rounds):
    run = run_of(rounds, "round_003")
    cfg = cfg_for(rounds, "round_003", until="train")
    cfg["preprocess"] = {"label_source": "db_masks"}
    summary = report.run_report_stage(cfg, run, ["query", "infer", "preprocess", "train"])
    assert summary["not_in_round"] == {
        "download": "download is not part of this round (preprocess.label_source is db_masks)"}
    assert is_png(run / "report" / "training_curves.png") and summary["train"]["test_miou"] is None


def test_cvat_changes_across_the_projects_rounds(rounds):
    out = rounds / "cvat_changes.png"
    result = report.cvat_changes(run_of(rounds, "round_003"), out, cfg_for(rounds, "round_003"))
    # every round that downloaded annotations, in round order; round 3 has not been downloaded yet
    assert [(r["round"], r["changed_pixel_fraction"]) for r in result["rounds"]] == [
        ("round_001", 0.30), ("round_002", 0.12)]
    assert is_png(out)


def test_cvat_changes_before_any_download_is_a_placeholder(tmp_path):
    out = tmp_path / "c.png"
    assert report.cvat_changes(run_of(tmp_path, "round_001"), out, cfg_for(tmp_path, "round_001")) == {"rounds": []}
    assert is_png(out)


def test_prelabeler_picture_names_the_chosen_one(tmp_path):
    run = run_of(tmp_path, "round_002")
    write_json(run / "infer" / "prelabeler.json", {
        "chosen": "runs/p/round_001/model/best.pth", "chosen_name": "round_001", "margin": 0.031,
        "reason": "measured better",
        "candidates": [{"name": "baseline", "path": None, "plant_iou": 0.8, "miou": 0.8, "images": 6},
                       {"name": "round_001", "path": "runs/p/round_001/model/best.pth", "plant_iou": 0.831,
                        "miou": 0.4, "images": 6}]})
    got = report.prelabeler_picture(run, run / "report" / "prelabeler.png")
    assert got["chosen"] == "round_001" and got["margin"] == 0.031
    assert [c["name"] for c in got["candidates"]] == ["baseline", "round_001"]
    assert is_png(run / "report" / "prelabeler.png")


def test_training_curves_combine_the_train_stage_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = run_of(tmp_path, "round_001")
    for name in ("loss.png", "miou.png", "test_predictions.png"):
        (run / "model" / "plots").mkdir(parents=True, exist_ok=True)
        plt.imsave(run / "model" / "plots" / name, np.zeros((20, 30, 3)))
    write_json(run / "model" / "metrics.json", {"test": {"mIoU": 0.5, "per_class_iou": {"barley": 0.5}}})
    got = report.training_pictures(run, run / "report")
    assert [Path(p).name for p in got["training_curves.png"]] == ["loss.png", "miou.png"]
    assert Path(got["test_predictions.png"]).name == "test_predictions.png"
    assert got["test_miou"] == 0.5 and is_png(run / "report" / "training_curves.png")


# ---------------------------------------------------------------- colour legends

def legend_labels(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_class_legend_uses_the_classes_json_colours():
    from matplotlib.colors import to_hex

    from agir.legend import class_legend_handles

    handles = class_legend_handles(list(reversed(CLASSES)), ignore=True)
    assert [h.get_label() for h in handles] == ["barley", "clover", "ignore"]
    assert [to_hex(h.get_facecolor()) for h in handles] == ["#d66edd", "#12ab34", "#ffffff"]


def test_prelabel_gallery_carries_a_legend(tmp_path):
    from agir.evaluate import gallery_figure
    from agir.images import write_image

    write_image(tmp_path / "infer" / "images" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    pred = np.zeros((8, 8), np.uint8)
    pred[2:4, 2:4] = 2
    fig = gallery_figure([("a", "infer/images/a.jpg", pred, pred.copy(), CLASSES)], tmp_path, "t")
    assert legend_labels(fig) == ["barley", "clover"]


def test_prediction_grid_carries_a_legend(tmp_path, monkeypatch):
    from agir.train import plots

    seen = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.append(legend_labels(fig)) or path)
    mask = np.zeros((8, 8), np.uint8)
    plots.plot_predictions([("s", np.zeros((8, 8, 3), np.uint8), mask, mask)], CLASSES, tmp_path / "p.png")
    assert seen == [["barley", "clover", "ignore"]]


def test_placeholder_is_a_picture(tmp_path):
    report.placeholder(tmp_path / "x.png", "train is not part of this round (project.until is infer)")
    assert is_png(tmp_path / "x.png")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary file left behind
