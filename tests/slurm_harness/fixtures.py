"""pytest fixture ``slurm_cluster``: a single-node SLURM started once per session, stopped by PID."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .cluster import SlurmCluster, new_cluster, why_unavailable

ENV_SWITCH = "AGIR_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Yields a started :class:`SlurmCluster` (``.partition``, ``.env`` for snakemake/sbatch).

    Opt-in: it installs packages and starts root daemons, so it runs only with ``AGIR_SLURM=1``
    (``make test-slurm``) and as root; otherwise the test is skipped with the reason.
    """
    if os.environ.get(ENV_SWITCH) != "1":
        pytest.skip(
            f"single-node SLURM tests are opt-in: set {ENV_SWITCH}=1 (make test-slurm); they need root"
        )
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = new_cluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
