"""benchmarks/scale_bench.py --quick, run the way a user types it: every figure is printed and finite.

No timing assertions (the machine is shared); the full-size figures are in docs/scale.md.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("query", "infer", "upload", "download", "preprocess")

pytestmark = pytest.mark.slow


def test_quick_scale_bench_prints_every_figure(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale_bench.py"), "--quick", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = dict(re.findall(r"^([a-z_0-9]+)=(\S+)", proc.stdout, flags=re.M))
    keys = [f"cost_exponent_{s}" for s in STAGES] + [f"cost_exponent_wall_{s}" for s in STAGES]
    keys += ["overhead_fraction_100", "dry_run_seconds_3_rounds"] + [f"peak_rss_mib_{s}_100" for s in STAGES]
    missing = [k for k in keys if k not in figures]
    assert not missing, f"missing {missing} in:\n{proc.stdout[-3000:]}"
    values = {k: float(figures[k]) for k in keys}
    assert all(math.isfinite(v) for v in values.values()), values
    assert 0 < values["overhead_fraction_100"] <= 1
    assert all(values[f"peak_rss_mib_{s}_100"] > 0 for s in STAGES)
    # every stage ran on 100 records in its own project folder, through Snakemake's benchmark files
    run = tmp_path / "n100" / "outputs" / "runs" / "scale100" / "round_001"
    assert sum(1 for _ in open(run / "infer" / "manifest.jsonl")) == 100
    assert {p.name for p in (run / "benchmarks").glob("*.tsv")} >= {
        "query.tsv", "infer_seg.tsv", "upload_cvat.tsv", "download_cvat.tsv", "preprocess.tsv"}
