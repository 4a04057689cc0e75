"""Preprocess: combine labelled samples (database masks or refined CVAT rounds) into a leak-free dataset.

`run_preprocess_stage(cfg, run)` is the stage entry point; the modules are its parts:
`sources` (which image + mask pairs exist), `remap` (class names -> dataset indices), `geometry`
(tiles or resize), `splits` (grouped, stratified, deterministic), `stats` (mean/std, frequencies).
"""

from agir.data.preprocess import run_preprocess_stage

__all__ = ["run_preprocess_stage"]
