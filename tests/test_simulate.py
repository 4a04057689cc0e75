"""agir.simulate: the simulated-annotator benchmark (fast pieces, plus one --quick run through the CLI)."""

from __future__ import annotations

import math

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
)
from agir.simulate.effort import effort, hinted_correction
from agir.simulate.model import round_classes
from agir.simulate.report import read_results, summarize, validation_check


def test_images_to_reach_interpolates_and_reports_never():
    xs, ys = [10, 25, 40], [0.5, 0.6, 0.8]
    assert images_to_reach(xs, ys, 0.7) == pytest.approx(32.5)
    assert images_to_reach(xs, ys, 0.4) == 10.0
    assert images_to_reach(xs, ys, 0.81) is None


def test_effort_counts_changed_relabelled_pixels_and_components():
    truth = np.zeros((6, 6), np.uint8)
    truth[0:2, 0:2] = 1  # a crop the pre-label calls species 2: 4 relabelled pixels, one component
    truth[4:6, 4:6] = 3  # a weed the pre-label missed: 4 changed pixels, another component
    truth[5, 0] = 255  # unlabelled: never counted
    pre = np.zeros_like(truth)
    pre[0:2, 0:2] = 2
    pre[5, 0] = 1
    assert effort(pre, truth) == {"changed_px": 8, "class_px": 4, "clicks": 2, "effort": 14}
    assert changed_fraction(pre, truth) == pytest.approx(8 / 35)


def test_hinted_annotator_fixes_only_inside_the_boxes():
    truth = np.zeros((8, 8), np.uint8)
    truth[1:3, 1:3] = 1
    truth[6:8, 6:8] = 2
    pre = np.zeros_like(truth)
    fixed = hinted_correction(pre, truth, [[0, 0, 4, 4]])
    assert (fixed[:4, :4] == truth[:4, :4]).all() and (fixed[6:, 6:] == 0).all()


def test_round_class_set_keeps_order_and_appends_new_species():
    names = ["soybean", "barley", "horseweed"]
    t1 = np.array([[0, 2]], np.uint8)
    t2 = np.array([[3, 1, 255]], np.uint8)
    assert round_classes([], [t1], names) == ["barley"]
    assert round_classes(["barley"], [t2], names) == ["barley", "soybean", "horseweed"]


def test_repeat_factor_sampling_draws_rare_frames_more_often():
    from agir.simulate.model import repeat_factors

    labels = np.zeros((50, 4, 4), np.uint8)
    labels[:, 0, 0] = 1  # a crop everywhere
    labels[0, 1, 1] = 2  # a weed in 1 of 50 frames: sqrt(0.3 / 0.02) = 3.87
    r = repeat_factors(labels, 3, 0.3)
    assert r[0] == pytest.approx(np.sqrt(0.3 / 0.02)) and np.all(r[1:] == 1.0)
    assert np.all(repeat_factors(labels, 3, 0.0) == 1.0)


def test_agir_pool_has_sequences_rare_weeds_and_a_balanced_test_set():
    from agir.demo.sequences import CLASSES, RARE, make_balanced_set, make_pool

    pool = make_pool(groups=20, days=3, size=128, seed=0)
    assert len(pool) == 60 and len({f.group_id for f in pool}) == 20
    assert np.mean([(f.truth == 0).mean() for f in pool]) > 0.85  # mostly background (60 pots x 6 days: 89 %)
    for i, name in enumerate(CLASSES, start=1):
        share = np.mean([(f.truth == i).any() for f in pool])
        assert (0 < share <= 0.1) if name in RARE else share > 0.25, name
    seq = [f for f in pool if f.group_id == pool[0].group_id]
    assert [f.day for f in seq] == [0, 1, 2] and len({f.meta["category_common_name"] for f in seq}) == 1
    assert (seq[2].truth > 0).sum() > (seq[0].truth > 0).sum()  # the plant grows
    test = make_balanced_set(per_species=2, days=3, size=128, seed=5)
    counts = [sum((f.truth == i).any() for f in test) for i in range(1, len(CLASSES) + 1)]
    assert min(counts) >= 2 and len(test) == 2 * len(CLASSES)


