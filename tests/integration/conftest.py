"""Fixtures for integration tests that need real services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dens.pipeline.rehearsal.slurm_cluster import SlurmCluster, SlurmUnavailable, slurm_cluster


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A working Slurm cluster (an existing one, or one-node on localhost started as root)."""
    try:
        with slurm_cluster() as cluster:
            yield cluster
    except SlurmUnavailable as error:
        pytest.skip(str(error))
