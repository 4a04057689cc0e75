"""Glue for Snakemake rule scripts: one call that logs, records the stage config and runs a stage.

A rule script is three lines:

    from agir.rule import run_rule
    from agir.db.query import run_query_stage
    run_rule(snakemake, run_query_stage, sections=["query"])
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agir.errors import AgirError
from agir.logs import setup_logging
from agir.runs import record_stage_config, run_dir


def run_rule(smk: Any, stage: Callable[..., Any], sections: Iterable[str] = (), **kwargs: Any) -> Any:
    """Run `stage(cfg, run_dir, **kwargs)` for a Snakemake job.

    `smk.params.cfg` is the config the rule declared it depends on (so a change reruns the rule).
    User errors (AgirError) become one log line and exit status 1, not a traceback.
    """
    log_file = smk.log[0] if len(smk.log) else None
    log = setup_logging(log_file)
    cfg = dict(smk.params.cfg)
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


def main_guard(fn: Callable[[], Any]) -> None:
    """For small entry scripts: AgirError -> one line on stderr, exit 1."""
    try:
        fn()
    except AgirError as exc:
        print(f"agir: error: {exc}", file=sys.stderr)
        sys.exit(1)


__all__ = ["run_rule", "main_guard", "Path"]
