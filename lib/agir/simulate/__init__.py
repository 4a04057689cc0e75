"""Simulated annotator: what active selection buys, measured without waiting for people.

Pieces: `config` (SimConfig), `pool` (the AgIR-like species pool with pot sequences, or the old
i.i.d. pool), `model` (the small network, fine-tuned round after round with the head widened),
`effort` (what a person corrects; the hint-following annotator), `runner` (the loop), `report`
(figures, intervals, table, plot), `cli` (`agir-cvtoolkit simulate`, benchmarks/al_bench.py).
Protocol and results: docs/active_learning.md.
"""

from __future__ import annotations

from agir.simulate.cli import build_parser, config_from_args, main
from agir.simulate.config import SimConfig
from agir.simulate.effort import changed_fraction
from agir.simulate.report import format_lines, images_to_reach, summarize
from agir.simulate.runner import run_simulation

__all__ = ["SimConfig", "build_parser", "changed_fraction", "config_from_args", "format_lines",
           "images_to_reach", "main", "run_simulation", "summarize"]
