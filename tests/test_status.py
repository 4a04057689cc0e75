"""`agir-cvtoolkit status`: every round of every project, judged by its own saved settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wfutil import REPO, TINY, run_snakemake

from agir import status
from agir.runs import write_json, write_jsonl, write_text


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A config file and hand-made run folders: tiny/round_001 (trained), tiny/round_002 (waiting for CVAT),
    other/round_001 (query only)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    runs = tmp_path / "outputs" / "runs"
    r1 = runs / "tiny" / "round_001"
    write_json(r1 / "query" / "query.json", [{"cutout_id": "a"}, {"cutout_id": "b"}])
    write_json(r1 / "query" / "query_spec.json", {"rows_returned": 2, "rows_matched": 9})
    write_jsonl(r1 / "infer" / "manifest.jsonl", [{"id": "a", "status": "ok"}, {"id": "b", "status": "failed"}])
    write_json(r1 / "dataset" / "metrics.json", {"counts": {"samples": 7, "rejected": 1, "by_split": {
        "train": {"samples": 5}, "val": {"samples": 1}, "test": {"samples": 1}}}})
    write_text(r1 / "dataset" / "index.csv", "sample_id,split\n")
    write_text(r1 / "model" / "best.pth", "x")
    write_json(r1 / "model" / "metrics.json", {"test": {"mIoU": 0.61234}, "best_epoch": 3})

    r2 = runs / "tiny" / "round_002"
    (r2).mkdir(parents=True)
    # round 2 was made with CVAT labels and active selection: its saved settings say so
    (r2 / "overrides.yaml").write_text(yaml.safe_dump({"preprocess": {"label_source": "cvat"}}))
    write_json(r2 / "query" / "query.json", [])
    write_jsonl(r2 / "infer" / "manifest.jsonl", [{"id": "c", "status": "ok"}])
    write_json(r2 / "select" / "selection.json", {
        "strategy": "entropy", "strategy_used": "stratified", "fallback": "no model uncertainty",
        "selected": ["c", "d"], "pool_size": 12, "excluded": {"count": 3, "ids": ["x", "y", "z"]}})
    write_json(r2 / "infer" / "prelabeler.json", {
        "chosen": "outputs/runs/tiny/round_001/model/best.pth", "chosen_name": "round_001",
        "candidates": [{"name": "baseline", "path": None, "plant_iou": 0.81, "miou": 0.81, "images": 4},
                       {"name": "round_001", "path": "outputs/runs/tiny/round_001/model/best.pth",
                        "plant_iou": 0.86, "miou": 0.5, "images": 4}],
        "margin": 0.05, "reason": "round_001 measured better"})
    write_json(r2 / "cvat" / "upload.json", {"tasks": [{"id": 1, "frames": [{"frame": 0}, {"frame": 1}]}]})
    write_json(r2 / "cvat" / "metrics.json", {"upload": {"frames": 2}, "download": {"changed_fraction_mean": 0.125}})

    other = runs / "other" / "round_001"
    write_json(other / "query" / "query.json", [])
    return tmp_path


def no_dry_run(monkeypatch, pending=None, error=None):
    calls = []

    def fake(config_file, overrides, targets, cwd=None):
        calls.append([str(t) for t in targets])
        return status.Plan(pending={Path(p).resolve(): why for p, why in (pending or {}).items()}, error=error)

    monkeypatch.setattr(status, "dry_run_plan", fake)
    return calls


def block(lines: list[str], header: str) -> dict[str, str]:
    """Stage rows (and extra lines by their first word) of the round block under the project `header`."""
    out, inside, in_project = {}, False, False
    for ln in lines:
        if ln.startswith("project "):
            in_project = ln.startswith(f"project {header.split('/')[0]} ")
        elif ln and not ln.startswith(" "):
            inside = in_project and ln.split()[0] == header.split("/")[1]
        elif inside and ln.strip():
            out[ln.split()[0].rstrip(":")] = ln
    return out


def test_lists_every_project_and_round_with_key_numbers(project, monkeypatch):
    calls = no_dry_run(monkeypatch, pending={"outputs/runs/tiny/round_001/model/best.pth": "params changed"})
    lines = status.status_report("config.yaml", [])
    text = "\n".join(lines)
    assert "project tiny (" in text and "project other (" in text
    r1 = block(lines, "tiny/round_001")
    assert "done" in r1["query"] and "2 records of 9 matched" in r1["query"]
    assert "1 ok, 1 failed" in r1["infer"] and "done" in r1["infer"]
    assert "7 samples (train/val/test 5/1/1), 1 rejected" in r1["preprocess"]
    assert "stale (params changed)" in r1["train"] and "test mIoU 0.612, best epoch 3" in r1["train"]
    marked = [i for i, ln in enumerate(lines) if ln.endswith("(configured round)")]
    assert len(marked) == 1 and lines[marked[0]].startswith("round_001")
    assert lines.index("project other (" + str(project / "outputs/runs/other") + ")") < lines.index(
        "project tiny (" + str(project / "outputs/runs/tiny") + ")") < marked[0]
    # one dry run over the existing stage outputs of every listed round, as relative paths
    assert len(calls) == 1
    assert "outputs/runs/tiny/round_001/model/best.pth" in calls[0]
    assert "outputs/runs/tiny/round_002/select/selection.json" in calls[0]
    assert "outputs/runs/other/round_001/query/query.json" in calls[0]
    assert not any("round_002/model" in t for t in calls[0])


def test_rounds_are_judged_by_their_saved_settings(project, monkeypatch):
    no_dry_run(monkeypatch)
    lines = status.status_report("config.yaml", [])
    r1, r2 = block(lines, "tiny/round_001"), block(lines, "tiny/round_002")
    # the project config has label_source db_masks: CVAT is not part of round 1 ...
    assert "not in this round (preprocess.label_source=db_masks)" in r1["upload"]
    # ... but round 2's overrides.yaml made it a CVAT round: uploaded, so download waits for CVAT
    assert "done" in r2["upload"] and "1 task(s), 2 frames" in r2["upload"]
    assert "waiting for CVAT" in r2["download"]
    assert "select" not in r1  # no active selection in round 1
    assert "done" in r2["select"] and "2 of 12 selected" in r2["select"]


def test_selection_prelabeler_and_changed_pixels_lines(project, monkeypatch):
    no_dry_run(monkeypatch)
    r2 = block(status.status_report("config.yaml", []), "tiny/round_002")
    assert r2["selection"].strip() == ("selection: entropy (used stratified: no model uncertainty), 2 of 12 in "
                                       "the pool selected, 3 excluded (annotated in earlier rounds)")
    assert r2["pre-labeler"].strip() == "pre-labeler: round_001 (plant IoU 0.860 on 4 images, +0.050 over baseline)"
    assert r2["annotators"].strip() == "annotators changed 12.5% of the pre-labelled pixels"


def test_each_round_shows_its_class_set_and_what_is_new(project, monkeypatch):
    from agir.classes import round_class_set, write_round_classes

    no_dry_run(monkeypatch)
    runs = project / "outputs/runs/tiny"
    species = {"classes": {"mode": "species"}}
    first = round_class_set(species, record_species=["barley"])
    write_round_classes(runs / "round_001/classes.json", first)
    write_round_classes(runs / "round_002/classes.json", round_class_set(
        species, earlier=[first["classes"]], record_species=["cereal rye", "barley"]))
    write_json(runs / "round_002/model/metrics.json", {"init": {
        "line": "initialised from round_001/model/best.pth: kept 1 class (barley), new head rows for 1 (cereal rye)"}})
    lines = status.status_report("config.yaml", [])
    r1, r2 = block(lines, "tiny/round_001"), block(lines, "tiny/round_002")
    assert r1["classes"].strip() == "classes: 1 (barley); new: 1 (barley)"  # a first round's classes are all new
    assert r2["classes"].strip() == "classes: 2 (barley, cereal rye); new: 1 (cereal rye)"
    assert r2["model"].strip() == ("model: initialised from round_001/model/best.pth: kept 1 class (barley), "
                                   "new head rows for 1 (cereal rye)")
    # the line sits right under the round's name, before the stages
    head = lines.index(next(ln for ln in lines if ln.startswith("round_002")))
    assert lines[head + 1].strip().startswith("classes: 2 ")
    # a round made before class sets existed, and a damaged file, say so in the same place
    assert block(lines, "other/round_001")["classes"].strip() == "classes: \u2014"
    write_text(runs / "round_001/classes.json", "{}")
    r1 = block(status.status_report("config.yaml", []), "tiny/round_001")
    assert r1["classes"].strip().startswith("classes: unreadable (") and "round_001/classes.json" in r1["classes"]
    many = round_class_set(species, record_species=[f"sp{i:02d}" for i in range(12)])
    write_round_classes(runs / "round_001/classes.json", many)
    r1 = block(status.status_report("config.yaml", []), "tiny/round_001")
    assert r1["classes"].strip().startswith("classes: 12 (sp00, sp01, sp02, sp03, sp04, sp05, sp06, sp07, +4 more)")


def test_project_narrows_the_listing(project, monkeypatch):
    calls = no_dry_run(monkeypatch)
    text = "\n".join(status.status_report("config.yaml", [], project="other"))
    assert "project other" in text and "project tiny" not in text
    assert all("/other/" in t for t in calls[0])


def test_failed_stage_shows_the_log_error(project, monkeypatch):
    no_dry_run(monkeypatch)
    write_text(project / "outputs/runs/other/round_001/logs/infer_seg.log",
               "INFO start\nERROR storage volume 'X' has no folder in io.roots\n")
    other = block(status.status_report("config.yaml", []), "other/round_001")
    assert "failed" in other["infer"] and "storage volume 'X' has no folder in io.roots" in other["infer"]


def test_bad_saved_settings_are_shown_not_raised(project, monkeypatch):
    calls = no_dry_run(monkeypatch)
    (project / "outputs/runs/other/round_001/overrides.yaml").write_text("train: {epochz: 3}\n")
    lines = status.status_report("config.yaml", [])
    other = block(lines, "other/round_001")
    assert "unknown config key train.epochz" in other["settings"]
    assert "unknown" in other["query"]
    assert not any("/other/" in t for t in calls[0])  # a round Snakemake cannot plan stays out of the dry run


def test_no_rounds_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    no_dry_run(monkeypatch)
    assert status.status_report("config.yaml", [], project="nothing") == [
        f"no rounds under {tmp_path / 'outputs/runs/nothing'} (io.out_root); "
        "run `agir-cvtoolkit run` or `snakemake` first"
    ]


def test_parse_summary_keeps_pending_outputs(tmp_path):
    text = ("Building DAG of jobs...\n"
            "output_file\tdate\trule\tlog-file(s)\tstatus\tplan\n"
            "out/a/model/best.pth\tWed Dec  2 05:29:10 2026\ttrain\tlog\tparams changed\tupdate pending\n"
            "out/a/query/query.json\tWed Dec  2 05:28:09 2026\tquery\tlog\tok\tno update\n"
            "out/a/dataset/index.csv\t-\tpreprocess\tlog\tok\tupdate pending\n")
    pending = status.parse_summary(text, tmp_path)
    assert pending == {(tmp_path / "out/a/model/best.pth").resolve(): "params changed",
                       (tmp_path / "out/a/dataset/index.csv").resolve(): "ok"}
    plan = status.Plan(pending=pending)
    assert plan.state_of(tmp_path / "out/a/model/best.pth") == "stale (params changed)"
    assert plan.state_of(tmp_path / "out/a/dataset/index.csv") == "stale (upstream)"
    assert plan.state_of(tmp_path / "out/a/query/query.json") == "done"


def test_failed_dry_run_means_unknown_not_a_traceback(project, monkeypatch, tmp_path_factory):
    broken = tmp_path_factory.mktemp("broken")
    (broken / "Snakefile").write_text('raise ValueError("the Snakefile is broken")\n')
    (broken / "workflow" / "schemas").mkdir(parents=True)
    shutil.copy(REPO / "workflow/schemas/config.schema.yaml", broken / "workflow/schemas")
    monkeypatch.setenv("AGIR_WORKFLOW_ROOT", str(broken))
    (project / "outputs/runs/other/round_001/query/query_spec.json").write_text('{"rows_returned": 0}')
    lines = status.status_report(str(project / "config.yaml"), [], project="other")
    other = block(lines, "other/round_001")
    assert "unknown" in other["query"] and "0 records" in other["query"]
    assert lines[-1].startswith("staleness unknown: the Snakemake dry run failed:")
    assert "the Snakefile is broken" in lines[-1]


@pytest.mark.slow
def test_cli_status_with_real_snakemake(tmp_path):
    """Two rounds queried with plain Snakemake; round 2's saved settings differ from the project config."""
    from agir.demo import generate_demo_data

    generate_demo_data(tmp_path / "demo", images=4, seed=3, width=160, height=107)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    r2 = tmp_path / "outputs/runs/tiny/round_002"
    r2.mkdir(parents=True)
    (r2 / "overrides.yaml").write_text(yaml.safe_dump({"query": {"limit": 3}}))
    run_snakemake(tmp_path, "outputs/runs/tiny/round_001/query/query.json",
                  "outputs/runs/tiny/round_002/query/query.json", "outputs/runs/tiny/round_001/classes.json")
    run_snakemake(tmp_path, "outputs/runs/tiny/round_002/classes.json")  # rounds are built one after the other

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "agir.cli", "status", "--config", "config.yaml", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    lines = cli()
    assert "staleness unknown" not in "\n".join(lines), "\n".join(lines)
    assert "done" in block(lines, "tiny/round_001")["query"]
    r2_query = block(lines, "tiny/round_002")["query"]
    assert "done" in r2_query and "3 records" in r2_query  # judged by its saved limit, not the project's
    # each round's class set: round 1's species are all new, round 2 adds only the species round 1 lacked
    runs = tmp_path / "outputs/runs/tiny"
    sp1, sp2 = ([str(r["category_common_name"]).lower() for r in json.loads((runs / rnd / "query/query.json").read_text())]
                for rnd in ("round_001", "round_002"))
    first = sorted(set(sp1))
    assert block(lines, "tiny/round_001")["classes"].strip() == (
        f"classes: {len(first)} ({', '.join(first)}); new: {len(first)} ({', '.join(first)})")
    added = sorted(set(sp2) - set(sp1))
    assert block(lines, "tiny/round_002")["classes"].strip() == (
        f"classes: {len(first) + len(added)} ({', '.join(first + added)}); "
        + (f"new: {len(added)} ({', '.join(added)})" if added else "new: none"))
    # a changed saved setting makes exactly that round's query stale
    (r2 / "overrides.yaml").write_text(yaml.safe_dump({"query": {"limit": 2}}))
    lines = cli()
    assert "done" in block(lines, "tiny/round_001")["query"]
    assert "stale" in block(lines, "tiny/round_002")["query"]
    assert cli("--project", "other")[0].startswith("no rounds under ")


def test_a_round_snakemake_cannot_plan_does_not_hide_the_others(project, monkeypatch):
    calls = []

    def fake(config_file, overrides, targets, cwd=None):
        calls.append([str(t) for t in targets])
        if any("/other/" in str(t) for t in targets):
            return status.Plan(error="MissingRuleException: No rule to produce outputs/runs/other/...")
        return status.Plan()

    monkeypatch.setattr(status, "dry_run_plan", fake)
    lines = status.status_report("config.yaml", [])
    assert len(calls) == 4  # all rounds at once, then each round alone
    assert "done" in block(lines, "tiny/round_001")["query"]
    other = block(lines, "other/round_001")
    assert "unknown" in other["query"]
    assert other["staleness"].strip() == ("staleness unknown: the Snakemake dry run of this round failed: "
                                          "MissingRuleException: No rule to produce outputs/runs/other/...")
    assert not any(ln.startswith("staleness unknown") for ln in lines)
