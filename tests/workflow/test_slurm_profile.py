"""profiles/slurm and profiles/default: parsed by Snakemake everywhere, run for real on a single-node SLURM.

The ``slurm``-marked tests need root and ``AGIR_SLURM=1`` (``make test-slurm``); the fixture installs
slurm-wlm + munge when missing, starts the daemons on loopback and stops them by PID afterwards.
The 3-rule Snakefile below stands in for the real workflow: swap ``_write_workflow`` for the repo's
Snakefile and targets and keep the assertions on the ``sbatch call:`` lines.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # the harness lives in tests/, which is not a package
    sys.path.append(str(TESTS_DIR))  # appended: tests/<name> folders must not shadow real packages

from slurm_harness import fixtures  # noqa: E402
from slurm_harness.cluster import (  # noqa: E402
    DEFAULT_PROFILE,
    REPO_ROOT,
    SLURM_PROFILE,
    sbatch_call_for_rule,
    sbatch_calls,
    snakemake_command,
    timed_out,
)

slurm_cluster = fixtures.slurm_cluster  # the session fixture, made visible to this module

GPU_RULES = {"infer_seg", "infer_seg_shard", "train_model", "score_pool", "score_pool_shard", "choose_prelabeler"}
# More threads than the submit host has cores: shows whether anything caps threads at --cores.
CPU_RULE_THREADS = (os.cpu_count() or 1) + 1

SNAKEFILE = """
localrules: gather

rule all:
    input: "gathered.txt"

rule cpu_step:
    output: "cpu.env"
    threads: {cpu_threads}
    resources: mem_mb=500, runtime=5
    shell: "env | grep -E '^(SLURM_JOB_ID|SLURM_JOB_PARTITION|CUDA_VISIBLE_DEVICES)=' > {{output}} || true"

rule gpu_step:
    output: "gpu.env"
    threads: 2
    resources: gpu=1, mem_mb=1000, runtime=7
    shell: "env | grep -E '^(SLURM_JOB_ID|SLURM_JOB_PARTITION|CUDA_VISIBLE_DEVICES)=' > {{output}} || true"

rule gather:
    input: "cpu.env", "gpu.env"
    output: "gathered.txt"
    shell: "(cat {{input}}; env | grep -E '^SLURM_JOB_ID=' || true) > {{output}}"
