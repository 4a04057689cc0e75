"""Each round's report names its own round and shows that round's rules (issue 16 §5)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wfutil import run_snakemake, write_config

pytestmark = pytest.mark.slow

RUNS = Path("outputs/runs/tiny")


def landing_text(report: Path) -> str:
    """The round named on the report's landing page (workflow/report/workflow.rst, rendered)."""
    m = re.search(r"active-learning round <strong>(.*?)</strong>", report.read_text())
    assert m, f"no landing text in {report}"
    return m.group(1)


def graph_rules(report: Path) -> list[str]:
    """The rules of the report's workflow graph (Snakemake's html report embeds them as a Vega data set)."""
    m = re.search(r'"node-data", "values": (\[.*?\])', report.read_text())
    assert m, f"no workflow graph in {report}"
    return [node["rule"] for node in json.loads(m.group(1))]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory) -> Path:
    """Round 1 trained; round 2 pre-labelled with round 1's model (`previous`), as `make demo` does."""
    from agir.demo import generate_demo_data

    wd = tmp_path_factory.mktemp("two-rounds")
    generate_demo_data(wd / "demo", images=6, seed=3, width=320, height=214)
    write_config(wd)
    for extra in ([], ["-o", "project.subname=round_002", "-o", "project.until=infer",
                       "-o", "seg_inference.model.ckpt_path=previous"]):
        proc = subprocess.run([sys.executable, "-m", "agir.cli", "run", "--config", "config.yaml", "--cores", "2",
                               *extra], cwd=wd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    yield wd
    shutil.rmtree(wd, ignore_errors=True)


def test_round_2_report_names_round_2_and_shows_its_own_rules(two_rounds):
    # the demo's command: plain snakemake, the round's summary as target
    r2 = RUNS / "round_002"
    run_snakemake(two_rounds, str(r2 / "report" / "summary.json"), "--report", str(r2 / "report.html"))
    report = two_rounds / r2 / "report.html"
    assert landing_text(report) == "tiny / round_002"
    rules = graph_rules(report)
    # round 2 pre-labelled with round 1's model but trained nothing: round 1's jobs are not in its graph
    assert {"query_db", "infer_seg", "report_summary"} <= set(rules), rules
    assert not {"train_model", "preprocess_dataset"} & set(rules), rules

    # without a target: the configured round (round_001), which did train
    run_snakemake(two_rounds, "--report", "round1.html")
    assert landing_text(two_rounds / "round1.html") == "tiny / round_001"
    assert {"train_model", "preprocess_dataset"} <= set(graph_rules(two_rounds / "round1.html"))


def test_report_of_an_unbuilt_round_says_what_to_run_first(two_rounds):
    proc = run_snakemake(two_rounds, str(RUNS / "round_009" / "report" / "summary.json"), "--report", "x.html",
                         check=False)
    assert proc.returncode != 0
    assert (f"agir: nothing to report yet: {RUNS / 'round_009' / 'report' / 'summary.json'} is missing; "
            "build the round first") in proc.stderr
