"""Where the audit log is anchored: the head of the log as each attestation, submission record and training
provenance recorded it when it was made (guards.audit.current_anchor), and whether the log still holds those entries.

An anchor is `{"seq": N, "hash": "<sha256 hex>"}` under the key `audit`: in an attestation's predicate, and in the
payload of a submission record and of a provenance record. Records are read fail-closed, through the one DSSE parser
and each record's schema (oracle_base.records.governance): one that cannot be read, is not an envelope of its kind,
or does not match its schema (a malformed anchor included) is a problem naming its line and key, never skipped. A
record whose DSSE signature verifies with a key of its role in the trust root is a *signed* anchor; the others still
constrain the log, but a checkout holder could have written them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from guards import keys, paths
from guards.provenance import PROVENANCE_FILE
from guards.trust import ATTESTATION, PROVENANCE, SUBMISSION
from oracle_base.records import RecordError
from oracle_base.records.governance import (
    ATTESTATION_PAYLOAD_TYPE,
    PROVENANCE_PAYLOAD_TYPE,
    SUBMISSION_PAYLOAD_TYPE,
    AttestationStatement,
    AuditAnchor,
    Envelope,
    GovernanceRecord,
    ProvenanceRecord,
    SubmissionRecord,
)

ANCHOR_FIELD = "audit"

KeysFor = Callable[[str | None], Mapping[str, Ed25519PublicKey]]

# each signing role's records: their payload type and schema
_SCHEMAS: dict[str, tuple[str, type[GovernanceRecord]]] = {
    ATTESTATION: (ATTESTATION_PAYLOAD_TYPE, AttestationStatement),
    SUBMISSION: (SUBMISSION_PAYLOAD_TYPE, SubmissionRecord),
    PROVENANCE: (PROVENANCE_PAYLOAD_TYPE, ProvenanceRecord),
}


@dataclass(frozen=True)
class Anchor:
    record: str  # the record's path, relative to the checkout
    seq: int
    hash: str
    signed: bool  # the record's signature verifies with a key of its role in the trust root


class _UnusableRecord(Exception):  # noqa: N818 (a problem line, never raised past this module)
    """A record that cannot be read, parsed, or whose anchor is malformed (the message is the problem line)."""


def find_anchors(root: Path, keys_for: KeysFor) -> tuple[list[Anchor], list[str]]:
    """Every anchor in the checkout's records, and one problem line per record that cannot be used."""
    anchors: list[Anchor] = []
    problems: list[str] = []
    for path, role in _records(root):
        relative = path.relative_to(root).as_posix()
        try:
            anchor = _record_anchor(path, relative, role, keys_for)
        except _UnusableRecord as exc:
            problems.append(str(exc))
            continue
        if anchor is not None:
            anchors.append(anchor)
    return anchors, problems


def check_anchors(
    anchors: list[Anchor], entries: Mapping[int, tuple[int, Mapping[str, Any]]], *, log_exists: bool
) -> list[str]:
    """One problem per anchor the log does not hold exactly: `entries` maps seq to (line number, entry)."""
    log = paths.AUDIT_LOG.as_posix()
    problems: list[str] = []
    for anchor in anchors:
        where = f"{anchor.record}: anchors {log} at seq {anchor.seq} hash {anchor.hash[:12]}…"
        if not log_exists:
            problems.append(f"{where}, but the log is missing (it was deleted); restore it and its head from a backup")
        elif anchor.seq not in entries:
            end = f"ends at seq {max(entries)}" if entries else "has no entries"
            problems.append(f"{where}, but the log {end} (entries were cut off); restore it from a backup")
        else:
            line_no, entry = entries[anchor.seq]
            if entry["hash"] != anchor.hash:
                problems.append(
                    f"{where}, but line {line_no} (seq {anchor.seq}) has hash {str(entry['hash'])[:12]}… (the log "
                    "was rewritten up to there: entries removed, edited or re-hashed); restore it from a backup"
                )
    return problems


def _records(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, signing role) of every record that may carry an anchor, in a stable order."""
    for directory, role in ((paths.ATTESTATIONS_DIR, ATTESTATION), (paths.SUBMISSIONS_DIR, SUBMISSION)):
        base = root / directory
        if base.is_dir():
            yield from ((path, role) for path in sorted(base.glob("*.json")) if path.is_file())
    runs = root / paths.RUNS_DIR
    found: list[Path] = []
    # os.walk does not follow symbolic links into directories, so a link loop cannot hang the verification
    for folder, _, files in os.walk(runs):
        if PROVENANCE_FILE in files:
            found.append(Path(folder) / PROVENANCE_FILE)
    yield from ((path, PROVENANCE) for path in sorted(found))


def _record_anchor(path: Path, relative: str, role: str, keys_for: KeysFor) -> Anchor | None:
    """The record's anchor (None when it carries none: a record made before the log existed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _UnusableRecord(f"{relative}: cannot be read ({exc.strerror}); fix its permissions or remove it") from exc
    payload_type, schema = _SCHEMAS[role]
    try:
        envelope = Envelope.open(data, relative, payload_type)
        record = envelope.statement(schema, relative, data.decode("utf-8"))
    except RecordError as exc:
        raise _UnusableRecord(f"{exc}; the record was altered: restore it or remove it") from exc
    anchor = _anchor_of(record)
    if anchor is None:
        return None
    signed = _signed_by_role(envelope, keys_for(role))
    return Anchor(record=relative, seq=anchor.seq, hash=anchor.hash, signed=signed)


def _anchor_of(record: GovernanceRecord) -> AuditAnchor | None:
    if isinstance(record, AttestationStatement):
        return record.predicate.audit
    if isinstance(record, SubmissionRecord | ProvenanceRecord):
        return record.audit
    raise TypeError(f"no anchor in a {type(record).__name__}")


def _signed_by_role(envelope: Envelope, trusted: Mapping[str, Ed25519PublicKey]) -> bool:
    signed = envelope.signed_bytes()
    return any(keys.verify(trusted, entry.keyid, signed, entry.sig) for entry in envelope.signatures)