"""


def _write_workflow(workdir: Path) -> Path:
    snakefile = workdir / "Snakefile"
    snakefile.write_text(SNAKEFILE.format(cpu_threads=CPU_RULE_THREADS))
    return snakefile


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _sbatch_options(call: str) -> list[str]:
    """The sbatch options before ``--wrap`` as tokens (``--mem 1000`` -> ['--mem', '1000'])."""
    return shlex.split(call.split("--wrap=", 1)[0])


def _has(tokens: list[str], *seq: str) -> bool:
    n = len(seq)
    return any(tokens[i : i + n] == list(seq) for i in range(len(tokens) - n + 1))


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


# ---- everywhere: the profiles are valid Snakemake profiles and name real rules ----------------------


def test_profiles_parse_in_a_dry_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
    snakefile = _write_workflow(tmp_path)
    cmd = [
        *snakemake_command(),
        "--profile",
        str(SLURM_PROFILE),
        "--workflow-profile",
        str(DEFAULT_PROFILE),
        "--snakefile",
        str(snakefile),
        "--directory",
        str(tmp_path),
        "-n",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    # An unknown key or bad value in either profile fails argument parsing here.
    assert res.returncode == 0, _tail(out)
    assert "Using profile" in out and str(DEFAULT_PROFILE) in out, _tail(out)
    assert "gpu_step" in out and "cpu_step" in out, _tail(out)


def test_profile_names_only_existing_rules_and_gpu_rules() -> None:
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    rule_files = [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk"))]
    rules = {
        m for f in rule_files if f.is_file() for m in re.findall(r"^\s*rule\s+(\w+)\s*:", f.read_text(), re.M)
    }
    if not rules:
        pytest.skip("workflow rules not present yet")
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    # A renamed rule would silently lose its GPU: Snakemake ignores set-resources for unknown rules.
    assert named <= rules, f"profiles/slurm names rules the workflow lacks: {sorted(named - rules)}"
    gpu = {rule for rule, res in profile["set-resources"].items() if res.get("gpu") == 1}
    assert gpu == GPU_RULES
    assert profile["executor"] == "slurm"
    # Without accounting (squeue) the plugin would hang on a cluster lacking slurmdbd (notes, trap 1).
    assert profile["slurm-status-command"] == "squeue"
    default = yaml.safe_load((DEFAULT_PROFILE / "config.yaml").read_text())
    # Keys the workflow profile sets override the SLURM profile; `cores` would cap SLURM jobs' threads.
    forbidden = {"cores", "jobs", "executor", "default-resources", "set-resources", "set-threads"}
    assert not forbidden & set(default)


# ---- on a real single-node SLURM ---------------------------------------------------------------------


@pytest.mark.slurm
def test_three_rule_workflow_runs_on_slurm(slurm_cluster, tmp_path: Path) -> None:
    snakefile = _write_workflow(tmp_path)
    # A run from the repo root also loads profiles/default as the workflow profile; do the same here.
    res = slurm_cluster.run_snakemake(
        tmp_path,
        snakefile,
        ["all"],
        ["--workflow-profile", str(DEFAULT_PROFILE)],
        timeout_s=300,
    )
    assert not timed_out(res), f"snakemake hung on SLURM (killed by timeout):\n{_tail(res.stdout)}"
    assert res.returncode == 0, _tail(res.stdout)

    # Jobs ran inside SLURM allocations, the GPU job with the (fake) GPU, the local rule outside.
    cpu_env = _env_file(tmp_path / "cpu.env")
    gpu_env = _env_file(tmp_path / "gpu.env")
    gathered = (tmp_path / "gathered.txt").read_text()
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", res.stdout))
    assert {cpu_env["SLURM_JOB_ID"], gpu_env["SLURM_JOB_ID"]} == submitted and len(submitted) == 2
    assert cpu_env["SLURM_JOB_PARTITION"] == gpu_env["SLURM_JOB_PARTITION"] == slurm_cluster.partition
    assert gpu_env.get("CUDA_VISIBLE_DEVICES") == "0"
    assert "CUDA_VISIBLE_DEVICES" not in cpu_env
    assert gathered.count("SLURM_JOB_ID=") == 2, gathered  # the localrule itself had no job id

    # The sbatch arguments the plugin generated from rules + profiles.
    calls = sbatch_calls(res.stdout)
    assert len(calls) == 2, calls  # the localrule was not submitted
    gpu = _sbatch_options(sbatch_call_for_rule(res.stdout, "gpu_step"))
    cpu = _sbatch_options(sbatch_call_for_rule(res.stdout, "cpu_step"))
    assert "--gpus=1" in gpu
    assert "--cpus-per-task=2" in gpu
    assert _has(gpu, "--mem", "1000") and _has(gpu, "-t", "7")
    assert _has(gpu, "-p", slurm_cluster.partition)  # no partition in the profile: the cluster default
    assert not any(t.startswith("--gpus") for t in cpu)
    assert f"--cpus-per-task={CPU_RULE_THREADS}" in cpu  # threads not capped at the submit host's cores
    assert _has(cpu, "--mem", "500") and _has(cpu, "-t", "5")


@pytest.mark.slurm
def test_slurm_local_script_starts_reports_and_stops(slurm_cluster, tmp_path: Path) -> None:
    """The by-hand wrapper: a second cluster beside the session one; stop leaves the session one alone."""
    script = REPO_ROOT / "scripts" / "slurm_local.sh"
    env = {**os.environ, "AGIR_SLURM_STATE": str(tmp_path / "state"), "PYTHON": sys.executable}

    def sh(action: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), action], env=env, capture_output=True, text=True, timeout=120)

    started = sh("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert "export SLURM_CONF=" in started.stdout
        status = sh("status")
        assert status.returncode == 0 and " idle" in status.stdout, status.stdout + status.stderr
        assert "already running" in sh("start").stdout
    finally:
        stopped = sh("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    after = sh("status")
    assert after.returncode == 1 and "stopped" in after.stdout
    # munged was shared (started by the session cluster), so the session cluster still answers.
    assert slurm_cluster.node_state() == "idle"
    assert all(slurm_cluster.running().values())
