"""The audit log: entries chain by hash, and every kind of tampering verify_log promises to catch is caught."""

from __future__ import annotations

import json
import multiprocessing
import socket
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from guards import audit, git
from guards.audit import GENESIS, AuditError, append_entry, entry_hash, verify_log
from guards.paths import AUDIT_HEAD, AUDIT_LOG


def _append_three(root: Path) -> list[dict[str, object]]:
    return [
        append_entry(root, gate="commit", result="pass", commit="a" * 40),
        append_entry(root, gate="ci", result="fail", commit="b" * 40, waivers=["W-1"], details={"findings": 2}),
        append_entry(root, gate="release", result="refused", commit=None),
    ]


def _lines(root: Path) -> list[str]:
    return (root / AUDIT_LOG).read_text(encoding="utf-8").splitlines()


def _write_lines(root: Path, lines: list[str]) -> None:
    (root / AUDIT_LOG).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _append_many(root: str, barrier: Barrier, worker: int, count: int) -> None:
    barrier.wait()  # start together so the appenders really contend for the lock
    for index in range(count):
        append_entry(Path(root), gate="ci", result="pass", commit=None, details={"worker": worker, "index": index})


def test_three_appended_entries_verify_clean(tmp_path: Path) -> None:
    _append_three(tmp_path)

    assert verify_log(tmp_path) == []
    assert len(_lines(tmp_path)) == 3


def test_missing_log_and_head_are_intact_and_empty(tmp_path: Path) -> None:
    assert verify_log(tmp_path) == []


def test_first_entry_has_every_field_and_starts_the_chain(tmp_path: Path) -> None:
    entry = append_entry(
        tmp_path,
        gate="commit",
        result="allowed-override",
        commit="c" * 40,
        waivers=["W-7"],
        details={"paths": ("a.py",)},
        now=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    )

    assert set(entry) == audit.FIELDS
    assert entry["seq"] == 1
    assert entry["prev"] == GENESIS
    assert entry["time"] == "2024-05-01T12:30:00.000000Z"
    assert entry["details"] == {"paths": ["a.py"]}  # returned as stored
    assert entry["hash"] == entry_hash(entry)
    assert json.loads(_lines(tmp_path)[0]) == entry


def test_hash_chain_links_each_entry_to_the_one_before(tmp_path: Path) -> None:
    first, second, third = _append_three(tmp_path)

    assert second["prev"] == first["hash"]
    assert third["prev"] == second["hash"]
    assert [first["seq"], second["seq"], third["seq"]] == [1, 2, 3]


def test_head_records_the_last_entry(tmp_path: Path) -> None:
    last = _append_three(tmp_path)[-1]

    assert json.loads((tmp_path / AUDIT_HEAD).read_text(encoding="utf-8")) == {"seq": 3, "hash": last["hash"]}


def test_appending_never_rewrites_existing_lines(tmp_path: Path) -> None:
    _append_three(tmp_path)
    before = (tmp_path / AUDIT_LOG).read_bytes()

    append_entry(tmp_path, gate="ci", result="pass", commit=None)

    assert (tmp_path / AUDIT_LOG).read_bytes().startswith(before)


def test_edited_entry_is_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    lines = _lines(tmp_path)
    edited = json.loads(lines[1])
    edited["result"] = "pass"  # the hash is left as it was
    lines[1] = json.dumps(edited)
    _write_lines(tmp_path, lines)

    problems = verify_log(tmp_path)

    assert len(problems) == 1
    assert "line 2" in problems[0]
    assert "hash does not match" in problems[0]


def test_deleted_entry_is_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    lines = _lines(tmp_path)
    _write_lines(tmp_path, [lines[0], lines[2]])

    problems = verify_log(tmp_path)

    assert any("line 2: seq is 3, expected 2" in problem for problem in problems)
    assert any("line 2: prev does not match the hash of line 1" in problem for problem in problems)


