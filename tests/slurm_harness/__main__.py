"""``python -m slurm_harness start|stop|status|env --state-dir DIR`` (used by scripts/slurm_local.sh)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from .cluster import STATE_FILE, SlurmCluster, SlurmHarnessError, new_cluster, why_unavailable


def _exports(cluster: SlurmCluster) -> str:
    return (
        f"export SLURM_CONF={shlex.quote(str(cluster.conf))}\n"
        f'export PATH={shlex.quote(str(cluster.bin_dir))}:"$PATH"\n'
    )


def _load(state_dir: Path) -> SlurmCluster | None:
    return SlurmCluster.load(state_dir) if (state_dir / STATE_FILE).is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_local", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    parser.add_argument("--state-dir", type=Path, required=True, help="folder for config, logs, PIDs")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    cluster = _load(state_dir)
    running = bool(cluster and cluster.running().get("slurmctld"))

    if args.action == "start":
        if running:
            print(f"already running ({state_dir}); point clients at it with:\n{_exports(cluster)}", end="")
            return 0
        reason = why_unavailable()
        if reason:
            print(f"slurm_local: {reason}", file=sys.stderr)
            return 2
        cluster = new_cluster(state_dir).start()
        print(
            f"single-node SLURM up in {cluster.start_seconds:.1f}s: partition {cluster.partition!r}, "
            f"node {cluster.nodename} ({cluster.cpus} CPUs, {cluster.gpus} fake GPU), PIDs {cluster.pids}\n"
            f'point clients at it with (or eval "$(scripts/slurm_local.sh env)"):\n{_exports(cluster)}',
            end="",
        )
        return 0
    if cluster is None:
        print(f"no local SLURM in {state_dir}", file=sys.stderr if args.action != "stop" else sys.stdout)
        return 0 if args.action == "stop" else 1
    if args.action == "stop":
        cluster.stop()
        print(f"stopped ({state_dir})")
        return 0
    if args.action == "env":
        print(_exports(cluster), end="")
        return 0
    # status
    alive = cluster.running()
    if not alive:
        print(f"stopped ({state_dir})")
        return 1
    print(
        "daemons: "
        + ", ".join(f"{n} pid {cluster.pids[n]} {'up' if ok else 'DOWN'}" for n, ok in alive.items())
    )
    if running:
        for cmd in (["sinfo", "-N", "-o", "%N %P %c %m %G %t"], ["squeue"]):
            out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=10)
            print(out.stdout.rstrip() or out.stderr.rstrip())
    return 0 if all(alive.values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SlurmHarnessError as exc:
        print(f"slurm_local: {exc}", file=sys.stderr)
        sys.exit(1)
