"""The audit log: entries chain by hash, are signed when a key is configured, are anchored by the records that carry
the head, and every kind of tampering verify_log promises to catch is caught."""

from __future__ import annotations

import json
import multiprocessing
import socket
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards import git, keys
from guards.audit import (
    GENESIS,
    SIGNATURE,
    SIGNER,
    AuditError,
    append_entry,
    check_log,
    current_anchor,
    entry_hash,
    verify_log,
)
from guards.paths import AUDIT_HEAD, AUDIT_LOG, RUNS_DIR, SIGNING_KEY_ENV, SUBMISSIONS_DIR
from guards.provenance import write_provenance
from guards.trust import TRUST_ROOT_ENV
from oracle_base.digests import canonical_json
from oracle_base.records.governance import SUBMISSION_PAYLOAD_TYPE
from tests.guards.test_governance_records import SUBMISSION
from tests.trust import session_key


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


def test_missing_log_and_head_have_no_problems(tmp_path: Path) -> None:
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

    assert set(entry) == {"seq", "time", "who", "gate", "commit", "result", "waivers", "details", "prev", "hash"}
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
    assert problems[0].startswith(f"{AUDIT_LOG}:2: ")
    assert "hash does not match" in problems[0]


def test_deleted_entry_is_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    lines = _lines(tmp_path)
    _write_lines(tmp_path, [lines[0], lines[2]])

    problems = verify_log(tmp_path)

    assert any(f"{AUDIT_LOG}:2: seq is 3, expected 2" in problem for problem in problems)
    assert any(f"{AUDIT_LOG}:2: prev does not match the hash of line 1" in problem for problem in problems)


def test_swapped_entries_are_detected(tmp_path: Path) -> None:
    _append_three(tmp_path)
    lines = _lines(tmp_path)
    _write_lines(tmp_path, [lines[0], lines[2], lines[1]])

    problems = verify_log(tmp_path)

    assert any(f"{AUDIT_LOG}:2: seq is 3, expected 2" in problem for problem in problems)
    assert any(f"{AUDIT_LOG}:3: prev does not match" in problem for problem in problems)


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
    assert f"{AUDIT_LOG}:2: not valid JSON" in problems[0]


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

    assert any(f"{AUDIT_LOG}:3: no newline at the end" in problem for problem in verify_log(tmp_path))


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


# --- signatures -------------------------------------------------------------------------------------------------


def _signing_env() -> dict[str, str]:
    return {SIGNING_KEY_ENV: str(session_key())}  # a key of the session's trust root (every role)


def test_entries_are_signed_when_a_key_is_configured(tmp_path: Path) -> None:
    entry = append_entry(tmp_path, gate="ci", result="pass", commit=None, environ=_signing_env())
    append_entry(tmp_path, gate="commit", result="pass", commit=None, environ={})

    report = check_log(tmp_path)

    assert entry[SIGNER] == keys.key_id(_private(session_key()).public_key())
    assert entry["hash"] == entry_hash(entry)  # the signer is hashed, the signature is not
    assert report.problems == []
    assert (report.signed, report.unsigned) == (1, 1)
    assert "1 signed by trusted keys, 1 unsigned" in report.summary()[-1]


def test_a_stripped_signature_is_detected(tmp_path: Path) -> None:
    append_entry(tmp_path, gate="ci", result="pass", commit=None, environ=_signing_env())
    entry = json.loads(_lines(tmp_path)[0])
    del entry[SIGNATURE]
    _write_lines(tmp_path, [json.dumps(entry)])

    (problem,) = verify_log(tmp_path)

    assert problem.startswith(f"{AUDIT_LOG}:1: ")
    assert "the signature was stripped or altered" in problem


def test_an_altered_signature_is_detected(tmp_path: Path) -> None:
    append_entry(tmp_path, gate="ci", result="pass", commit=None, environ=_signing_env())
    other = append_entry(tmp_path / "other", gate="ci", result="fail", commit=None, environ=_signing_env())
    entry = json.loads(_lines(tmp_path)[0])
    entry[SIGNATURE] = other[SIGNATURE]  # a real signature by the same key, over another entry
    _write_lines(tmp_path, [json.dumps(entry)])

    (problem,) = verify_log(tmp_path)

    assert f"{AUDIT_LOG}:1: the signature by key" in problem
    assert "does not verify" in problem


