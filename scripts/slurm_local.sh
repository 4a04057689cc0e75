#!/usr/bin/env bash
# A throwaway single-node SLURM on this machine (Debian/Ubuntu, as root) to try profiles/slurm by hand:
#   scripts/slurm_local.sh start            # installs slurm-wlm+munge if missing, starts the daemons
#   eval "$(scripts/slurm_local.sh env)"    # point sbatch/squeue/snakemake at it
#   snakemake --profile profiles/slurm -n   # ... or a real run
#   scripts/slurm_local.sh status           # daemons, node, queue
#   scripts/slurm_local.sh stop             # cancels jobs, stops the daemons it started (by PID)
# State (config, logs, PIDs) lives in $AGIR_SLURM_STATE (default: /tmp/agir-slurm-local).
# Same code as the pytest fixture: tests/slurm_harness/.
set -euo pipefail
if [ $# -ne 1 ] || ! [[ "$1" =~ ^(start|stop|status|env)$ ]]; then
  echo "usage: $0 start|stop|status|env" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
state=${AGIR_SLURM_STATE:-${TMPDIR:-/tmp}/agir-slurm-local}
PYTHONPATH="$repo/tests${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m slurm_harness "$1" --state-dir "$state"
