"""Driving the loop the way people type it: the CLI and plain Snakemake, rounds as targets, recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from wfutil import planned_rules, run_snakemake

pytestmark = pytest.mark.slow

RUN = Path("outputs/runs/tiny/round_001")
RUN2 = Path("outputs/runs/tiny/round_002")


def cli(workdir: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "agir.cli", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"agir-cvtoolkit {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def saved(workdir: Path, run: Path = RUN) -> dict:
    path = workdir / run / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def test_any_round_output_is_a_target_and_previous_builds_the_model_first(workdir):
    (workdir / RUN2).mkdir(parents=True)
    (workdir / RUN2 / "overrides.yaml").write_text("seg_inference:\n  model:\n    ckpt_path: previous\n")
    planned = planned_rules(workdir, str(RUN2 / "infer" / "manifest.jsonl"))
    # round 2's pre-labels need round 1's model: the loop is the DAG
    assert planned.get("train_model") == 1 and planned.get("preprocess_dataset") == 1
    assert planned.get("query_db") == 2 and planned.get("infer_seg") == 1
    # the documented --config forms work on Snakemake 9 (strings are typed by the schema)
    planned = planned_rules(workdir, "--config", "project={subname: round_002}", "query={limit: 2}")
    assert planned.get("train_model") == 2  # round 2 trains too, after round 1's model


def test_cli_and_plain_snakemake_agree_and_force_reruns_one_stage(workdir):
    cli(workdir, "run", "--config", "config.yaml", "--cores", "2", "-o", "seg_inference.tile.size=96",
        "-o", "train.max_epochs=1")
    assert saved(workdir)["train"]["epochs"] == 1  # the old tool's key, saved as ours
    # plain snakemake sees what the CLI saved for the run: nothing to do
    assert planned_rules(workdir) == {}
    proc = cli(workdir, "infer-seg", "--config", "config.yaml", "--force", "--dry-run", "--", "--quiet", "rules")
    assert "infer_seg" in proc.stdout
    assert "train_model" not in proc.stdout and "preprocess_dataset" not in proc.stdout


def test_query_flags_replace_earlier_flags_and_bad_values_are_never_saved(workdir):
    cli(workdir, "query", "--config", "config.yaml", "--filters", "state=NC", "--sample", "random:n=3")
    first = saved(workdir)["query"]
    assert first["filters"] == ["state=NC"] and first["sample"] == "random:n=3"
    proc = cli(workdir, "query", "--config", "config.yaml", "--limit", "2")
    q = saved(workdir)["query"]
    assert q == {"limit": 2}
    assert "earlier settings of this stage replaced" in proc.stderr and "query.sample" in proc.stderr
    before = (workdir / RUN / "overrides.yaml").read_text()
    bad = cli(workdir, "train", "--config", "config.yaml", "-o", "train.epochs=many", check=False)
    assert bad.returncode == 1 and "train.epochs" in bad.stderr.strip().splitlines()[-1]
    assert (workdir / RUN / "overrides.yaml").read_text() == before
    # a filter on a column the table lacks fails before Snakemake deletes the good outputs
    good = (workdir / RUN / "query" / "query.json").read_text()
    bad = cli(workdir, "query", "--config", "config.yaml", "--filters", "stat=NC", check=False)
    assert bad.returncode == 1 and "stat" in bad.stderr.strip().splitlines()[-1]
    assert (workdir / RUN / "query" / "query.json").read_text() == good
    assert saved(workdir)["query"] == {"limit": 2}
    # null clears; overrides shows and clears what is saved
    cli(workdir, "query", "--config", "config.yaml", "--limit", "null", "--dry-run")
    shown = cli(workdir, "overrides", "--config", "config.yaml")
    assert "limit: 2" in shown.stdout
    cli(workdir, "overrides", "--config", "config.yaml", "--clear")
    assert not (workdir / RUN / "overrides.yaml").exists()


def test_errors_name_the_file_or_key(workdir):
    proc = cli(workdir, "infer-seg", "--config", "config.yaml", "-o", "seg_inference.model.ckpt_path=models/nope.pth",
               check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "models/nope.pth" in last and last.startswith("agir: error:")
    broken = workdir / "broken.yaml"
    broken.write_text("project:\n  name: tiny\n  subname: [round\n")
    proc = cli(workdir, "query", "--config", str(broken), check=False)
    assert proc.returncode == 1
    assert "line 4, column 1" in proc.stderr or "line 3" in proc.stderr, proc.stderr


def _pids_running(pattern: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pattern in cmd:
                out.append(int(entry.name))
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def test_kill_9_then_the_same_command_works(workdir):
    cmd = [sys.executable, "-m", "agir.cli", "train", "--config", "config.yaml", "--cores", "2",
           "-o", "train.epochs=40", "-o", "train.max_steps_per_epoch=4"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_log = workdir / RUN / "logs" / "train.log"
    deadline = time.time() + 400
    while time.time() < deadline and not train_log.exists():
        time.sleep(0.5)
    assert train_log.exists(), "training never started"
    time.sleep(3)
    snakes = [p for p in _children(proc.pid)]
    assert snakes, "no Snakemake under the CLI"
    for pid in snakes:  # kill Snakemake itself, hard
        os.kill(pid, signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def orphans():
        return [p for p in _pids_running(f"{workdir}/.snakemake/scripts/")]

    deadline = time.time() + 30
    while orphans() and time.time() < deadline:
        time.sleep(1)
    # no orphaned rule process keeps writing
    assert not orphans()
    done = cli(workdir, "train", "--config", "config.yaml", "--cores", "2", "-o", "train.epochs=1")
    assert (workdir / RUN / "model" / "best.pth").exists(), done.stderr[-2000:]


def test_snakemake_killed_leaves_no_lock_for_the_next_run(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--snakefile", str(Path(__file__).resolve().parents[2] / "Snakefile"),
         "--configfile", "config.yaml", "--cores", "2", str(RUN / "infer" / "manifest.jsonl")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = workdir / ".snakemake" / "locks"
    deadline = time.time() + 300
    while time.time() < deadline and not (locks.is_dir() and any(locks.iterdir())):
        time.sleep(0.5)
    assert locks.is_dir() and any(locks.iterdir()), "Snakemake never locked the folder"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = run_snakemake(workdir, str(RUN / "infer" / "manifest.jsonl"))
    assert "released a Snakemake lock" in out.stderr
    assert json.loads((workdir / RUN / "infer" / "metrics.json").read_text())
