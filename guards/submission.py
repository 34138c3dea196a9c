"""Submission records: what `oracle submit` writes before a job reaches a cluster, and what the job verifies.

The record is a DSSE envelope (guards.keys.seal, payload type `SUBMISSION_PAYLOAD_TYPE`) signed by the
submitter's key, which must be a `submission` key of the trust root. Its payload names the commit and tree, the
attestation's digest, the recipe's config hash, the rendered spec's hash, the target, the trust root it was made
under, the audit log's head (`audit`, guards.audit.current_anchor), the waivers in use (from the attestation) and
the sha256 of requirements.lock. The sha256 of the file's bytes is the submission digest: the job's environment
carries it (`ORACLE_SUBMISSION_DIGEST`) with the record's path (`ORACLE_SUBMISSION_RECORD`), and the scheduler
carries it too (the SLURM comment, the pod's annotation), which is what guards.job_identity checks.

`verify_submission` re-hashes the record, checks its signature against the trust root, and checks that the code
that runs (`code_root`: the job's export of the commit) is that commit's tree, clean, with the attestation the
record names and the lock it was submitted with.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards import keys
from oracle_base.atomic_write import write_atomically
from oracle_base.digests import canonical_json, sha256_file
from oracle_base.errors import Refused
from oracle_base.records import RecordError
from oracle_base.records.governance import SUBMISSION_PAYLOAD_TYPE, Envelope, SubmissionRecord

DIGEST_ENV = "ORACLE_SUBMISSION_DIGEST"
RECORD_ENV = "ORACLE_SUBMISSION_RECORD"
_SIGN_HINT = "submit again with ORACLE_SIGNING_KEY set to a key the trust root names for submissions"


class SubmissionError(Refused):
    """A submission record that is missing, altered, unsigned, or does not match the code that runs."""


def new_record(**fields: Any) -> SubmissionRecord:
    try:
        return SubmissionRecord.parse_document(
            {"created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **fields}, "", "(new submission record)"
        )
    except RecordError as exc:
        raise SubmissionError(f"cannot write {exc}") from exc


def record_bytes(record: SubmissionRecord, signing_key: Ed25519PrivateKey) -> bytes:
    """The envelope's bytes: what is written and what the digest covers."""
    return keys.seal(SUBMISSION_PAYLOAD_TYPE, canonical_json(record.document()), [signing_key]).to_bytes(sort_keys=True)


def write_submission_record(path: Path, record: SubmissionRecord, signing_key: Ed25519PrivateKey) -> str:
    """Write the signed record atomically; returns its digest (sha256 of the bytes written)."""
    data = record_bytes(record, signing_key)
    write_atomically(path, data)
    return hashlib.sha256(data).hexdigest()


def open_record(data: bytes, where: Path) -> Envelope:
    """The record's envelope, unverified; SubmissionError when it is not one of a submission record."""
    try:
        return Envelope.open(data, where, SUBMISSION_PAYLOAD_TYPE)
    except RecordError as exc:
        raise SubmissionError(f"submission record {where} is malformed: {exc}; submit again") from exc


def record_of(envelope: Envelope, data: bytes, where: Path) -> SubmissionRecord:
    """The envelope's payload as a SubmissionRecord; SubmissionError naming the line and key otherwise."""
    try:
        return envelope.statement(SubmissionRecord, where, data.decode("utf-8"))
    except RecordError as exc:
        raise SubmissionError(f"{exc}; submit again") from exc


def load_record(path: Path) -> SubmissionRecord:
    """The record's fields, without verifying anything (for callers that read a record verify_submission passed)."""
    data = path.read_bytes()
    return record_of(open_record(data, path), data, path)


def check_signature(envelope: Envelope, where: Path, trust: Any) -> str:
    """The signing key id; SubmissionError unless a `submission` key of the trust root signs the payload (and no
    signature fails)."""
    from guards.trust import SUBMISSION

    if not envelope.signatures:
        raise SubmissionError(f"submission record {where} is unsigned; {_SIGN_HINT}")
    allowed = trust.keys_for(SUBMISSION)
    for entry in envelope.signatures:
        if entry.keyid not in allowed:
            raise SubmissionError(
                f"submission record {where} is signed by key {entry.keyid}, which is not a submission key of "
                f"the trust root ({trust.label}); {_SIGN_HINT}"
            )
        if not keys.verify(allowed, entry.keyid, envelope.signed_bytes(), entry.sig):
            raise SubmissionError(f"submission record {where} does not match its signature (altered after signing)")
    return envelope.signatures[0].keyid


def verify_submission(record_path: Path, digest: str, code_root: Path) -> SubmissionRecord:
    """The record, once its digest, its signature (a trusted submitter's), and the code at `code_root` (its commit's
    tree, clean, attested as the record says, with the lock it names) all check out. Development-only trust is
    refused: a job started through `oracle submit` never runs under it."""
    from guards import git
    from guards.attestation import AttestationError, verify_attestation
    from guards.trust import TrustError, load_trust_root, require_protected
    from policies.settings import load_settings

    try:
        data = record_path.read_bytes()
    except OSError as exc:
        raise SubmissionError(f"submission record {record_path} cannot be read ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != digest:
        raise SubmissionError(
            f"submission record {record_path} does not match {DIGEST_ENV}: it was altered or replaced"
        )
    try:
        trust = load_trust_root(code_root)
        require_protected(trust, "training from a submission record")
    except TrustError as exc:
        raise SubmissionError(str(exc)) from exc
    envelope = open_record(data, record_path)
    check_signature(envelope, record_path, trust)
    record = record_of(envelope, data, record_path)
    head = git.head_commit(code_root)
    if record.commit != head:
        raise SubmissionError(f"the job runs commit {head[:12]}, but it was submitted for {record.commit[:12]}")
    tree = git.head_tree(code_root)
    if record.tree != tree:
        raise SubmissionError(f"the job runs tree {tree[:12]}, but it was submitted for {record.tree[:12]}")
    try:
        attestation = verify_attestation(
            code_root, require_signature=load_settings(code_root).attestation.require_signature, trust=trust
        )
    except AttestationError as exc:
        raise SubmissionError(f"the submitted commit's attestation does not verify: {exc}") from exc
    if attestation.digest != record.attestation_digest:
        raise SubmissionError("the attestation in this checkout is not the one the submission names")
    lock = code_root / "requirements.lock"
    lock_sha = sha256_file(lock) if lock.is_file() else None
    if lock_sha != record.lock_sha256:
        raise SubmissionError(f"{lock} is not the requirements.lock the job was submitted with")
    return record
