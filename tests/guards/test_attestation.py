"""Attestations and keys as specifications: what is attested, and each way a stale or forged one is refused.

These tests run under the development default (no trust root: the keys under policies/keys/ verify), which is what
a newcomer's checkout uses; tests/security/test_forged_attestation.py covers the same gate under a trust root."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards import git, keys, paths
from guards.attestation import (
    PAYLOAD_TYPE,
    AttestationError,
    build_statement,
    policy_bundle_digest,
    verify_attestation,
    write_attestation,
)
from guards.result import GateResult, WaiverUse
from oracle_base.records.governance import pae
from policies.rule import Finding, Gate, Rule, Severity


@pytest.fixture(autouse=True)
def development_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORACLE_TRUST_ROOT", raising=False)


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def _commit(root: Path, message: str = "change") -> None:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message)


def _write(root: Path, relative: Path | str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def signing_key(tmp_path: Path) -> Ed25519PrivateKey:
    """A throwaway private key outside the repository; its public key is what `repo` commits."""
    keys.generate_keypair(tmp_path / "secret" / "oracle.pem", tmp_path / "secret" / "oracle.pub")
    key = keys.load_signing_key({paths.SIGNING_KEY_ENV: str(tmp_path / "secret" / "oracle.pem")})
    assert key is not None
    return key


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _write(root, ".gitignore", ".oracle/\n")
    _write(root, paths.LOCK_FILE, "torch==2.5.1 --hash=sha256:00\n")
    _write(root, paths.POLICIES_DIR / "x.py", "RULES = ()\n")
    _write(root, paths.SETTINGS_FILE, "[venv]\n")
    _write(root, paths.MODEL_CONFIG, '{"name": "oracle850b"}\n')
    _write(root, "README.md", "oracle\n")
    _commit(root, "initial")
    return root


@pytest.fixture
def signed_repo(signing_key: Ed25519PrivateKey, repo: Path) -> Path:
    """`repo` with the public half of `signing_key` committed in policies/keys/."""
    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(repo, paths.PUBLIC_KEYS_DIR / "ci.pub", public_pem.decode())
    _commit(repo, "trust the ci key")
    return repo


def _passing(root: Path, gate: Gate = Gate.ci) -> GateResult:
    return GateResult(gate=gate, root=str(root), rules=[])


def _finding(rule_id: str, fingerprint: str, severity: Severity = Severity.error) -> Finding:
    return Finding(rule_id, severity, "a.py", 1, 1, "message", "fix", fingerprint)


def _rule(rule_id: str) -> Rule:
    return Rule(rule_id, "x", "title", Severity.error, frozenset({Gate.ci}), "why", "fix", "bad", "good")


def _load_envelope(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    document = json.loads(path.read_text())
    return document, json.loads(base64.b64decode(document["payload"]))


def _store_envelope(path: Path, document: dict[str, Any], statement: dict[str, Any]) -> None:
    document["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(document))


def _reason(root: Path, *, require_signature: bool = False) -> str:
    with pytest.raises(AttestationError) as caught:
        verify_attestation(root, require_signature=require_signature)
    return caught.value.reason


# --- writing and verifying -------------------------------------------------------------------------------------------


def test_signed_attestation_of_passing_ci_gate_verifies(signed_repo: Path, signing_key: Ed25519PrivateKey) -> None:
    path = write_attestation(signed_repo, _passing(signed_repo), signing_key)
    verified = verify_attestation(signed_repo, require_signature=True)
    assert (verified.path, verified.keyid) == (path, keys.key_id(signing_key.public_key()))


def test_attestation_is_named_by_head_tree_and_ignored_by_git(repo: Path) -> None:
    path = write_attestation(repo, _passing(repo), None)
    assert (path, git.dirty_paths(repo)) == (paths.attestation_path(repo, git.head_tree(repo)), [])


def test_attestation_digest_is_sha256_of_the_envelope_file(repo: Path) -> None:
    path = write_attestation(repo, _passing(repo), None)
    assert verify_attestation(repo).digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unsigned_attestation_verifies_when_no_signature_is_required(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    assert verify_attestation(repo).keyid is None


def test_envelope_signature_is_over_dsse_pae_of_the_payload(signed_repo: Path, signing_key: Ed25519PrivateKey) -> None:
    document, _ = _load_envelope(write_attestation(signed_repo, _passing(signed_repo), signing_key))
    signed = pae(PAYLOAD_TYPE, base64.b64decode(document["payload"]))
    signing_key.public_key().verify(base64.b64decode(document["signatures"][0]["sig"]), signed)


def test_pae_matches_the_dsse_specification_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_write_leaves_no_temporary_files(repo: Path) -> None:
    path = write_attestation(repo, _passing(repo), None)
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


# --- stale attestations ----------------------------------------------------------------------------------------------


def test_verify_reports_missing_in_fresh_repo(repo: Path) -> None:
    assert _reason(repo) == "missing"


def test_missing_message_names_head_tree_and_the_fix(repo: Path) -> None:
    with pytest.raises(AttestationError, match=rf"no attestation for HEAD's tree {git.head_tree(repo)}; run `make"):
        verify_attestation(repo)


def test_verify_fails_with_other_commit_after_unrelated_commit(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    _write(repo, "README.md", "oracle, edited\n")
    _commit(repo)
    assert _reason(repo) == "other-commit"


def test_other_commit_message_names_both_commits(repo: Path) -> None:
    attested = git.head_commit(repo)
    write_attestation(repo, _passing(repo), None)
    _write(repo, "README.md", "oracle, edited\n")
    _commit(repo)
    with pytest.raises(AttestationError, match=rf"commit {attested}, but HEAD is commit {git.head_commit(repo)}"):
        verify_attestation(repo)


def test_verify_fails_after_lock_change(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    _write(repo, paths.LOCK_FILE, "torch==2.6.0 --hash=sha256:11\n")
    _commit(repo)
    assert _reason(repo) == "lock-changed"


def test_verify_fails_after_policy_change(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    _write(repo, paths.POLICIES_DIR / "x.py", "RULES = ('weakened',)\n")
    _commit(repo)
    assert _reason(repo) == "policy-changed"


def test_verify_fails_after_waiver_added(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    _write(repo, paths.WAIVERS_FILE, "[[waiver]]\n")
    _commit(repo)
    assert _reason(repo) == "policy-changed"


def test_verify_fails_after_model_config_change(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    _write(repo, paths.MODEL_CONFIG, '{"name": "oracle850b", "n_layers": 1}\n')
    _commit(repo)
    assert _reason(repo) == "model-config-changed"


def test_verify_fails_on_dirty_tree(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    _write(repo, "README.md", "uncommitted\n")
    assert _reason(repo) == "dirty-tree"


def test_dirty_tree_message_lists_at_most_five_paths(repo: Path) -> None:
    for index in range(7):
        _write(repo, f"new{index}.txt", "x\n")
    with pytest.raises(AttestationError, match=r"new4\.txt and 2 more") as caught:
        verify_attestation(repo)
    assert "new5.txt" not in str(caught.value)


# --- tampering and signatures ----------------------------------------------------------------------------------------


def test_verify_fails_with_bad_signature_when_payload_is_altered(
    signed_repo: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = write_attestation(signed_repo, _passing(signed_repo), signing_key)
    document, statement = _load_envelope(path)
    statement["predicate"]["passed"] = False
    _store_envelope(path, document, statement)
    assert _reason(signed_repo) == "bad-signature"


def test_verify_fails_with_bad_signature_when_signed_by_unknown_key(signed_repo: Path) -> None:
    write_attestation(signed_repo, _passing(signed_repo), Ed25519PrivateKey.generate())
    assert _reason(signed_repo) == "bad-signature"


def test_verify_fails_with_bad_signature_when_signature_is_not_base64(
    signed_repo: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = write_attestation(signed_repo, _passing(signed_repo), signing_key)
    document, statement = _load_envelope(path)
    document["signatures"][0]["sig"] = "not base64!"
    _store_envelope(path, document, statement)
    assert _reason(signed_repo) == "bad-signature"


def test_verify_fails_unsigned_when_signature_required(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None)
    assert _reason(repo, require_signature=True) == "unsigned"


def test_edited_subject_in_unsigned_attestation_is_refused(repo: Path) -> None:
    path = write_attestation(repo, _passing(repo), None)
    document, statement = _load_envelope(path)
    lock_subject = next(entry for entry in statement["subject"] if entry["name"] == "requirements.lock")
    lock_subject["digest"]["sha256"] = "0" * 64
    _store_envelope(path, document, statement)
    assert _reason(repo) == "lock-changed"


def test_unsigned_attestation_recording_a_failure_is_refused(repo: Path) -> None:
    path = write_attestation(repo, _passing(repo), None)
    document, statement = _load_envelope(path)
    statement["predicate"]["passed"] = False
    _store_envelope(path, document, statement)
    assert _reason(repo) == "failed"


def test_attestation_copied_from_another_tree_is_refused(repo: Path) -> None:
    old = write_attestation(repo, _passing(repo), None)
    _write(repo, "README.md", "oracle, edited\n")
    _commit(repo)
    old.rename(paths.attestation_path(repo, git.head_tree(repo)))
    assert _reason(repo) == "other-commit"


def test_verify_fails_as_malformed_when_the_file_is_not_json(repo: Path) -> None:
    write_attestation(repo, _passing(repo), None).write_text("{not json")
    assert _reason(repo) == "malformed"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda st: st["predicate"].update(surprise=1), "payload.predicate.surprise: Extra inputs are not permitted"),
        (lambda st: st["predicate"].pop("commit"), "payload.predicate.commit: Field required"),
        (
            lambda st: st["predicate"].update(findings="0"),
            "payload.predicate.findings: Input should be a valid integer",
        ),
        (
            lambda st: st.update(predicateType="https://oracle.invalid/attestation/guards-result/v2"),
            "payload.predicateType: Input should be 'https://oracle.invalid/attestation/guards-result/v1'",
        ),
    ],
    ids=["unknown key", "missing key", "wrong type", "wrong version"],
)
def test_a_statement_that_does_not_match_its_schema_is_malformed_naming_line_and_key(
    repo: Path, change: Any, expected: str
) -> None:
    path = write_attestation(repo, _passing(repo), None)
    document, statement = _load_envelope(path)
    change(statement)
    _store_envelope(path, document, statement)

    with pytest.raises(AttestationError) as refused:
        verify_attestation(repo)

    assert refused.value.reason == "malformed"
    assert str(refused.value).startswith(f"TRU003 attestation {path}:1: {expected}")


# --- what write_attestation refuses ----------------------------------------------------------------------------------


def test_write_refuses_failing_result(repo: Path) -> None:
    failing = GateResult(gate=Gate.ci, root=str(repo), rules=[], findings=[_finding("X001", "f1")])
    with pytest.raises(AttestationError, match="failed") as caught:
        write_attestation(repo, failing, None)
    assert caught.value.reason == "failed"


def test_write_refuses_result_with_internal_errors(repo: Path) -> None:
    broken = GateResult(gate=Gate.ci, root=str(repo), rules=[], errors=["a check crashed"])
    with pytest.raises(AttestationError) as caught:
        write_attestation(repo, broken, None)
    assert caught.value.reason == "failed"


def test_write_refuses_passing_gate_other_than_ci(repo: Path) -> None:
    with pytest.raises(AttestationError, match="only a passing ci gate attests") as caught:
        write_attestation(repo, _passing(repo, Gate.commit), None)
    assert caught.value.reason == "failed"


def test_write_refuses_dirty_tree(repo: Path) -> None:
    _write(repo, "README.md", "uncommitted\n")
    with pytest.raises(AttestationError) as caught:
        write_attestation(repo, _passing(repo), None)
    assert caught.value.reason == "dirty-tree"


def test_write_refuses_dirty_tree_without_writing_a_file(repo: Path) -> None:
    _write(repo, "README.md", "uncommitted\n")
    with pytest.raises(AttestationError):
        write_attestation(repo, _passing(repo), None)
    assert not (repo / paths.ATTESTATIONS_DIR).exists()


def test_write_refuses_when_git_does_not_ignore_the_attestation(repo: Path) -> None:
    (repo / ".gitignore").write_text("")
    _commit(repo, "stop ignoring .oracle/")
    with pytest.raises(AttestationError, match=r"add `\.oracle/` to \.gitignore") as caught:
        write_attestation(repo, _passing(repo), None)
    assert (caught.value.reason, list((repo / paths.ATTESTATIONS_DIR).iterdir())) == ("dirty-tree", [])


# --- the statement ---------------------------------------------------------------------------------------------------


def test_statement_subjects_are_tree_lock_policy_bundle_and_model_config(repo: Path) -> None:
    statement = build_statement(repo, _passing(repo), commit="c", tree="t")
    assert [entry.name for entry in statement.subject] == [
        "git-tree",
        "requirements.lock",
        "policy-bundle",
        "model-config",
    ]


def test_statement_omits_model_config_subject_when_the_file_is_absent(repo: Path) -> None:
    (repo / paths.MODEL_CONFIG).unlink()
    statement = build_statement(repo, _passing(repo), commit="c", tree="t")
    assert "model-config" not in [entry.name for entry in statement.subject]


def test_statement_predicate_records_rule_outcomes_and_waived_fingerprints(repo: Path) -> None:
    use = WaiverUse("W001", "reason", "owner", "2099-01-01", "a.py", ("f2",))
    result = GateResult(
        gate=Gate.ci,
        root=str(repo),
        rules=[_rule("P001"), _rule("F001"), _rule("W001")],
        findings=[_finding("F001", "f1", Severity.warning)],
        waived=[(_finding("W001", "f2"), use)],
    )
    predicate = build_statement(repo, result, commit="c", tree="t").document()["predicate"]
    assert (predicate["rules"], predicate["waived"], predicate["findings"]) == (
        [{"id": "P001", "result": "pass"}, {"id": "F001", "result": "fail"}, {"id": "W001", "result": "waived"}],
        ["f2"],
        1,
    )


def test_statement_created_time_is_iso_utc(repo: Path) -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert build_statement(repo, _passing(repo), commit="c", tree="t", now=now).predicate.created == (
        "2025-01-02T03:04:05Z"
    )


def test_policy_bundle_digest_ignores_files_outside_the_bundle(repo: Path) -> None:
    before = policy_bundle_digest(repo)
    _write(repo, paths.POLICIES_DIR / "notes.md", "not policy\n")
    assert policy_bundle_digest(repo) == before


# --- keys ------------------------------------------------------------------------------------------------------------


def test_load_signing_key_is_none_when_unset() -> None:
    assert keys.load_signing_key({}) is None


def test_load_signing_key_errors_clearly_on_a_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(keys.SigningKeyError, match=rf"{missing} \(from ORACLE_SIGNING_KEY\) does not exist"):
        keys.load_signing_key({paths.SIGNING_KEY_ENV: str(missing)})


def test_load_signing_key_rejects_a_file_that_is_not_a_pem_key(tmp_path: Path) -> None:
    garbage = tmp_path / "key.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(keys.SigningKeyError, match="not an unencrypted PEM private key"):
        keys.load_signing_key({paths.SIGNING_KEY_ENV: str(garbage)})


def test_load_signing_key_rejects_a_key_that_is_not_ed25519(tmp_path: Path) -> None:
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(keys.SigningKeyError, match="not Ed25519"):
        keys.load_signing_key({paths.SIGNING_KEY_ENV: str(ec_path)})


def test_generated_private_key_is_readable_by_owner_only(tmp_path: Path) -> None:
    keys.generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600


def test_generate_keypair_refuses_to_overwrite_a_private_key(tmp_path: Path) -> None:
    keys.generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    with pytest.raises(keys.SigningKeyError, match="already exists"):
        keys.generate_keypair(tmp_path / "k.pem", tmp_path / "k2.pub")


def test_public_keys_are_indexed_by_key_id_not_file_name(tmp_path: Path) -> None:
    keyid = keys.generate_keypair(tmp_path / "k.pem", tmp_path / paths.PUBLIC_KEYS_DIR / "any-name.pub")
    assert list(keys.load_public_keys(tmp_path)) == [keyid]


def test_key_id_is_16_hex_chars_of_sha256_of_the_raw_public_key() -> None:
    public_key = Ed25519PrivateKey.generate().public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keys.key_id(public_key) == hashlib.sha256(raw).hexdigest()[:16]


def test_verify_rejects_an_unknown_key_id() -> None:
    private_key = Ed25519PrivateKey.generate()
    keyid, signature = keys.sign(private_key, b"data")
    assert keys.verify({}, keyid, b"data", signature) is False
