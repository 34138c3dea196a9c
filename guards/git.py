"""The few git facts the gates need: HEAD's commit and tree, whether the tree is clean, what is tracked or staged.

Every answer must hold against a user who controls the checkout, its `.git/config` and the environment, so git runs
with the variables that redirect it removed and with `-c` options that switch off what lets repository config hide a
change (fsmonitor, the untracked cache, a stat cache told to ignore changes, replace objects). Git's own view of
"clean" still trusts index flags and filters, so `dirty_paths` also compares the bytes on disk with HEAD's blobs
itself: a change hidden by `skip-worktree`, `assume-unchanged`, a clean filter or a forged stat cache is still dirty.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from oracle_base.errors import ConfigurationError

# options that override whatever the repository's (or the user's) config says, on every call
_HARDENED = (
    "--no-replace-objects",  # refs/replace/ could make HEAD's tree look like another one
    "-c",
    "core.fsmonitor=false",  # a hook that tells git which files changed; it can simply leave one out
    "-c",
    "core.untrackedCache=false",
    "-c",
    "core.ignoreStat=false",  # true: git never looks at a file again after it is first added
    "-c",
    "core.checkStat=default",
    "-c",
    "core.trustctime=true",  # mtime can be reset with `touch`; ctime cannot
    "-c",
    "status.showUntrackedFiles=all",
    "-c",
    "diff.ignoreSubmodules=none",
)

_HIDDEN_BY = {"S": "skip-worktree", "s": "skip-worktree and assume-unchanged"}  # `git ls-files -v` tags
_BLOB_MODES = {"100644", "100755"}
_SYMLINK_MODE = "120000"
_GITLINK_MODE = "160000"
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


class GitError(ConfigurationError):
    """git is missing, the directory is not a repository, or a git command failed."""


def _environment(*, keep_index: bool = False) -> dict[str, str]:
    """The caller's environment without GIT_* variables, which can point git at another directory, index, object
    store or config (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, GIT_CONFIG_*, ...). `keep_index`: keep GIT_DIR and
    GIT_INDEX_FILE, which a pre-commit hook sets to the index being committed."""
    kept = {"GIT_DIR", "GIT_INDEX_FILE"} if keep_index else set()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_") or key in kept}
    environment["GIT_OPTIONAL_LOCKS"] = "0"  # reading must not take index.lock from someone committing
    return environment


def _run(root: Path, args: tuple[str, ...], *, keep_index: bool = False) -> bytes:
    try:
        completed = subprocess.run(
            ["git", *_HARDENED, *args],
            cwd=root,
            env=_environment(keep_index=keep_index),
            capture_output=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    if completed.returncode != 0:
        stderr = completed.stderr.decode("utf-8", "replace").strip()[:300]
        raise GitError(f"git {' '.join(args)} failed in {root}: {stderr}")
    return completed.stdout


def _git(root: Path, *args: str, keep_index: bool = False) -> str:
    return _run(root, args, keep_index=keep_index).decode("utf-8", "surrogateescape")


def _nul_separated(output: str) -> list[str]:
    return [entry for entry in output.split("\0") if entry]


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


@dataclass(frozen=True)
class TreeEntry:
    mode: str  # 100644, 100755, 120000 (symlink) or 160000 (submodule)
    object_id: str


def head_entries(root: Path) -> dict[str, TreeEntry]:
    """Every file in HEAD's tree (relative posix path → mode and object id), whatever the index says."""
    entries = {}
    for record in _nul_separated(_git(root, "ls-tree", "-r", "-z", "--full-tree", "HEAD")):
        meta, _, path = record.partition("\t")
        mode, _kind, object_id = meta.split()
        entries[path] = TreeEntry(mode, object_id)
    return entries