def _rows(strategy, curves, efforts):
    out = []
    for seed, curve in enumerate(curves):
        for r, v in enumerate(curve):
            out.append({"seed": seed, "strategy": strategy, "round": r, "annotated": 10 + 10 * r, "class_miou": v,
                        "rare_iou": v / 2, "effort": None if r == 0 else efforts})
    return out


def test_summary_effort_ratio_paired_difference_and_gain():
    cfg = SimConfig(strategies=("random", "veg_random", "entropy"), rounds=2, seeds=(0, 1, 2))
    full = [{"seed": s, "strategy": "_full_pool", "round": 2, "annotated": 100, "class_miou": 0.8} for s in range(3)]
    results = (full + _rows("veg_random", [[0.5, 0.6, 0.8]] * 3, 100)
               + _rows("random", [[0.5, 0.6, 0.7]] * 3, 100)
               + _rows("entropy", [[0.5, 0.8, 0.8], [0.5, 0.78, 0.8], [0.5, 0.79, 0.8]], 100))
    s = summarize(results, cfg, boot=200)
    assert s["full_pool_gain"] == pytest.approx(0.3) and s["target"] == pytest.approx(0.76)
    assert s["baseline"] == "veg_random"
    e = s["effort_ratio"]
    # veg_random reaches 0.76 at 100 + 100 * 0.16 / 0.2 = 180; entropy's mean curve at 100 * 0.26 / 0.29
    assert e["veg_random"]["ratio"] == pytest.approx(1.0)
    assert e["entropy"]["ratio"] == pytest.approx(100 * 0.26 / (0.79 - 0.5) / 180)
    assert math.isinf(e["random"]["ratio"])  # never reaches the target
    lines = "\n".join(format_lines(s))
    assert "full_pool_gain=0.3000 (ok;" in lines and "effort_ratio_random=inf" in lines
    assert "effort_ratio_entropy_ci95=" in lines and "rare_iou_entropy=0.4000" in lines
    assert s["paired"]["random_vs_veg_random"]["mean"] == pytest.approx(-0.05)
    assert "paired_diff_entropy_vs_random=+0.1450" in lines
    assert s["equal_effort"]["random_vs_veg_random"]["mean"] == pytest.approx(-0.1)  # both at effort 200


def test_equal_effort_difference_compares_curves_at_the_same_effort():
    cfg = SimConfig(strategies=("veg_random", "cost_aware"), rounds=2, seeds=(0, 1, 2))
    # cost_aware picks cheap frames: half the effort per round, less mIoU per frame
    results = (_rows("veg_random", [[0.5, 0.6, 0.8]] * 3, 100)
               + _rows("cost_aware", [[0.5, 0.6, 0.7], [0.5, 0.62, 0.7], [0.5, 0.58, 0.7]], 50))
    s = summarize(results, cfg, boot=50)
    # at effort 100 (cost_aware's total): cost_aware 0.7, veg_random 0.6 (per frame it is behind: -0.05, -0.04, -0.06)
    p = s["equal_effort"]["cost_aware_vs_veg_random"]
    assert p["mean"] == pytest.approx(0.1) and p["effort"] == pytest.approx(100) and p["n"] == 3
    assert s["paired"]["cost_aware_vs_veg_random"]["mean"] == pytest.approx(-0.05)
    assert "equal_effort_diff_cost_aware_vs_veg_random=+0.1000" in "\n".join(format_lines(s))
    # the validation check reads val_class_miou instead (here: the test curves shifted down by 0.1)
    val = validation_check([{**r, "val_class_miou": r["class_miou"] - 0.1} for r in results], cfg, boot=50)
    assert val["equal_effort"]["cost_aware_vs_veg_random"]["mean"] == pytest.approx(0.1)
    assert validation_check(results, cfg) == {}  # no validation figures in the rows: nothing to check


