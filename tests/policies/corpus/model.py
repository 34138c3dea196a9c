"""A corpus case: a small repository as data, what it should do to the ci gate, and how git should hold it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from textwrap import dedent
from typing import Literal

Content = str | bytes
Expected = Literal["violation", "clean"]
# repo: files committed to a fresh repository (the usual case); plain: a folder that is not a git repository;
# uncommitted: `git init` and nothing committed; missing: a --root that does not exist.
RootKind = Literal["repo", "plain", "uncommitted", "missing"]


@dataclass(frozen=True)
class Case:
    """One corpus case. `files` are written and committed (`git add -A`, which honours the case's .gitignore);
    `force_add` are added with `git add -f` (tracked although ignored); `symlinks` are committed as links (path ->
    target, which need not exist); `gitlinks` are submodule entries (path -> commit); `untracked` are written after
    the commit and never added (an ignored or untracked file the gate must leave alone)."""

    name: str
    klass: str
    expected: Expected
    files: Mapping[str, Content]
    force_add: tuple[str, ...] = ()
    symlinks: Mapping[str, str] = field(default_factory=dict)
    gitlinks: Mapping[str, str] = field(default_factory=dict)
    untracked: Mapping[str, Content] = field(default_factory=dict)
    root: RootKind = "repo"
    note: str = ""


def text(source: str) -> str:
    """A file's text written indented in the case tables: dedented, without the first newline."""
    return dedent(source).lstrip("\n")


def violation(name: str, klass: str, files: Mapping[str, Content], **extra: object) -> Case:
    return Case(name=name, klass=klass, expected="violation", files=files, **extra)  # type: ignore[arg-type]


def clean(name: str, klass: str, files: Mapping[str, Content], **extra: object) -> Case:
    return Case(name=name, klass=klass, expected="clean", files=files, **extra)  # type: ignore[arg-type]
