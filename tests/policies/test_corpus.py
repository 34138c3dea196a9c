"""The red-team corpus (tests/policies/corpus): every case is its own small git repository judged by the ci gate.
At least 95 % of the violation cases are detected (a finding, an error or exit 2) and no clean control is flagged."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.policies.corpus.cases import all_cases
from tests.policies.corpus.harness import Outcome, detection_rate, report, run_corpus

MIN_DETECTION = 0.95


@pytest.fixture(scope="session")
def corpus_outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    return run_corpus(tmp_path_factory.mktemp("corpus"), all_cases())


def test_the_corpus_is_the_size_the_issue_asks_for() -> None:
    counts = collections.Counter(case.expected for case in all_cases())
    assert counts["violation"] >= 120, counts
    assert counts["clean"] >= 40, counts
    classes = {case.klass for case in all_cases() if case.expected == "violation"}
    near_misses = {case.klass for case in all_cases() if case.expected == "clean"}
    assert classes - {"root"} <= near_misses, "every violation class has a clean near miss"


def test_violation_cases_are_detected(corpus_outcomes: list[Outcome]) -> None:
    rate = detection_rate(corpus_outcomes)
    if rate < MIN_DETECTION:
        pytest.fail(f"detection {rate:.1%} < {MIN_DETECTION:.0%}\n{report(corpus_outcomes)}", pytrace=False)


def test_no_clean_control_is_flagged(corpus_outcomes: list[Outcome]) -> None:
    flagged = [o for o in corpus_outcomes if o.case.expected == "clean" and o.flagged]
    if flagged:
        pytest.fail(f"{len(flagged)} clean controls flagged\n{report(corpus_outcomes)}", pytrace=False)


def test_cases_build_as_described(tmp_path: Path) -> None:
    """The harness lays cases out as their setup says: force-added and linked files are tracked, untracked ones not."""
    import subprocess

    from tests.policies.corpus.harness import build

    by_name = {case.name: case for case in all_cases()}
    for name in ("safetensors-under-ignored-folder", "symlink-dir-into-hub-cache", "ignored-untracked-weights"):
        case = by_name[name]
        root = build(case, tmp_path)
        tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
        for path in (*case.force_add, *case.symlinks):
            assert path in tracked.splitlines(), (name, path)
        for path in case.untracked:
            assert (root / path).exists(), (name, path)
            assert path not in tracked.splitlines(), (name, path)