def test_an_entry_signed_by_a_key_the_trust_root_does_not_name_is_detected(tmp_path: Path) -> None:
    keys.generate_keypair(tmp_path / "keys" / "stranger.pem", tmp_path / "keys" / "stranger.pub")
    append_entry(
        tmp_path,
        gate="ci",
        result="pass",
        commit=None,
        environ={SIGNING_KEY_ENV: str(tmp_path / "keys" / "stranger.pem")},
    )

    (problem,) = verify_log(tmp_path)

    assert f"{AUDIT_LOG}:1: signed by key" in problem
    assert "which the trust root does not name" in problem


def test_a_configured_key_that_cannot_be_loaded_refuses_the_append(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"cannot sign entries of .* does not exist"):
        append_entry(
            tmp_path, gate="ci", result="pass", commit=None, environ={SIGNING_KEY_ENV: str(tmp_path / "none.pem")}
        )
    assert not (tmp_path / AUDIT_LOG).exists()  # never a silently unsigned entry


# --- the current anchor -----------------------------------------------------------------------------------------


def test_current_anchor_is_none_before_the_first_entry(tmp_path: Path) -> None:
    assert current_anchor(tmp_path) is None


def test_current_anchor_is_the_last_entry(tmp_path: Path) -> None:
    last = _append_three(tmp_path)[-1]

    assert current_anchor(tmp_path) == {"seq": 3, "hash": last["hash"]}


def test_current_anchor_refuses_a_cut_log(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _write_lines(tmp_path, _lines(tmp_path)[:2])

    with pytest.raises(AuditError, match="records seq 3"):
        current_anchor(tmp_path)


def test_current_anchor_refuses_a_deleted_log_whose_head_remains(tmp_path: Path) -> None:
    _append_three(tmp_path)
    (tmp_path / AUDIT_LOG).unlink()

    with pytest.raises(AuditError, match="the log was deleted"):
        current_anchor(tmp_path)


# --- anchors in records -----------------------------------------------------------------------------------------


def _submission(root: Path, name: str, anchor: object, *, signed: bool = False) -> Path:
    """A submission record as `oracle submit` writes it (a DSSE envelope, signed by a key of the trust root), or
    the same record unsigned."""
    record = {**SUBMISSION, "audit": anchor}
    sealed = keys.seal(SUBMISSION_PAYLOAD_TYPE, canonical_json(record), [_private(session_key())] if signed else [])
    path = root / SUBMISSIONS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sealed.to_bytes(sort_keys=True))
    return path


def _private(path: Path) -> Ed25519PrivateKey:
    key = keys.load_signing_key({SIGNING_KEY_ENV: str(path)})
    assert key is not None
    return key


def test_a_consistent_log_no_record_anchors_is_not_intact(tmp_path: Path) -> None:
    _append_three(tmp_path)

    report = check_log(tmp_path)

    assert report.problems == []
    assert not report.intact
    assert report.summary()[0].startswith("audit log unanchored: its 3 entries chain consistently")
    assert "make guards" in report.summary()[0]


def test_an_empty_log_is_not_intact_either(tmp_path: Path) -> None:
    report = check_log(tmp_path)

    assert (report.problems, report.intact) == ([], False)
    assert "it has no entries" in report.summary()[0]


