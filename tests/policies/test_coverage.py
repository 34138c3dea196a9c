"""Policy `coverage` (COV001): what the reading layer could not analyse is a finding, one per file, waivable per path,
reported by a policy that runs after every other."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from guards.runner import run_gate
from policies import ALL_POLICIES, coverage, find_rule
from policies.context import Environment, ScanContext
from policies.rule import ALL_GATES, Gate, Severity
from policies.settings import Settings
from tests.floors import GENERIC_TRUST
from tests.policies.conftest import only, write_tree

PY312 = "import torch\ntype Vector = list[float]\nstate = torch.load('x.pt')\n"


def _context(root: Path, files: dict[str, str | bytes]) -> ScanContext:
    write_tree(root, files)
    return ScanContext(root=root, gate=Gate.ci, settings=Settings(), files=sorted(files))


def test_the_rule_is_an_error_at_every_gate_documented_and_waivable() -> None:
    rule = find_rule("COV001")
    assert rule is coverage.NOT_ANALYSED
    assert rule.severity is Severity.error
    assert rule.gates == ALL_GATES
    assert rule.waivable
    assert rule.title
    assert rule.rationale
    assert rule.fix
    assert rule.example
    assert rule.example_fix


def test_coverage_runs_last() -> None:
    assert ALL_POLICIES[-1] is coverage.POLICY


def test_nothing_recorded_is_no_finding(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"a.py": "x = 1\n", "b.txt": "hello\n"})
    ctx.python_program("a.py")
    result = coverage.check(ctx)
    assert result.findings == []
    assert sorted(result.examined) == ["a.py", "b.txt"]


def test_every_record_of_a_file_is_one_finding_at_its_first_line(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"a.py": "x = 1\n"})
    ctx.not_analysed("a.py", "first reason", 7)
    ctx.not_analysed("a.py", "second reason", 3)
    ctx.not_analysed("a.py", "second reason", 9)  # the same reason again: once, at its first line
    (finding,) = coverage.check(ctx).findings
    assert (finding.rule_id, finding.path, finding.line) == ("COV001", "a.py", 3)
    assert finding.message == "a.py was not fully analysed: first reason; second reason"


def test_a_whole_file_record_has_no_line(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"a.py": "x = 1\n"})
    ctx.not_analysed("a.py", "whole file", 0)
    ctx.not_analysed("a.py", "a part", 5)
    assert coverage.check(ctx).findings[0].line == 0


def test_the_fingerprint_stays_when_lines_move(tmp_path: Path) -> None:
    first = _context(tmp_path / "one", {"m.py": PY312})
    moved = _context(tmp_path / "two", {"m.py": "\n\n\n" + PY312})
    for ctx in (first, moved):
        ctx.python_program("m.py")
    (before,), (after,) = coverage.check(first).findings, coverage.check(moved).findings
    assert before.line + 3 == after.line
    assert before.fingerprint == after.fingerprint


def test_a_path_waiver_silences_it(tmp_path: Path) -> None:
    created, expires = date.today().isoformat(), (date.today() + timedelta(days=30)).isoformat()
    waiver = (
        f'[[waiver]]\nrule = "COV001"\npath = "tools/new.py"\nreason = "read by a person: no model access"\n'
        f'owner = "platform@oracle.invalid"\ncreated = {created}\nexpires = {expires}\n'
    )

    def run() -> object:
        env = Environment(tmp_path / ".venv", Path("/usr"), {})
        return run_gate(tmp_path, Gate.ci, environment_factory=lambda: env, trust=GENERIC_TRUST)

    write_tree(tmp_path, {"tools/new.py": PY312})
    assert [f.path for f in only(run(), "COV001")] == ["tools/new.py"]  # type: ignore[arg-type]
    write_tree(tmp_path, {"policies/waivers.toml": waiver})
    result = run()
    assert only(result, "COV001") == []  # type: ignore[arg-type]
    assert [finding.rule_id for finding, _ in result.waived] == ["COV001"]  # type: ignore[attr-defined]
