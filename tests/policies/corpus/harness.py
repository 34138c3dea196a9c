"""Build each corpus case as its own git repository and run the ci gate over it in-process, as
tests/guards/test_runner.py does (the tests' generic floor as the trust root, a described environment that matches
the tree, so the venv policy judges the tree and not the interpreter running the tests)."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.policies.corpus.model import Case

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "corpus",
    "GIT_AUTHOR_EMAIL": "corpus@oracle.invalid",
    "GIT_COMMITTER_NAME": "corpus",
    "GIT_COMMITTER_EMAIL": "corpus@oracle.invalid",
    "GIT_AUTHOR_DATE": "2024-05-17T09:30:00Z",
    "GIT_COMMITTER_DATE": "2024-05-17T09:30:00Z",
}


def _git(root: Path, *args: str) -> None:
    # the user's global config stays out: an empty file of our own (not os.devnull, which need not be a device)
    config = root.parent / "empty.gitconfig"
    done = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args],
        cwd=root,
        env={**os.environ, **_GIT_ENV, "GIT_CONFIG_GLOBAL": str(config)},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{root.name}: git {' '.join(args)} failed: {done.stderr.strip()}")


def _write(root: Path, files: Iterable[tuple[str, str | bytes]]) -> None:
    for relative, content in files:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def build(case: Case, directory: Path) -> Path:
    """Lay out `case` under `directory` and return the root the gate is to be run on."""
    root = directory / case.name
    if case.root == "missing":
        return root
    root.mkdir(parents=True)
    _write(root, case.files.items())
    for link, target in case.symlinks.items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / link)
    if case.root == "plain":
        return root
    (directory / "empty.gitconfig").touch()
    _git(root, "init", "-q")
    if case.root == "uncommitted":
        return root
    _git(root, "add", "-A")
    if case.force_add:
        _git(root, "add", "-f", "--", *case.force_add)
    for path, commit in case.gitlinks.items():
        _git(root, "update-index", "--add", "--cacheinfo", f"160000,{commit},{path}")
    _git(root, "commit", "-q", "--allow-empty", "-m", f"corpus case {case.name}")
    _write(root, case.untracked.items())
    return root


@dataclass
class Outcome:
    case: Case
    findings: list[str] = field(default_factory=list)  # "RULE path:line message"
    errors: list[str] = field(default_factory=list)  # the gate's errors, or the exception it raised (exit 2)

    @property
    def flagged(self) -> bool:
        """The gate did not pass cleanly: a finding, an error, or it refused to run (exit 2)."""
        return bool(self.findings or self.errors)

    @property
    def as_expected(self) -> bool:
        return self.flagged == (self.case.expected == "violation")

    def describe(self) -> str:
        what = self.findings[:3] + self.errors[:2]
        more = len(self.findings) + len(self.errors) - len(what)
        return "; ".join(what) + (f" (+{more} more)" if more > 0 else "")


def run_case(case: Case, root: Path) -> Outcome:
    from guards.runner import check_root, run_gate
    from policies.context import Environment
    from policies.rule import Gate
    from tests.floors import GENERIC_TRUST

    outcome = Outcome(case)
    environment = Environment(root / ".venv", Path("/usr"), {})
    try:
        check_root(root)  # what `oracle guards run --root` does first (exit 2 on a missing, empty or non-git root)
        result = run_gate(root, Gate.ci, environment_factory=lambda: environment, trust=GENERIC_TRUST)
    except Exception as exc:  # the CLI turns any exception into exit 2: never a pass
        outcome.errors.append(f"raised {type(exc).__name__}: {str(exc)[:160]}")
        return outcome
    for finding in result.findings:
        if not finding.path and finding.rule_id.startswith("VENV"):
            continue  # about the interpreter running the corpus, not about the case's tree
        outcome.findings.append(f"{finding.rule_id} {finding.path}:{finding.line} {finding.message[:100]}")
    outcome.errors.extend(result.errors)
    return outcome


def run_corpus(directory: Path, cases: Sequence[Case], workers: int = 4) -> list[Outcome]:
    """Build every case (git in parallel: it is subprocess-bound), then run the gate over each in turn."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        roots = list(pool.map(lambda case: build(case, directory), cases))
    return [run_case(case, root) for case, root in zip(cases, roots, strict=True)]


def detection_rate(outcomes: Sequence[Outcome]) -> float:
    violations = [o for o in outcomes if o.case.expected == "violation"]
    return sum(o.flagged for o in violations) / len(violations) if violations else 1.0


def report(outcomes: Sequence[Outcome], details: bool = True) -> str:
    """Per class: violations detected and clean controls flagged; then every missed case and flagged control."""
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # detected, violations, flagged, clean
    for outcome in outcomes:
        row = stats[outcome.case.klass]
        if outcome.case.expected == "violation":
            row[0] += outcome.flagged
            row[1] += 1
        else:
            row[2] += outcome.flagged
            row[3] += 1
    lines = [f"{'class':<18} {'detected':>12} {'rate':>6}   {'clean flagged':>13}"]
    total = [0, 0, 0, 0]
    for klass in sorted(stats):
        row = stats[klass]
        total = [a + b for a, b in zip(total, row, strict=True)]
        rate = f"{row[0] / row[1]:.0%}" if row[1] else "-"
        lines.append(f"{klass:<18} {f'{row[0]}/{row[1]}':>12} {rate:>6}   {f'{row[2]}/{row[3]}':>13}")
    rate = f"{total[0] / total[1]:.1%}" if total[1] else "-"
    lines.append(f"{'total':<18} {f'{total[0]}/{total[1]}':>12} {rate:>6}   {f'{total[2]}/{total[3]}':>13}")
    if details:
        missed = [o for o in outcomes if o.case.expected == "violation" and not o.flagged]
        flagged = [o for o in outcomes if o.case.expected == "clean" and o.flagged]
        if missed:
            lines += ["", f"missed violations ({len(missed)}):"]
            lines += [f"  {o.case.klass:<18} {o.case.name}" for o in sorted(missed, key=_key)]
        if flagged:
            lines += ["", f"flagged clean controls ({len(flagged)}):"]
            lines += [f"  {o.case.klass:<18} {o.case.name}: {o.describe()}" for o in sorted(flagged, key=_key)]
    return "\n".join(lines)


def _key(outcome: Outcome) -> tuple[str, str]:
    return outcome.case.klass, outcome.case.name