def test_a_log_anchored_by_a_signed_record_is_intact(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", current_anchor(tmp_path), signed=True)
    append_entry(tmp_path, gate="submit", result="allowed", commit=None)

    report = check_log(tmp_path)

    assert report.problems == []
    assert report.intact
    assert report.summary()[0] == (
        "audit log intact: 4 entries, anchored up to seq 3 by 1 record(s), 1 of them signed by a trusted key"
    )
    assert "seq 4..4 not yet anchored" in report.summary()[1]


def test_under_a_trust_root_unsigned_records_do_not_anchor(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", current_anchor(tmp_path))

    report = check_log(tmp_path)

    assert report.problems == []  # the anchor matches, but a checkout holder could have written it
    assert not report.intact
    assert "none is signed by a key of the trust root" in report.summary()[0]


def test_under_the_development_default_an_unsigned_record_anchors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRUST_ROOT_ENV, raising=False)
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", current_anchor(tmp_path))

    report = check_log(tmp_path)

    assert report.intact
    assert "development default: unsigned records prove less" in report.summary()[0]


def test_an_anchor_past_the_end_of_the_log_is_a_cut(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", current_anchor(tmp_path), signed=True)
    _write_lines(tmp_path, _lines(tmp_path)[:2])
    (tmp_path / AUDIT_HEAD).write_text(json.dumps({"seq": 2, "hash": json.loads(_lines(tmp_path)[1])["hash"]}))

    (problem,) = verify_log(tmp_path)

    assert problem.startswith(f"{SUBMISSIONS_DIR.as_posix()}/s1.json: anchors {AUDIT_LOG} at seq 3")
    assert "but the log ends at seq 2 (entries were cut off)" in problem


def test_a_record_whose_anchor_the_log_does_not_hold_names_the_line(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", {"seq": 2, "hash": "f" * 64})

    (problem,) = verify_log(tmp_path)

    assert "s1.json: anchors" in problem
    assert "but line 2 (seq 2) has hash" in problem


def test_an_unparsable_record_is_a_problem_not_a_skip(tmp_path: Path) -> None:
    _append_three(tmp_path)
    path = _submission(tmp_path, "s1.json", None)
    path.write_text("{not json")

    (problem,) = verify_log(tmp_path)

    assert problem.startswith(f"{SUBMISSIONS_DIR.as_posix()}/s1.json:1: not a JSON DSSE envelope")


def test_a_plain_json_record_outside_an_envelope_is_a_problem(tmp_path: Path) -> None:
    _append_three(tmp_path)
    (tmp_path / SUBMISSIONS_DIR).mkdir(parents=True)
    (tmp_path / SUBMISSIONS_DIR / "by-hand.json").write_text(json.dumps({"commit": "c" * 40, "audit": None}))

    (problem,) = verify_log(tmp_path)

    assert problem.startswith(f"DSSE envelope {SUBMISSIONS_DIR.as_posix()}/by-hand.json: payloadType: Field required")


@pytest.mark.parametrize(
    ("anchor", "message"),
    [
        ({"seq": "3", "hash": "f" * 64}, "payload.audit.seq: Input should be a valid integer"),
        ({"seq": 0, "hash": "f" * 64}, "payload.audit.seq: Input should be greater than or equal to 1"),
        ({"seq": 3}, "payload.audit.hash: Field required"),
        ({"seq": 3, "hash": "F" * 64}, "payload.audit.hash: String should match pattern"),
        ([3], "payload.audit: Input should be a valid dictionary"),
    ],
)
def test_a_malformed_anchor_is_a_problem_naming_line_and_key(tmp_path: Path, anchor: object, message: str) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", anchor)

    (problem,) = verify_log(tmp_path)

    assert f"submission record {SUBMISSIONS_DIR.as_posix()}/s1.json:2: {message}" in problem


def test_records_without_an_anchor_anchor_nothing(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "old.json", None)
    _submission(tmp_path, "signed.json", None, signed=True)

    report = check_log(tmp_path)

    assert (report.problems, report.anchors) == ([], [])


def test_provenance_beside_a_checkpoint_anchors_the_log(tmp_path: Path) -> None:
    _append_three(tmp_path)
    checkpoint = tmp_path / RUNS_DIR / "mini" / "step-00000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    facts = {"step": 2, "audit": current_anchor(tmp_path)}
    write_provenance(checkpoint, ["model.safetensors"], facts, _private(session_key()))

    report = check_log(tmp_path)

    assert report.intact
    assert [(a.record, a.seq, a.signed) for a in report.anchors] == [
        (f"{RUNS_DIR.as_posix()}/mini/step-00000002/provenance.json", 3, True)
    ]


def test_a_deleted_log_that_records_anchor_is_tampering(tmp_path: Path) -> None:
    _append_three(tmp_path)
    _submission(tmp_path, "s1.json", current_anchor(tmp_path), signed=True)
    (tmp_path / AUDIT_LOG).unlink()
    (tmp_path / AUDIT_HEAD).unlink()

    (problem,) = verify_log(tmp_path)

    assert "s1.json: anchors" in problem
    assert "but the log is missing (it was deleted)" in problem


def test_a_training_job_carries_the_head_after_its_own_decision_into_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oracle.train.trainer import environment_facts

    monkeypatch.chdir(tmp_path)  # a job runs from its checkout, where the runtime check appended its decision
    decision = append_entry(tmp_path, gate="train", result="allowed", commit=None)

    facts = environment_facts("4242")

    assert facts.extra["audit"] == {"seq": decision["seq"], "hash": decision["hash"]}
