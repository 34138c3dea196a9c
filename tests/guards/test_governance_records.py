"""The schemas of the signed governance records (oracle_base.records.governance): each record's reader refuses a file
with an unknown key, a missing key, a wrong type or another version in one line naming the file, the line and the
key; the DSSE envelope has one strict parser; and records written before the schemas keep their bytes and verify."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards import keys
from guards.audit import append_entry, check_log, verify_log
from guards.paths import AUDIT_HEAD, AUDIT_LOG, SIGNING_KEY_ENV
from guards.provenance import PROVENANCE_FILE, ProvenanceError, verify_provenance, write_provenance
from guards.submission import SubmissionError, load_record
from guards.trust import TrustError, build_trust_root, parse_trust_root
from oracle_base.digests import canonical_json
from oracle_base.records import RecordError
from oracle_base.records.governance import (
    PROVENANCE_PAYLOAD_TYPE,
    SUBMISSION_PAYLOAD_TYPE,
    TRUST_ROOT_PAYLOAD_TYPE,
    Envelope,
)
from tests.trust import session_key


def _private() -> Ed25519PrivateKey:
    key = keys.load_signing_key({SIGNING_KEY_ENV: str(session_key())})
    assert key is not None
    return key


def _one_line(message: str) -> str:
    assert "\n" not in message
    return message


# what the "unknown key" and "wrong version" cases add to a record's fields
ADDED: dict[str, dict[str, Any]] = {"unknown key": {"surprise": 1}, "wrong version": {"schema_version": 2}}


def _broken(fields: dict[str, Any], case: str, missing: str, wrong_type: tuple[str, object]) -> dict[str, Any]:
    """`fields` with `missing` removed, the `wrong_type` value set, or an unknown key or another version added."""
    broken = copy.deepcopy(fields)
    if case == "missing key":
        del broken[missing]
    elif case == "wrong type":
        broken[wrong_type[0]] = wrong_type[1]
    else:
        broken.update(ADDED[case])
    return broken


# --- provenance --------------------------------------------------------------------------------------------------

PROVENANCE = {"files": {"model.safetensors": "0" * 64}, "commit": "c" * 40, "run": "mini", "step": 2, "job_id": "7"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown key", "payload.surprise: Extra inputs are not permitted"),
        ("missing key", "payload.files: Field required"),
        ("wrong type", "payload.step: Input should be a valid integer"),
        ("wrong version", "payload.schema_version: Input should be 1"),
    ],
)
def test_provenance_that_does_not_match_its_schema_is_refused_naming_line_and_key(
    tmp_path: Path, case: str, expected: str
) -> None:
    payload = _broken(PROVENANCE, case, "files", ("step", "2"))
    sealed = keys.seal(PROVENANCE_PAYLOAD_TYPE, canonical_json(payload), [_private()])  # signed: only the schema fails
    (tmp_path / PROVENANCE_FILE).write_bytes(sealed.to_bytes())

    with pytest.raises(ProvenanceError) as refused:
        verify_provenance(tmp_path, tmp_path, only=[])

    assert _one_line(str(refused.value)).startswith(f"provenance record {tmp_path / PROVENANCE_FILE}:3: {expected}")


def test_provenance_facts_the_schema_does_not_know_are_refused_when_written(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")

    with pytest.raises(
        ProvenanceError, match=r"cannot write provenance record .*: ste: Extra inputs are not permitted"
    ):
        write_provenance(tmp_path, ["model.safetensors"], {"ste": 2}, _private())
    assert not (tmp_path / PROVENANCE_FILE).exists()


def test_written_provenance_holds_exactly_the_facts_given(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    facts = {"commit": None, "step": 3, "audit": {"seq": 1, "hash": "a" * 64}, "training_state": {}}
    write_provenance(tmp_path, ["model.safetensors"], facts, _private())

    record = verify_provenance(tmp_path, tmp_path)

    assert set(record) == {"files", "commit", "step", "audit", "training_state"}  # nothing unset became a null
    assert record["commit"] is None


# --- submission records ------------------------------------------------------------------------------------------

SUBMISSION = {
    "commit": "c" * 40,
    "tree": "t" * 40,
    "attestation_digest": "a" * 64,
    "config_hash": "f" * 64,
    "spec_hash": "e" * 64,
    "target": "slurm",
    "created": "2026-12-06T00:00:00Z",
    "lock_sha256": "d" * 64,
    "trust": {"development": False, "version": 1, "digest": "b" * 64},
    "audit": None,
    "waivers": [],
    "kind": "data",
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown key", "payload.surprise: Extra inputs are not permitted"),
        ("missing key", "payload.tree: Field required"),
        ("wrong type", "payload.kind: Input should be 'train' or 'data'"),
        ("wrong version", "payload.schema_version: Input should be 1"),
    ],
)
def test_a_submission_record_that_does_not_match_its_schema_is_refused_naming_line_and_key(
    tmp_path: Path, case: str, expected: str
) -> None:
    payload = _broken(SUBMISSION, case, "tree", ("kind", "serve"))
    path = tmp_path / "record.json"
    sealed = keys.seal(SUBMISSION_PAYLOAD_TYPE, canonical_json(payload), [_private()])
    path.write_bytes(sealed.to_bytes(sort_keys=True))

    with pytest.raises(SubmissionError) as refused:
        load_record(path)

    assert _one_line(str(refused.value)).startswith(f"submission record {path}:2: {expected}")


def test_a_data_job_record_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    sealed = keys.seal(SUBMISSION_PAYLOAD_TYPE, canonical_json(SUBMISSION), [_private()])
    path.write_bytes(sealed.to_bytes(sort_keys=True))

    record = load_record(path)

    assert (record.kind, record.document()) == ("data", SUBMISSION)


# --- audit entries -----------------------------------------------------------------------------------------------

# two entries and the head as the audit log wrote them before the schemas existed (byte for byte)
OLD_LOG = (
    '{"commit":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","details":{},"gate":"commit","hash":'
    '"8af3cf0d0827ea3a856e00d3fb8552048a2ba4c0ecab2ad90e3df6588327de70","prev":'
    '"0000000000000000000000000000000000000000000000000000000000000000","result":"pass","seq":1,"time":'
    '"2026-01-02T03:04:05.000000Z","waivers":[],"who":"dev@host"}\n'
    '{"commit":null,"details":{"findings":2,"paths":["é.py"]},"gate":"ci","hash":'
    '"76af98d4d25c61664c5fa6389d6bb840c936e577b4a0ca82397e6ec8f1ac94a8","prev":'
    '"8af3cf0d0827ea3a856e00d3fb8552048a2ba4c0ecab2ad90e3df6588327de70","result":"fail","seq":2,"time":'
    '"2026-01-02T03:04:06.000000Z","waivers":["W-1"],"who":"dev@host"}\n'
)
OLD_HEAD = '{"hash":"76af98d4d25c61664c5fa6389d6bb840c936e577b4a0ca82397e6ec8f1ac94a8","seq":2}\n'


def _old_log(root: Path) -> None:
    (root / AUDIT_LOG).parent.mkdir(parents=True, exist_ok=True)
    (root / AUDIT_LOG).write_text(OLD_LOG, encoding="utf-8")
    (root / AUDIT_HEAD).write_text(OLD_HEAD, encoding="utf-8")


def test_an_audit_log_written_before_the_schemas_still_verifies_and_extends(tmp_path: Path) -> None:
    _old_log(tmp_path)

    assert (check_log(tmp_path).problems, check_log(tmp_path).entries) == ([], 2)
    entry = append_entry(tmp_path, gate="ci", result="pass", commit=None, environ={})
    assert (entry["seq"], entry["prev"]) == (3, "76af98d4d25c61664c5fa6389d6bb840c936e577b4a0ca82397e6ec8f1ac94a8")
    assert (tmp_path / AUDIT_LOG).read_text(encoding="utf-8").startswith(OLD_LOG)  # appended, never rewritten
    assert verify_log(tmp_path) == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown key", "surprise: Extra inputs are not permitted"),
        ("missing key", "who: Field required"),
        ("wrong type", "gate: Input should be a valid string"),
        ("wrong version", "schema_version: Input should be 1"),
    ],
)
def test_an_audit_entry_that_does_not_match_its_schema_is_refused_naming_line_and_key(
    tmp_path: Path, case: str, expected: str
) -> None:
    _old_log(tmp_path)
    lines = OLD_LOG.splitlines()
    entry = _broken(json.loads(lines[1]), case, "who", ("gate", 5))
    (tmp_path / AUDIT_LOG).write_text(lines[0] + "\n" + json.dumps(entry) + "\n", encoding="utf-8")

    (problem,) = verify_log(tmp_path)

    assert _one_line(problem).startswith(f"{AUDIT_LOG}:2: {expected}")


def test_an_audit_head_that_is_not_an_anchor_is_a_problem(tmp_path: Path) -> None:
    _old_log(tmp_path)
    (tmp_path / AUDIT_HEAD).write_text(OLD_HEAD.replace('"seq":2', '"seq":"2"'), encoding="utf-8")

    (problem,) = verify_log(tmp_path)

    assert problem.startswith(f'{AUDIT_HEAD}: not of the form {{"seq": N >= 1, "hash": "<64 hex>"}} (: seq: Input')


def test_the_log_lock_lies_beside_the_log_in_the_state_folder(tmp_path: Path) -> None:
    append_entry(tmp_path, gate="ci", result="pass", commit=None, environ={})

    assert {path.name for path in (tmp_path / AUDIT_LOG).parent.iterdir()} <= {
        AUDIT_LOG.name,
        AUDIT_HEAD.name,
        f"{AUDIT_LOG.name}.lock",
    }


def test_reading_a_checkout_without_a_log_leaves_no_lock_behind(tmp_path: Path) -> None:
    assert verify_log(tmp_path) == []
    assert not (tmp_path / AUDIT_LOG).parent.exists()


# --- the trust root ----------------------------------------------------------------------------------------------


def _trust_document() -> dict[str, Any]:
    data = build_trust_root([_private()], {})
    document: dict[str, Any] = json.loads(Envelope.open(data, "t", TRUST_ROOT_PAYLOAD_TYPE).body)
    return document


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown key", "payload.surprise: Extra inputs are not permitted"),
        ("missing key", "payload.version: Field required"),
        ("wrong type", "payload.expires: Input should be a valid datetime"),
        ("wrong version", "payload.type: Input should be 'oracle-trust-root'"),
    ],
)
def test_a_trust_root_that_does_not_match_its_schema_is_refused_naming_line_and_key(
    tmp_path: Path, case: str, expected: str
) -> None:
    document = _trust_document()
    if case == "wrong version":
        document["type"] = "oracle-trust-root-v2"
    else:
        document = _broken(document, case, "version", ("expires", "next year"))
    path = tmp_path / "trust-root.json"
    data = Envelope.seal(TRUST_ROOT_PAYLOAD_TYPE, canonical_json(document), []).to_bytes()

    with pytest.raises(TrustError) as refused:
        parse_trust_root(path, data)

    assert _one_line(str(refused.value)).startswith(f"trust root {path}:3: {expected}")


# --- the one DSSE parser -----------------------------------------------------------------------------------------


def _envelope() -> dict[str, Any]:
    sealed = keys.seal(PROVENANCE_PAYLOAD_TYPE, b"{}", [_private()])
    document: dict[str, Any] = json.loads(sealed.to_bytes())
    return document


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(extra=1), ":10: extra: Extra inputs are not permitted"),
        (lambda d: d.pop("signatures"), ": signatures: Field required"),
        (lambda d: d["signatures"][0].pop("keyid"), ":4: signatures.0.keyid: Field required"),
        (lambda d: d["signatures"][0].update(keyid=7), ":6: signatures.0.keyid: Input should be a valid string"),
        (lambda d: d.update(payload="not base64!"), ":3: payload: not base64"),
        (lambda d: d.update(payloadType=SUBMISSION_PAYLOAD_TYPE), ":2: payloadType: is "),
    ],
)
def test_the_dsse_parser_is_strict_and_names_line_and_key(change: Any, expected: str) -> None:
    document = _envelope()
    change(document)
    data = json.dumps(document, indent=2).encode()

    with pytest.raises(RecordError) as refused:
        Envelope.open(data, "x.json", PROVENANCE_PAYLOAD_TYPE)

    assert f"x.json{expected}" in _one_line(str(refused.value))


def test_an_envelope_round_trips_byte_for_byte() -> None:
    sealed = keys.seal(PROVENANCE_PAYLOAD_TYPE, canonical_json({"files": {}}), [_private()])

    assert Envelope.open(sealed.to_bytes(), "x.json", PROVENANCE_PAYLOAD_TYPE).to_bytes() == sealed.to_bytes()