def test_swapped_entries_are_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    lines = _lines(tmp_path)
    _write_lines(tmp_path, [lines[0], lines[2], lines[1]])

    problems = verify_log(tmp_path)

    assert any("line 2: seq is 3, expected 2" in problem for problem in problems)
    assert any("line 3: prev does not match" in problem for problem in problems)


def test_truncated_last_entry_is_detected_via_the_head(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _write_lines(tmp_path, _lines(tmp_path)[:2])

    problems = verify_log(tmp_path)

    assert len(problems) == 1
    assert str(AUDIT_HEAD) in problems[0]
    assert "records seq 3" in problems[0]
    assert "line 2" in problems[0]
    assert "removed from the end" in problems[0]


def test_garbage_line_is_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    lines = _lines(tmp_path)
    lines[1] = "{not json"
    _write_lines(tmp_path, lines)

    problems = verify_log(tmp_path)

    assert len(problems) == 1
    assert "line 2: not valid JSON" in problems[0]


def test_missing_head_with_entries_is_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    (tmp_path / AUDIT_HEAD).unlink()

    problems = verify_log(tmp_path)

    assert len(problems) == 1
    assert "missing" in problems[0]
    assert "line 3" in problems[0]


def test_cut_off_last_line_is_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    log = tmp_path / AUDIT_LOG
    log.write_bytes(log.read_bytes()[:-1])

    assert any("line 3: no newline at the end" in problem for problem in verify_log(tmp_path))


def test_append_refuses_to_extend_a_truncated_log(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _write_lines(tmp_path, _lines(tmp_path)[:2])

    with pytest.raises(AuditError, match="records seq 3"):
        append_entry(tmp_path, gate="ci", result="pass", commit=None)
    assert len(_lines(tmp_path)) == 2  # nothing appended: the next head would have hidden the truncation


def test_append_recovers_when_the_head_write_was_interrupted(tmp_path: Path) -> None:
    first = append_entry(tmp_path, gate="ci", result="pass", commit=None)
    head_after_first = (tmp_path / AUDIT_HEAD).read_bytes()
    append_entry(tmp_path, gate="ci", result="pass", commit=None)
    (tmp_path / AUDIT_HEAD).write_bytes(head_after_first)  # as if the process died before replacing the head

    third = append_entry(tmp_path, gate="ci", result="pass", commit=None)

    assert third["seq"] == 3
    assert first["seq"] == 1
    assert verify_log(tmp_path) == []


def test_details_that_are_not_json_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="not plain JSON"):
        append_entry(tmp_path, gate="ci", result="pass", commit=None, details={"when": datetime.now(UTC)})
    assert not (tmp_path / AUDIT_LOG).exists()  # refused before anything was opened


def test_who_falls_back_to_user_at_host_without_a_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git, "user", lambda root: "")
    monkeypatch.setenv("USER", "auditor")

    entry = append_entry(tmp_path, gate="ci", result="pass", commit=None)

    assert entry["who"] == f"auditor@{socket.gethostname()}"


def test_who_is_the_git_identity_when_there_is_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git, "user", lambda root: "dev@example.org")

    assert append_entry(tmp_path, gate="ci", result="pass", commit=None)["who"] == "dev@example.org"


def test_concurrent_appenders_keep_the_chain_intact(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # separate interpreters, as separate gate runs would be
    workers, count = 4, 10
    barrier = context.Barrier(workers)
    processes = [
        context.Process(target=_append_many, args=(str(tmp_path), barrier, worker, count)) for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    assert [process.exitcode for process in processes] == [0] * workers
    entries = [json.loads(line) for line in _lines(tmp_path)]
    assert [entry["seq"] for entry in entries] == list(range(1, workers * count + 1))
    assert sorted((entry["details"]["worker"], entry["details"]["index"]) for entry in entries) == [
        (worker, index) for worker in range(workers) for index in range(count)
    ]
    assert verify_log(tmp_path) == []
