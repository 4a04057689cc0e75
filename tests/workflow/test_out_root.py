"""Outputs on another volume (issue 16 §2): every way a user sets io.out_root, through the real commands."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wfutil import REPO, planned_rules, run_cli, run_snakemake, write_config

pytestmark = pytest.mark.slow

POINTER = Path(".agir/out_root.yaml")
ROUND = Path("tiny/round_001")


cli = run_cli


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and mtime: a write of any kind changes it."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_absolute_out_root_is_found_by_later_stages_status_overrides_report_and_plain_snakemake(
        workdir, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch") / "runs"
    roots = workdir / "demo" / "storage"  # io.roots: the images' volume, read-only here
    before = tree_state(roots)
    set_writable(roots, False)
    try:
        # the command, verbatim but for the folder
        cli(workdir, "query", "--config", "config.yaml", "--db", "semif", "--limit", "3", "-o",
            f"io.out_root={scratch}", "--cores", "1")
        run = scratch / ROUND
        assert (run / "query" / "query.json").exists()
        assert not (workdir / "outputs").exists()
        # where the run is is not a setting of the run
        assert "io" not in yaml.safe_load((run / "overrides.yaml").read_text())
        assert yaml.safe_load((workdir / POINTER).read_text())["out_root"] == str(scratch)

        # a later stage of the same run, without repeating io.out_root
        cli(workdir, "infer-seg", "--config", "config.yaml", "-o", "project.until=infer", "--cores", "2")
        manifest = [json.loads(ln) for ln in (run / "infer" / "manifest.jsonl").read_text().splitlines()]
        assert sum(len(m["record_ids"]) for m in manifest) == 3 and {m["status"] for m in manifest} == {"ok"}
        status = cli(workdir, "status", "--config", "config.yaml").stdout
        assert f"project tiny ({scratch / 'tiny'})" in status
        assert re.search(r"^\s+infer\s+done", status, re.M), status
        shown = cli(workdir, "overrides", "--config", "config.yaml").stdout
        assert shown.splitlines()[0].startswith(f"# {run / 'overrides.yaml'}")
        cli(workdir, "report", "--config", "config.yaml", "--cores", "1")
        assert "active-learning round <strong>tiny / round_001</strong>" in (run / "report.html").read_text()
        # plain snakemake in the same folder sees the same runs: nothing left to do
        assert planned_rules(workdir) == {}
        assert not (workdir / "outputs").exists()
    finally:
        set_writable(roots, True)
    assert tree_state(roots) == before  # nothing under io.roots was written, touched or added


def test_relative_out_root_is_relative_to_the_workflow_folder_and_snakemake_directory_finds_it(workdir, tmp_path):
    rel = f"../{tmp_path.name}-scratch"
    cli(workdir, "query", "--config", "config.yaml", "--limit", "2", "-o", f"io.out_root={rel}/", "--cores", "1")
    query = (workdir / rel / ROUND / "query" / "query.json").resolve()
    assert query.exists() and query.parent.parent.parent.parent == (tmp_path.parent / f"{tmp_path.name}-scratch")
    assert yaml.safe_load((workdir / POINTER).read_text())["out_root"] == rel

    # plain snakemake started elsewhere with --directory: relative to that folder, remembered choice included
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "1", "-n", "query"]
    proc = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert f"io.out_root={rel} (remembered in {POINTER})" in proc.stderr
    assert not (elsewhere / "outputs").exists() and not (workdir / "outputs").exists()

    # -o io.out_root=null: back to the config's value; the folder forgets its choice
    cli(workdir, "query", "--config", "config.yaml", "-o", "io.out_root=null", "--cores", "1")
    assert (workdir / "outputs/runs" / ROUND / "query" / "query.json").exists()
    assert not (workdir / POINTER).exists()


def test_config_file_and_snakemake_config_set_out_root(workdir, tmp_path_factory):
    from_file = tmp_path_factory.mktemp("from-file")
    write_config(workdir, "cluster.yaml", **{"io.out_root": str(from_file)})
    cli(workdir, "query", "--config", "cluster.yaml", "--limit", "2", "--cores", "1")
    assert (from_file / ROUND / "query" / "query.json").exists()
    # later commands without --config FILE find the run (its settings from FILE are saved in it)
    status = cli(workdir, "status").stdout
    assert f"project tiny ({from_file / 'tiny'})" in status and re.search(r"^\s+query\s+done", status, re.M)

    # plain snakemake, nested --config form: wins over everything else
    typed = tmp_path_factory.mktemp("typed")
    run_snakemake(workdir, "query", "--config", f"io={{out_root: {typed}}}")
    assert (typed / ROUND / "query" / "query.json").exists()
    assert not (workdir / "outputs").exists()
