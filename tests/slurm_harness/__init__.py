"""A real single-node SLURM for tests of ``profiles/slurm`` (see ``cluster.py``)."""

from .cluster import (
    PARTITION,
    SLURM_PROFILE,
    SlurmCluster,
    SlurmHarnessError,
    new_cluster,
    run_snakemake_on_slurm,
    sbatch_call_for_rule,
    sbatch_calls,
    timed_out,
    why_unavailable,
)

__all__ = [
    "PARTITION",
    "SLURM_PROFILE",
    "SlurmCluster",
    "SlurmHarnessError",
    "new_cluster",
    "run_snakemake_on_slurm",
    "sbatch_call_for_rule",
    "sbatch_calls",
    "timed_out",
    "why_unavailable",
]