def blob_id(data: bytes, object_format: str = "sha1") -> str:
    """The id git gives a blob of these bytes (as `git hash-object --no-filters`): hash of "blob <size>\\0" + data."""
    digest = _HASHES[object_format](b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def _working_tree_blob(path: Path, mode: str, object_format: str) -> str | None:
    """The blob id of what is on disk at `path` as a file of `mode`; None when it is missing or of another kind."""
    try:
        if mode == _SYMLINK_MODE:
            return blob_id(os.fsencode(os.readlink(path)), object_format) if path.is_symlink() else None
        if path.is_symlink() or not path.is_file():
            return None
        return blob_id(path.read_bytes(), object_format)
    except OSError:
        return None  # unreadable is not proof that it matches


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _index_flags(root: Path) -> dict[str, str]:
    """Index entries flagged skip-worktree or assume-unchanged → which flags, as `git ls-files -v` tags them."""
    flags = {}
    for record in _nul_separated(_git(root, "ls-files", "-v", "-z")):
        tag, path = record[0], record[2:]
        if tag in _HIDDEN_BY:
            flags[path] = _HIDDEN_BY[tag]
        elif tag.islower():
            flags[path] = "assume-unchanged"
    return flags


def hidden_changes(root: Path) -> list[tuple[str, str]]:
    """Files whose bytes on disk are not HEAD's although `git status` may call them clean, as (path, why): flagged
    skip-worktree or assume-unchanged, changed behind a clean filter or a forged stat cache, or missing. Also a work
    tree that is not `root` (core.worktree) and submodules, whose files HEAD's tree does not hold."""
    top = Path(_git(root, "rev-parse", "--show-toplevel").strip())
    if top.resolve() != root.resolve():
        return [(str(root), f"git's work tree is {top}: run from the top level and unset core.worktree")]
    object_format = _git(root, "rev-parse", "--show-object-format").strip()
    if object_format not in _HASHES:
        raise GitError(f"unknown git object format {object_format!r} in {root}")
    flags = _index_flags(root)
    found = []
    for path, entry in sorted(head_entries(root).items()):
        if entry.mode == _GITLINK_MODE:
            found.append((path, "a submodule: its files are not in the attested tree; vendor them instead"))
            continue
        if entry.mode not in _BLOB_MODES and entry.mode != _SYMLINK_MODE:
            found.append((path, f"unknown tree entry mode {entry.mode}"))
            continue
        on_disk = _working_tree_blob(root / path, entry.mode, object_format)
        if on_disk == entry.object_id and entry.mode == _SYMLINK_MODE and not _inside(root / path, root):
            found.append((path, "a symlink out of the checkout: what it points at is not in the attested tree"))
            continue
        if on_disk == entry.object_id:
            continue
        state = "missing or not a regular file" if on_disk is None else "differs from HEAD"
        if path in flags:
            found.append((path, f"{state}, hidden from git status by {flags[path]}"))
        else:
            found.append((path, f"{state} although git status may call it clean: a filter or stat-cache setting"))
    return found


def _status_paths(root: Path) -> list[str]:
    records = _nul_separated(_git(root, "status", "--porcelain", "-z", "--untracked-files=all"))
    paths, skip_next = [], False
    for record in records:
        if skip_next:  # the source path of a rename or copy
            skip_next = False
            continue
        paths.append(record[3:])
        skip_next = record[0] in "RC"
    return paths


def dirty_paths(root: Path) -> list[str]:
    """Modified, staged, deleted or untracked (not ignored) paths, and changes git status does not show (each as
    "path (why)", see hidden_changes); empty for a tree whose files are exactly HEAD's."""
    shown = _status_paths(root)
    listed = set(shown)
    return shown + [f"{path} ({why})" for path, why in hidden_changes(root) if path not in listed]


def listed_files(root: Path) -> list[str]:
    """Tracked files plus untracked files that .gitignore does not exclude (what the ci gate scans)."""
    output = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted(set(_nul_separated(output)))


def ignored_but_tracked(root: Path) -> list[str]:
    """Tracked files that .gitignore would exclude (force-added): a walker that honours .gitignore misses them."""
    output = _git(root, "ls-files", "-z", "--cached", "--ignored", "--exclude-standard")
    return sorted(_nul_separated(output))


def staged_files(root: Path) -> list[str]:
    """Files added, copied, modified or renamed in the index (what the commit gate scans). Run from a pre-commit
    hook, the index is the one git is committing (GIT_INDEX_FILE), so that variable is kept here."""
    output = _git(root, "diff", "--cached", "--name-only", "-z", "--no-ext-diff", "--diff-filter=ACMR", keep_index=True)
    return sorted(_nul_separated(output))


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
