"""What active selection buys: a simulated annotator (the database's masks) over R rounds, per strategy.

Runs `agir.simulate.run_simulation` (see its docstring for the protocol) with the benchmark's choices,
sized to fit ~60 min of an idle 2-core CPU:

- demo database (agir.demo, default difficulty mix) at 576 x 384 px; 40 fixed test images, a pool of
  200 candidates; 10 random initial images, then 4 rounds of 15 (10 -> 70 annotated images);
- the demo's small CPU model (binary, Linknet / timm-mobilenetv3_small_minimal_100, crop 224, batch 8,
  lr 0.003), 7 epochs x 20 steps per model, retrained from scratch each round; inference in 384 px tiles;
- strategies random, entropy, diverse, stratified, margin (least_confidence ranks exactly as the
  margin's image mean in binary mode: for two classes 1 - max p = (1 - margin) / 2 per pixel), 2 seeds
  run in parallel, one single-threaded process each (`--jobs 2`: on a shared 2-core CPU two torch
  threads in one process lose far more to spinning at barriers than they gain).

    .venv/bin/python benchmarks/al_bench.py --out /work/al_bench_full [--strategies ...] [--seeds 0,1] ...

Prints, against random measured in the same run: `label_efficiency_<strategy>` = images the strategy
needed to reach random's final test plant IoU / images random used (interpolated; `>1` when never
reached), `effort_per_image_<strategy>_round_<r>` (fraction of pixels the annotator changes), and the
final IoUs with their spread. Writes results.jsonl, summary.json, table.md and al_curve.png into --out
as results arrive.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from agir.simulate import main as simulate_main  # noqa: E402

BENCH_DEFAULTS = ["--strategies", "random,entropy,diverse,stratified,margin", "--seeds", "0,1", "--jobs", "2",
                  "--pool", "200", "--test", "40", "--initial", "10", "--rounds", "4", "--per-round", "15",
                  "--epochs", "7", "--steps-per-epoch", "20", "--width", "576", "--height", "384",
                  "--out", "outputs/al_bench"]


def main(argv: list[str] | None = None) -> int:
    # the benchmark's choices first; anything given on the command line overrides them (argparse: last wins)
    return simulate_main(BENCH_DEFAULTS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
