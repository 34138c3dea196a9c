"""Submission records: what `oracle submit` writes before a job reaches a cluster, and what the job verifies.

The record (commit, tree, attestation digest, config hash, rendered spec hash, target, time) is a JSON file; its
sha256 is the submission digest. The job's environment carries the digest (`ORACLE_SUBMISSION_DIGEST`) and the
record's path (`ORACLE_SUBMISSION_RECORD`); the training runtime check re-hashes the record, checks that it names
the checkout's HEAD, and verifies the attestation it names.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from oracle.atomic_write import write_atomically

DIGEST_ENV = "ORACLE_SUBMISSION_DIGEST"
RECORD_ENV = "ORACLE_SUBMISSION_RECORD"


class SubmissionError(RuntimeError):
    """A submission record that is missing, altered, or does not match this checkout."""


class SubmissionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    commit: str
    tree: str
    attestation_digest: str
    config_hash: str
    spec_hash: str
    target: Literal["slurm", "k8s", "argo"]
    created: str


def write_submission_record(path: Path, record: SubmissionRecord) -> str:
    """Write the record atomically; returns its digest (sha256 of the bytes written)."""
    data = (json.dumps(record.model_dump(), indent=2, sort_keys=True) + "\n").encode()
    write_atomically(path, data)
    return hashlib.sha256(data).hexdigest()


def new_record(**fields: str) -> SubmissionRecord:
    return SubmissionRecord(created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **fields)  # type: ignore[arg-type]


def verify_submission(record_path: Path, digest: str, root: Path) -> SubmissionRecord:
    """The record, once its digest, its commit and the attestation it names all check out."""
    from guards import git
    from guards.attestation import AttestationError, verify_attestation

    try:
        data = record_path.read_bytes()
    except OSError as exc:
        raise SubmissionError(f"submission record {record_path} cannot be read ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != digest:
        raise SubmissionError(
            f"submission record {record_path} does not match {DIGEST_ENV}: it was altered or replaced"
        )
    try:
        record = SubmissionRecord.model_validate_json(data)
    except ValidationError as exc:
        raise SubmissionError(f"submission record {record_path} is malformed: {exc.errors()[0]['msg']}") from exc
    head = git.head_commit(root)
    if record.commit != head:
        raise SubmissionError(f"the job runs commit {head[:12]}, but it was submitted for {record.commit[:12]}")
    from policies.settings import load_settings

    try:
        attestation = verify_attestation(root, require_signature=load_settings(root).attestation.require_signature)
    except AttestationError as exc:
        raise SubmissionError(f"the submitted commit's attestation does not verify: {exc}") from exc
    if attestation.digest != record.attestation_digest:
        raise SubmissionError("the attestation in this checkout is not the one the submission names")
    return record
