"""The real workflow through profiles/slurm on a single-node SLURM: query -> infer -> preprocess -> train.

Needs root and AGIR_SLURM=1 (CI sets it in `make test`); the cluster comes from tests/slurm_harness.
GPU rules go to the fake GPU GRES, so the `gpu=1` path (sbatch --gpus=1) is exercised; inside the job
`device: auto` finds no real CUDA and runs on the CPU.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))

from slurm_harness import fixtures  # noqa: E402
from slurm_harness.cluster import REPO_ROOT, sbatch_call_for_rule, timed_out  # noqa: E402
from wfutil import write_config  # noqa: E402

slurm_cluster = fixtures.slurm_cluster

pytestmark = pytest.mark.slurm


def _options(call: str) -> list[str]:
    return shlex.split(call.split("--wrap=", 1)[0])


def test_small_loop_runs_on_slurm_with_gpu_rules(slurm_cluster, tiny_demo, tmp_path):
    shutil.copytree(tiny_demo, tmp_path / "demo")
    write_config(tmp_path, **{"seg_inference.device": "auto", "train.accelerator": "auto"})
    res = slurm_cluster.run_snakemake(
        tmp_path,
        REPO_ROOT / "Snakefile",
        ["all"],
        ["--configfile", str(tmp_path / "config.yaml"), "--set-threads", "train_model=2", "infer_seg=2", "preprocess_dataset=1",
         "--local-cores", "2"],  # a single-valued option last, so the target is not read as a list item
        timeout_s=900,
    )
    out = res.stdout
    assert not timed_out(res), out[-3000:]
    assert res.returncode == 0, out[-6000:]
    run = tmp_path / "outputs/runs/tiny/round_001"
    assert (run / "model" / "best.pth").exists() and (run / "infer" / "quality.json").exists()

    for rule in ("infer_seg", "train_model"):
        opts = _options(sbatch_call_for_rule(out, rule))
        assert "--gpus=1" in opts, (rule, opts)
        assert "--cpus-per-task=2" in opts, (rule, opts)
        assert "--mem" in opts and "-t" in opts, (rule, opts)
    pre = _options(sbatch_call_for_rule(out, "preprocess_dataset"))
    assert "--gpus=1" not in pre and "--cpus-per-task=1" in pre
    assert pre[pre.index("--mem") + 1] == "8000"
    # local rules never reach sbatch
    for rule in ("query_db", "evaluate_prelabels", "report_summary"):
        with pytest.raises(AssertionError, match="expected one sbatch call"):
            sbatch_call_for_rule(out, rule)