def test_bad_settings_are_one_line_errors():
    with pytest.raises(AgirError, match="unknown"):
        SimConfig(strategies=("random", "bogus")).check()
    with pytest.raises(AgirError, match="--pool"):
        SimConfig(pool="nope", strategies=("random",)).check()
    with pytest.raises(AgirError, match="exceeds the pool"):
        SimConfig(groups=2, days=5, initial=5, rounds=2, per_round=5, strategies=("random",)).check()
    with pytest.raises(AgirError, match="--seeds"):
        config_from_args(build_parser().parse_args(["--seeds", "a,b"]))
    assert main(["--strategies", "nope", "--out", "/nonexistent/never-written"]) == 2


def test_quick_run_through_the_cli(tmp_path, capsys):
    from agir.cli import main as agir_cvtoolkit

    out = tmp_path / "sim"
    strategies = "random,veg_random,power_cap1"  # power sampling, at most 1 frame of a pot per round
    # through the command people type: agir-cvtoolkit simulate --quick ...
    assert agir_cvtoolkit(["simulate", "--quick", "--out", str(out), "--strategies", strategies, "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    for key in ("full_pool_gain=", "effort_ratio_power_cap1=", "effort_ratio_power_cap1_ci95=", "rare_iou_power_cap1=",
                "paired_diff_power_cap1_vs_random=", "hinted_effort_fraction=", "hinted_iou_fraction="):
        assert key in printed, key
    rows = [r for r in read_results(out) if r["seed"] == 0]  # results_seed{s}_{task}.jsonl
    assert [r["annotated"] for r in rows if r["strategy"] == "_full_pool"] == [36]
    pc = [r for r in rows if r["strategy"] == "power_cap1"]
    assert [r["round"] for r in pc] == [0, 1, 2] and [r["annotated"] for r in pc] == [4, 8, 12]
    for r in pc[1:]:
        assert r["transfer"].startswith("initialised from previous round: kept")
        assert r["effort"] == r["changed_px"] + r["class_px"] + r["clicks"] and len(set(r["selected"])) == 4
        assert r["groups_picked"] == 4  # _cap1: four picks from four different pots
        assert r["classes"][: len(pc[0]["classes"])] == pc[0]["classes"]  # old classes keep their index
    records = (out / "data" / "records.jsonl").read_text()
    assert '"group_id": "pot000"' in records
    assert (out / "al_curve.png").stat().st_size > 1000 and "| power_cap1 | 2 | 12 |" in (out / "table.md").read_text()
    assert main(["--out", str(out), "--summarize-only"]) == 0  # rebuilds from the run's saved settings
    printed = capsys.readouterr().out
    assert "hinted_iou_fraction=" in printed and "val_effort_ratio_power_cap1=" in printed
    before = sorted((p.name, p.read_text()) for p in out.glob("results_seed*.jsonl"))
    # a resumed run of the same settings keeps every finished task (2 round-0 models + 2 x 4 result files)
    assert main(["--quick", "--out", str(out), "--strategies", strategies, "--jobs", "1", "--resume"]) == 0
    assert "resume: 10 finished task files kept" in capsys.readouterr().out
    assert sorted((p.name, p.read_text()) for p in out.glob("results_seed*.jsonl")) == before


def test_a_task_gives_the_same_model_whatever_ran_before_in_its_process():
    """Weights are drawn from the task's seed, so a resumed or re-run task reproduces its rows."""
    import torch

    from agir.simulate import model as M

    cfg = SimConfig(crop_size=32, batch_size=2)
    rgb = [np.full((32, 32, 3), v, np.uint8) for v in (40, 200)]
    truth = [np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint8)]

    def one_task() -> dict:
        torch.rand(7)  # another task ran before in this worker
        m = M.build(cfg, ["soybean"], [0.5] * 3, [0.25] * 3, seed=3)
        M.train(cfg, m, rgb, truth, ["soybean"], 2, 0.003, seed=3)
        return {k: v.clone() for k, v in m.net.state_dict().items()}

    a, b = one_task(), one_task()
    assert all(torch.equal(a[k], b[k]) for k in a)
