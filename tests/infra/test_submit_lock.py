"""The per-checkout submit lock (infra.submit.submissions_lock): one submit at a time passes the duplicate check and
hands its job over; a second waits for it, and one that waits too long is refused in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra import submit
from infra.submit import SubmitRefusedError, submissions_lock


def test_the_lock_lives_in_the_git_ignored_state_folder(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(".oracle/\n")
    with submissions_lock(tmp_path):
        lock = tmp_path / ".oracle" / "submissions" / ".lock"
        assert lock.is_file()
        ignored = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", str(lock)], check=False)
        assert ignored.returncode == 0


def test_a_second_submit_waits_and_is_refused_when_the_first_holds_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit, "LOCK_WAIT_S", 0.2)
    with submissions_lock(tmp_path):
        with pytest.raises(SubmitRefusedError) as caught, submissions_lock(tmp_path):
            pytest.fail("two submits held the lock at once")
        assert str(caught.value) == (
            f"another `oracle submit` has held {tmp_path / '.oracle' / 'submissions' / '.lock'} for 0.2 s; let it "
            "finish (or end it), then submit"
        )
    with submissions_lock(tmp_path):  # released by the first: the next one passes
        pass
