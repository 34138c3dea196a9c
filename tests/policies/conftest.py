"""Scanning small trees written by the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from guards.result import GateResult
from guards.runner import run_gate
from policies.context import Environment
from policies.rule import Finding, Gate

Scan = Callable[..., GateResult]


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.fixture
def scan(tmp_path: Path) -> Scan:
    """Write files into a fresh root and run a gate over them (the venv policy sees a matching environment)."""

    def run(files: dict[str, str | bytes], gate: Gate = Gate.ci, environment: Environment | None = None) -> GateResult:
        write_tree(tmp_path, files)
        env = environment or Environment(tmp_path / ".venv", Path("/usr"), {})
        return run_gate(tmp_path, gate, environment_factory=lambda: env)

    return run


def ids(result: GateResult, prefix: str = "") -> list[str]:
    return sorted(f.rule_id for f in result.findings if f.rule_id.startswith(prefix))


def only(result: GateResult, rule_id: str) -> list[Finding]:
    return [f for f in result.findings if f.rule_id == rule_id]
