"""Fixtures for the cluster gate: a real one-node SLURM cluster for the session, and a checkout of this repository
(its current files, committed into a fresh git repository) that `oracle submit` can gate, attest and submit from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from guards.keys import generate_keypair
from tests.infra.slurm_cluster import SlurmCluster, SlurmError, ensure_installed
from tests.train.conftest import write_corpus

REPO = Path(__file__).resolve().parents[2]
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
ORACLE = str(Path(sys.executable).parent / "oracle")


def git(root: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repository_checkout(tmp_path: Path) -> Path:
    """This repository's files (tracked and new, not ignored) committed into tmp_path/checkout, with the project's
    .venv linked in, a throwaway signing key trusted by policies/keys/, and the oracle-mini corpus at data/mini."""
    root = tmp_path / "checkout"
    root.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git(root, "init", "-q", "-b", "main")
    with (root / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(".venv\n/data/\n")  # a link to the project's venv; the job's data, prepared outside git
    (root / ".venv").symlink_to(Path(sys.prefix).resolve(), target_is_directory=True)
    generate_keypair(tmp_path / "signing.pem", root / "policies" / "keys" / "submit-test.pub")
    write_corpus(root / "data" / "mini")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "checkout under test")
    return root


def oracle(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ORACLE, *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def attest(root: Path, key: Path) -> None:
    done = oracle(root, "guards", "attest", env={"ORACLE_SIGNING_KEY": str(key)})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def repository_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One attested checkout for the session (tests that change it make their own)."""
    tmp = tmp_path_factory.mktemp("submit")
    root = make_repository_checkout(tmp)
    attest(root, tmp / "signing.pem")
    return root


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
