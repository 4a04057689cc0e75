"""Glue for Snakemake rule scripts: one call that logs, records the stage config and runs a stage.

A rule script is three lines:

    from agir.rule import run_rule
    from agir.db.query import run_query_stage
    run_rule(snakemake, run_query_stage, sections=["query"])
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agir.errors import AgirError
from agir.logs import setup_logging
from agir.processes import ancestors, is_snakemake
from agir.runs import read_json, record_stage_config, run_dir


def run_rule(smk: Any, stage: Callable[..., Any], sections: Iterable[str] = (), cfg: Mapping | None = None,
             **kwargs: Any) -> Any:
    """Run `stage(cfg, run_dir, **kwargs)` for a Snakemake job.

    `smk.params.cfg` is the config the rule declared it depends on (so a change reruns the rule); `cfg`
    replaces it where a script resolved something (e.g. `ckpt_path: previous` -> the file).
    User errors (AgirError) become one log line and exit status 1, not a traceback.
    """
    log_file = smk.log[0] if len(smk.log) else None
    log = setup_logging(log_file)
    stop_with_parent()
    cfg = dict(cfg if cfg is not None else smk.params.cfg)
    run = run_dir(cfg)
    started = time.time()
    try:
        record_stage_config(run, cfg, sections)
        result = stage(cfg, run, **kwargs)
    except AgirError as exc:
        log.error("%s", exc)
        sys.exit(1)
    log.info("%s finished in %.1f s", getattr(smk, "rule", stage.__name__), time.time() - started)
    return result


def stop_with_parent(interval: float = 1.0) -> None:
    """End this job when the Snakemake that started it is gone (killed with -9: no orphan keeps writing).

    Snakemake runs a rule script through a shell, so the parent-death signal of the kernel would only see the
    shell; instead a daemon thread watches the nearest Snakemake ancestor.
    """
    owner = next((pid for pid, words in ancestors(os.getppid()) if is_snakemake(words)), None)
    if owner is None:
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(owner, 0)
                stat = Path(f"/proc/{owner}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    raise ProcessLookupError
            except PermissionError:
                continue
            except (ProcessLookupError, FileNotFoundError, OSError):
                try:  # stderr may be a pipe to the dead Snakemake: writing can fail
                    logging.getLogger("agir").error("Snakemake is gone; stopping this job (rerun the same command to resume)")
                except Exception:  # noqa: BLE001 - leaving matters more than the message
                    pass
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(2)  # a framework may handle SIGTERM itself (Lightning does): then leave now
                finally:
                    os._exit(143)

    threading.Thread(target=watch, name="agir-parent-watch", daemon=True).start()


def resolved_infer_config(smk: Any) -> dict:
    """The infer config with `seg_inference.model.ckpt_path` resolved from the rule's inputs.

    `previous` -> the previous round's model (an input of the rule); `auto` -> the checkpoint that
    `infer/prelabeler.json` chose (or the vegetation index).
    """
    cfg = copy.deepcopy(dict(smk.params.cfg))
    model = cfg["seg_inference"]["model"]
    if "ckpt" in smk.input.keys():
        model["ckpt_path"] = str(smk.input.ckpt)
    elif "prelabeler" in smk.input.keys():
        choice = read_json(smk.input.prelabeler)
        chosen = choice.get("chosen")
        model["ckpt_path"] = None if chosen in (None, "baseline") else str(chosen)
    return cfg


def selected_ids(smk: Any) -> dict:
    """`only_ids` for the infer stage when the round pre-labels only its selected images."""
    if "selection" not in smk.input.keys():
        return {}
    return {"only_ids": [str(i) for i in read_json(smk.input.selection).get("selected", [])]}


def main_guard(fn: Callable[[], Any]) -> None:
    """For small entry scripts: AgirError -> one line on stderr, exit 1."""
    try:
        fn()
    except AgirError as exc:
        print(f"agir: error: {exc}", file=sys.stderr)
        sys.exit(1)


__all__ = ["run_rule", "main_guard", "Path", "resolved_infer_config", "selected_ids", "stop_with_parent"]
