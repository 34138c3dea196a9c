"""A checkout of this repository for tests of the gates: its current files (tracked and new, not ignored) committed
into a fresh git repository, with the project's .venv linked in, the session trust root's signing key beside it,
and the oracle-mini corpus at data/mini; plus helpers to run `oracle` and attest in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.train.conftest import write_corpus
from tests.trust import session_key

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
ORACLE = str(Path(sys.executable).parent / "oracle")


def git(root: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repository_checkout(tmp_path: Path) -> Path:
    """This repository's files (tracked and new, not ignored) committed into tmp_path/checkout, with the project's
    .venv linked in, the session trust root's signing key at tmp_path/signing.pem, and the oracle-mini corpus at
    data/mini."""
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
    session_key(tmp_path / "signing.pem")  # a key of the session's trust root (tests.trust), outside the tree
    write_corpus(root / "data" / "mini")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "checkout under test")
    return root


def oracle(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`oracle ARGS` in the checkout. The timeout only stops a hung command: the publish and submit gates hash every
    file of the venv against its RECORD and compile what they import from source (about 25 s on 2 idle cores), and
    a busy CI machine can take several times that."""
    return subprocess.run(
        [ORACLE, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},  # the checkout's own code, as a job runs it
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def attest(root: Path, key: Path) -> None:
    done = oracle(root, "guards", "attest", env={"ORACLE_SIGNING_KEY": str(key)})
    assert done.returncode == 0, done.stdout + done.stderr
