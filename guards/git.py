"""The few git facts the gates need: HEAD's commit and tree, whether the tree is clean, what is tracked or staged."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitError(RuntimeError):
    """git is missing, the directory is not a repository, or a git command failed."""


def _git(root: Path, *args: str) -> str:
    try:
        completed = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    if completed.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {root}: {completed.stderr.strip()[:300]}")
    return completed.stdout


def is_repository(root: Path) -> bool:
    try:
        return _git(root, "rev-parse", "--is-inside-work-tree").strip() == "true"
    except GitError:
        return False


def head_commit(root: Path) -> str:
    return _git(root, "rev-parse", "HEAD").strip()


def head_commit_or_none(root: Path) -> str | None:
    """HEAD's commit, or None outside a repository (what an audit entry records when there is no commit)."""
    try:
        return head_commit(root)
    except GitError:
        return None


def head_tree(root: Path) -> str:
    return _git(root, "rev-parse", "HEAD^{tree}").strip()


def dirty_paths(root: Path) -> list[str]:
    """Modified, staged, deleted or untracked (not ignored) paths; empty for a clean tree."""
    lines = _git(root, "status", "--porcelain", "--untracked-files=all").splitlines()
    return [line[3:] for line in lines if line.strip()]


def listed_files(root: Path) -> list[str]:
    """Tracked files plus untracked files that .gitignore does not exclude (what the ci gate scans)."""
    output = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted({path for path in output.split("\0") if path})


def ignored_but_tracked(root: Path) -> list[str]:
    """Tracked files that .gitignore would exclude (force-added): a walker that honours .gitignore misses them."""
    output = _git(root, "ls-files", "-z", "--cached", "--ignored", "--exclude-standard")
    return sorted(path for path in output.split("\0") if path)


def staged_files(root: Path) -> list[str]:
    """Files added, copied, modified or renamed in the index (what the commit gate scans)."""
    output = _git(root, "diff", "--cached", "--name-only", "-z", "--diff-filter=ACMR")
    return sorted(path for path in output.split("\0") if path)


def user(root: Path) -> str:
    """Who is acting, as git knows them: the email, else the name, else ""."""
    for key in ("user.email", "user.name"):
        try:
            value = _git(root, "config", key).strip()
        except GitError:  # `git config` exits 1 when the key is unset
            continue
        if value:
            return value
    return ""
