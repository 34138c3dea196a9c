"""What every policy is made of: rules (the catalog entries) and findings (what a check reports).

A rule has a stable id (`EXT001`), a title, a severity, the gates it applies at, a rationale, a fix, and an example
of a violation and of its fix; `oracle guards rules` and `oracle guards explain` are generated from these objects.
A finding is one violation at one place; its fingerprint hashes the rule id, the path and the normalised matched
text, so it stays the same when unrelated lines move.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policies.context import ScanContext
    from policies.settings import Settings


class Severity(StrEnum):
    error = "error"  # fails the gate
    warning = "warning"  # reported; fails the gate only when settings say `fail_on = "warning"`


class Gate(StrEnum):
    commit = "commit"  # pre-commit: staged files only, must feel instant
    ci = "ci"  # nox -s guards: the whole tree; attests on success
    publish = "publish"  # before `oracle hub publish`, plus the staged files themselves
    submit = "submit"  # before `oracle submit`
    # The run-time checks: not gates one runs with `oracle guards run`, the checks a command makes when it starts
    # (and the process policy while it runs); their refusals carry rule ids of the same catalog (RUN001-RUN004).
    train = "train"  # `oracle train`
    serve = "serve"  # `oracle serve`
    data = "data"  # `oracle data stage` in a submitted data job


# The gates that judge a tree (`oracle guards run --gate`): the policies run at every one of them.
ALL_GATES = frozenset({Gate.commit, Gate.ci, Gate.publish, Gate.submit})
RUNTIME_GATES = frozenset({Gate.train, Gate.serve, Gate.data})


@dataclass(frozen=True)
class Rule:
    id: str
    policy: str
    title: str
    severity: Severity
    gates: frozenset[Gate]
    rationale: str
    fix: str
    example: str
    example_fix: str
    # False for rules that guard the gate itself (the policy floor, waiver bounds): no waiver may silence them.
    waivable: bool = True

    def finding(self, path: str, line: int, column: int, message: str, matched: str, fix: str | None = None) -> Finding:
        return Finding(
            rule_id=self.id,
            severity=self.severity,
            path=path,
            line=line,
            column=column,
            message=message,
            fix=fix or self.fix,
            fingerprint=fingerprint(self.id, path, matched),
        )


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Severity
    path: str  # relative to the scanned root, with forward slashes ("" for findings about the environment)
    line: int  # 1-based; 0 when the finding is about a whole file or the environment
    column: int  # 1-based; 0 when not applicable
    message: str
    fix: str
    fingerprint: str

    def as_json(self) -> dict[str, object]:
        return {
            "rule_id": self.rule_id,
            "severity": str(self.severity),
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "fix": self.fix,
            "fingerprint": self.fingerprint,
        }


@dataclass
class PolicyResult:
    """What one policy's check produced: findings, and what it looked at (so "nothing found" is never confused with
    "nothing looked at")."""

    findings: list[Finding] = field(default_factory=list)
    examined: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path → why it was not examined

    def findings_for(self, *rules: Rule) -> list[Finding]:
        ids = {rule.id for rule in rules}
        return [finding for finding in self.findings if finding.rule_id in ids]


_WHITESPACE = re.compile(r"\s+")


def fingerprint(rule_id: str, path: str, matched: str) -> str:
    """Stable across unrelated edits: no line numbers, whitespace-normalised matched text."""
    normalised = _WHITESPACE.sub(" ", matched).strip()
    return hashlib.sha256(f"{rule_id}\0{path}\0{normalised}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Policy:
    """One policy module: its rules and the check that evaluates them over a ScanContext."""

    name: str
    rules: tuple[Rule, ...]
    check: Callable[[ScanContext], PolicyResult]
    # The ripgrep patterns its check will ask for, so the runner makes one pass for all policies.
    patterns: Callable[[Settings], list[str]] | None = None

    def rule(self, rule_id: str) -> Rule:
        return next(rule for rule in self.rules if rule.id == rule_id)
