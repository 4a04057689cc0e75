"""What active selection buys on AgIR-like data: a simulated annotator, per strategy, over 5 seeds.

Runs `agir.simulate` (protocol: docs/active_learning.md) with the benchmark's choices, sized for
<= 60 min on an idle 2-core CPU (measured: 43 min) on two single-threaded worker processes; the work
is split into tasks: per seed round 0, then the full-pool reference and one task per strategy.

- pool `agir` (agir.demo.sequences): 60 pots x 6 days = 360 frames of 128 px; 3 common crops, 5 rare
  weeds (each with its own leaf colour and habit) in 1-5 % of the frames, ~89 % background;
  validation 32 and test 48 frames balanced over the 8 species, from other pots;
- 8 random initial frames, then 4 rounds of 16 (8 -> 72 annotated); round 0 trains 300 steps from
  random weights (lr 0.003), each later round fine-tunes the previous round's model 150 steps
  (lr 0.003, warm-up + cosine, grad-norm clip 1), the head widened for new species
  (agir.checkpoint.transfer_weights); CE + Dice with class weights capped at 20x, repeat-factor
  sampling of frames with rare species (threshold 0.3); the full-pool reference fine-tunes the
  round-0 model 600 steps on all 360 frames (the same compute); settings chosen on the validation split;
- strategies random, veg_random, power, power_cap1, class_balanced, cost_aware; seeds 0-4.

    .venv/bin/python benchmarks/al_bench.py --out outputs/al_bench          # the full benchmark
    .venv/bin/python benchmarks/al_bench.py --quick --out outputs/al_quick  # the machinery only
    .venv/bin/python benchmarks/al_bench.py --pool iid                      # the earlier i.i.d. pool

Prints full_pool_gain=, effort_ratio_<s>= and _ci95=, rare_iou_<s>=, paired differences to random
and veg_random per round and at equal effort (equal_effort_diff_), the same on validation (val_),
hinted_effort_fraction= and hinted_iou_fraction=; writes results_seed*.jsonl, summary.json, table.md
and al_curve.png into --out as results arrive.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from agir.simulate import main as simulate_main  # noqa: E402

BENCH_DEFAULTS = ["--out", "outputs/al_bench", "--jobs", "2"]


def main(argv: list[str] | None = None) -> int:
    # the benchmark's choices first; anything given on the command line overrides them (argparse: last wins)
    return simulate_main(BENCH_DEFAULTS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
