"""Where training starts (`train.init`): the previous model, a checkpoint file, or scratch.

`previous` (the default) is the newest earlier round of the project that has a `model/best.pth`;
`null`/`none` starts from scratch (or `train.encoder_weights`); anything else is a checkpoint path.
When the round pre-labels with `seg_inference.model.ckpt_path: previous`, the DAG builds the round
before's model anyway, so `previous` is that model (also while it is still to be built: a project
built in one Snakemake call then trains each round from the one before, and the next call has
nothing to redo).

The choice is made once, when Snakemake builds the DAG (`init_choice`); it goes into the rule's params
(another choice reruns training) and the model is a declared input (`init_input`). An existing file
is declared in a spelling no rule's output pattern matches (absolute when io.out_root is relative,
relative when it is absolute), so Snakemake watches it like a source file and never rebuilds an
earlier round for it; this round's own model is never declared (a cycle). Kept free of torch so the
Snakefile loads fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agir.runs import project_dir, run_dir
from agir.workflow import previous_round

PREVIOUS = "previous"
NONE_WORDS = ("none", "null", "scratch", "")
BEST = ("model", "best.pth")


def init_setting(cfg: Mapping[str, Any]) -> str | None:
    """`train.init` normalised: "previous", None (scratch) or a path string."""
    value = (cfg.get("train") or {}).get("init", PREVIOUS)
    if value is None or str(value).strip().lower() in NONE_WORDS:
        return None
    return PREVIOUS if str(value).strip().lower() == PREVIOUS else str(value)


def _where(cfg: Mapping[str, Any], run: str | Path | None) -> tuple[Path, str]:
    """(project folder, this round's name): from the run folder when given, else from cfg."""
    if run is not None:
        return Path(run).parent, Path(run).name
    return project_dir(cfg), str(cfg["project"]["subname"])


def previous_model(cfg: Mapping[str, Any], run: str | Path | None = None) -> Path | None:
    """model/best.pth of the newest earlier round (by name) of the project that has one."""
    root, current = _where(cfg, run)
    if not root.is_dir():
        return None
    for name in sorted((p.name for p in root.iterdir() if p.is_dir() and p.name < current), reverse=True):
        best = root.joinpath(name, *BEST)
        if best.is_file():
            return best
    return None


def init_choice(cfg: Mapping[str, Any], run: str | Path | None = None) -> dict[str, Any]:
    """{"setting", "path", "why"}: the checkpoint training starts from (path None = scratch, with why).

    Plain data: it goes into the rule's params, so a change of the resolved model reruns training.
    """
    setting = init_setting(cfg)
    raw = (cfg.get("train") or {}).get("init", PREVIOUS)
    if setting is None:
        return {"setting": None, "path": None, "why": f"train.init is {raw if raw is not None else 'null'}"}
    if setting == PREVIOUS:
        model_cfg = (cfg.get("seg_inference") or {}).get("model") or {}
        prev = previous_round(cfg) if run is None and str(model_cfg.get("ckpt_path")) == PREVIOUS else None
        if prev is not None:  # the model this round pre-labels with, which the DAG builds
            return {"setting": PREVIOUS, "path": str(project_dir(cfg).joinpath(prev, *BEST)), "why": None,
                    "round": prev}
        found = previous_model(cfg, run)
        if found is None:
            return {"setting": PREVIOUS, "path": None,
                    "why": f"no earlier round of project {_where(cfg, run)[0].name} has a model/best.pth"}
        return {"setting": PREVIOUS, "path": str(found), "why": None}
    return {"setting": setting, "path": setting, "why": None}


def init_input(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The rule input for the chosen model (see the module docstring); {} when there is none to declare.

    A missing file is not declared (Snakemake would try to build it, or fail before the train log can
    say what is wrong), except the round before's model that the round's own pre-labelling builds.
    """
    choice = init_choice(cfg)
    out_root = str(cfg["io"]["out_root"]).rstrip("/")
    if choice.get("round"):  # spelled like the rule outputs (workflow/rules/common.smk): the same DAG node
        return {"init": f"{out_root}/{cfg['project']['name']}/{choice['round']}/{'/'.join(BEST)}"}
    path = choice["path"]
    if not path or not Path(path).is_file():
        return {}
    if Path(run_dir(cfg)).resolve() in Path(path).resolve().parents:
        return {}
    return {"init": os.path.relpath(path) if Path(out_root).is_absolute() else os.path.abspath(path)}


def display_name(path: str | Path, project: str | Path) -> str:
    """`round_001/model/best.pth` for a model of the project folder `project`, else the path as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(project).resolve()))
    except ValueError:
        return str(path)
