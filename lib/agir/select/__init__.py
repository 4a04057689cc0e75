"""Active-learning selection: per-image uncertainty statistics, selection strategies, the select stage.

`uncertainty` (statistics accumulated while inference runs), `strategies` (`select_ids`: pick N
candidates by a named strategy), `stage` (`run_select_stage(cfg, run)`: the stage entry point).
"""

from agir.select.uncertainty import UncertaintyAccumulator, flatten_uncertainty, image_uncertainty

__all__ = ["UncertaintyAccumulator", "flatten_uncertainty", "image_uncertainty"]
