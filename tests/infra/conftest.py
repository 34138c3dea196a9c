"""Fixtures for the cluster gate: a real one-node SLURM cluster for the session (the attested checkout the gates run
in is `repository_checkout`, in tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.slurm_cluster import SlurmCluster, SlurmError, ensure_installed


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real one-node SLURM cluster for the session: installed from Debian's packages when missing, torn down at the
    end. In CI (CI=true) it must come up; elsewhere a machine that cannot install it skips these tests."""
    try:
        ensure_installed()
    except SlurmError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"SLURM cannot be installed here: {exc}")
    state = Path(tempfile.mkdtemp(prefix="oracle-slurm-", dir="/tmp"))  # short: the daemons' unix sockets live here
    cluster = SlurmCluster(state)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
