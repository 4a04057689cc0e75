"""agir.simulate: the simulated-annotator benchmark (fast pieces, plus one tiny end-to-end smoke run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agir.errors import AgirError
from agir.simulate import (
    SimConfig,
    build_parser,
    changed_fraction,
    config_from_args,
    format_lines,
    images_to_reach,
    main,
    summarize,
)


def test_images_to_reach_interpolates_and_reports_never():
    xs, ys = [10, 25, 40], [0.5, 0.6, 0.8]
    assert images_to_reach(xs, ys, 0.7) == pytest.approx(32.5)
    assert images_to_reach(xs, ys, 0.4) == 10.0
    assert images_to_reach(xs, ys, 0.81) is None


def test_changed_fraction_skips_ignore_pixels():
    truth = np.array([[0, 1], [1, 255]], np.uint8)
    pre = np.array([[0, 0], [1, 1]], np.uint8)
    assert changed_fraction(pre, truth) == pytest.approx(1 / 3)


def _rows(strategy, ious, efforts):
    out = []
    for seed, curve in enumerate(ious):
        for r, v in enumerate(curve):
            out.append({"seed": seed, "strategy": strategy, "round": r, "annotated": 10 + 10 * r, "plant_iou": v,
                        "miou": v, "effort_mean": None if r == 0 else efforts[seed]})
    return out


def test_summary_efficiency_against_random():
    cfg = SimConfig(strategies=("random", "entropy", "margin"), rounds=2, seeds=(0, 1))
    results = (_rows("random", [[0.5, 0.6, 0.7], [0.5, 0.6, 0.7]], [0.2, 0.3])
               + _rows("entropy", [[0.5, 0.7, 0.8], [0.5, 0.7, 0.8]], [0.3, 0.3])
               + _rows("margin", [[0.5, 0.55, 0.6], [0.5, 0.55, 0.62]], [0.1, 0.1]))
    s = summarize(results, cfg)
    eff = s["label_efficiency"]
    assert eff["random"]["ratio"] == pytest.approx(1.0)
    assert eff["entropy"]["ratio"] == pytest.approx(20 / 30)  # reaches 0.7 at round 1
    assert eff["margin"]["reached"] is False
    lines = "\n".join(format_lines(s))
    assert "label_efficiency_entropy=0.667" in lines
    assert "label_efficiency_margin=>1" in lines
    assert "effort_per_image_random_round_1=0.2500 +- 0.0500" in lines
    assert "final_plant_iou_margin=0.6100 +- 0.0100" in lines
    assert s["paired_gain_vs_random"]["entropy"] == pytest.approx(
        {"mean": 0.1, "sd": 0.0, "n": 4, "wins": 4})
    assert "paired_gain_vs_random_margin=-0.0700 +- 0.0212 (" in lines and "0/4 better" in lines


def test_bad_settings_are_one_line_errors():
    with pytest.raises(AgirError, match="unknown"):
        SimConfig(strategies=("random", "bogus")).check()
    with pytest.raises(AgirError, match="exceeds the pool"):
        SimConfig(pool=20, initial=10, rounds=2, per_round=10).check()
    with pytest.raises(AgirError, match="--seeds"):
        config_from_args(build_parser().parse_args(["--seeds", "a,b"]))
    assert main(["--strategies", "nope", "--out", "/nonexistent/never-written"]) == 2


@pytest.mark.slow
def test_smoke_run_tiny_pool(tmp_path, capsys):
    from agir.cli import main as agir_cvtoolkit

    out = tmp_path / "sim"
    # through the command people type: agir-cvtoolkit simulate ...
    rc = agir_cvtoolkit(["simulate", "--out", str(out), "--pool", "6", "--test", "2", "--initial", "2", "--rounds", "1", "--per-round", "2",
               "--strategies", "random,entropy", "--seeds", "0", "--width", "128", "--height", "96",
               "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--crop-size", "64",
               "--tile-size", "128", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "label_efficiency_entropy=" in printed and "effort_per_image_entropy_round_1=" in printed
    rows = [json.loads(line) for line in (out / "results_seed0.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["round"]) for r in rows] == [("random", 0), ("random", 1), ("entropy", 0), ("entropy", 1)]
    # both strategies share the round-0 model; every round-1 model saw 4 images and picked 2 new ones
    assert rows[0]["plant_iou"] == rows[2]["plant_iou"]
    for r in rows[1::2]:
        assert r["annotated"] == 4 and len(set(r["selected"])) == 2 and 0.0 <= r["effort_mean"] <= 1.0
        assert 0.0 <= r["plant_iou"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_efficiency"]["random"]["reached"] is True
    assert (out / "al_curve.png").stat().st_size > 1000 and "| entropy | 1 | 4 |" in (out / "table.md").read_text()
    capsys.readouterr()
    assert main(["--out", str(out), "--summarize-only"]) == 0  # rebuilds from the run's saved settings
    assert "effort_per_image_entropy_round_1=" in capsys.readouterr().out
