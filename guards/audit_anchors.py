"""Where the audit log is anchored: the head of the log as each attestation, submission record and training
provenance recorded it when it was made (guards.audit.current_anchor), and whether the log still holds those entries.

An anchor is `{"seq": N, "hash": "<sha256 hex>"}` under the key `audit`: in an attestation's predicate, at the top of
a submission record (plain JSON, or the payload when it is a DSSE envelope), and in a provenance record's payload.
Records are read fail-closed: one that cannot be read or parsed, or whose anchor is malformed, is a problem, never
skipped. A record whose DSSE signature verifies with a key of its role in the trust root is a *signed* anchor; the
others still constrain the log, but a checkout holder could have written them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from guards import keys, paths
from guards.attestation import pae
from guards.provenance import PROVENANCE_FILE
from guards.trust import ATTESTATION, PROVENANCE, SUBMISSION

ANCHOR_FIELD = "audit"
_HASH = re.compile(r"[0-9a-f]{64}")

KeysFor = Callable[[str | None], Mapping[str, Ed25519PublicKey]]


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
    """The record's anchor (None when it carries none: older records, or one made before the log existed)."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise _UnusableRecord(f"{relative}: cannot be read ({exc.strerror}); fix its permissions or remove it") from exc
    except ValueError as exc:
        raise _UnusableRecord(f"{relative}: not valid JSON ({exc}); restore it or remove it") from exc
    content, signed = _content(document, relative, role, keys_for)
    predicate = content.get("predicate")
    holder = predicate if isinstance(predicate, dict) and ANCHOR_FIELD in predicate else content
    value = holder.get(ANCHOR_FIELD)
    if value is None:
        return None
    if not (
        isinstance(value, dict)
        and set(value) == {"seq", "hash"}
        and type(value["seq"]) is int
        and value["seq"] >= 1
        and isinstance(value["hash"], str)
        and _HASH.fullmatch(value["hash"])
    ):
        raise _UnusableRecord(
            f'{relative}: its `{ANCHOR_FIELD}` anchor is not {{"seq": N >= 1, "hash": "<64 hex>"}} but '
            f"{json.dumps(value)[:80]}; the record was altered: restore it or remove it"
        )
    return Anchor(record=relative, seq=value["seq"], hash=value["hash"], signed=signed)


def _content(document: object, relative: str, role: str, keys_for: KeysFor) -> tuple[dict[str, Any], bool]:
    """The record's fields (a DSSE envelope's payload, or the plain JSON object) and whether a trusted key of the
    record's role signed it."""
    if isinstance(document, dict) and "payloadType" in document:
        payload_type, payload, signatures = (document.get(k) for k in ("payloadType", "payload", "signatures"))
        try:
            if not (isinstance(payload_type, str) and isinstance(payload, str) and isinstance(signatures, list)):
                raise ValueError("payloadType, payload and signatures must be a string, a string and a list")
            body = base64.b64decode(payload, validate=True)
            content = json.loads(body)
        except (ValueError, binascii.Error) as exc:
            raise _UnusableRecord(f"{relative}: not a readable DSSE envelope ({exc}); restore it or remove it") from exc
        signed = bool(signatures) and _signed_by_role(pae(payload_type, body), signatures, keys_for(role))
    else:
        content, signed = document, False
    if not isinstance(content, dict):
        raise _UnusableRecord(f"{relative}: not a JSON object but {type(content).__name__}; restore it or remove it")
    return content, signed


def _signed_by_role(signed: bytes, signatures: list[Any], trusted: Mapping[str, Ed25519PublicKey]) -> bool:
    return any(
        isinstance(entry, dict)
        and isinstance(entry.get("keyid"), str)
        and isinstance(entry.get("sig"), str)
        and keys.verify(trusted, entry["keyid"], signed, entry["sig"])
        for entry in signatures
    )
