"""The audit log of gate decisions: append-only JSON lines, hash-chained, signed when a key is configured, and
anchored in the records the gates write.

Chain. Every entry carries `prev` (the previous entry's hash) and `hash` (sha256 of its canonical JSON without `hash`
and `sig`), and `.oracle/audit.head` records the last entry's seq and hash. An edited, removed, reordered or garbled
line breaks the chain, and removing entries from the end disagrees with the head. On its own the chain is unkeyed:
whoever holds the checkout can cut it, delete it, or rewrite every hash and the head consistently.

Signatures. When `ORACLE_SIGNING_KEY` names a key, an entry also carries `signer` (the key id, inside the hash) and
`sig` (base64 Ed25519 over `SIGNED_PREFIX + hash`, outside it). `verify_log` checks them against the trust root's
keys (guards.trust, every signing role): a signature by a key it does not name, one that does not verify, or a
`signer` without its `sig` is a problem. A signed entry cannot be rewritten without the key; unsigned entries (a
developer without a key) are allowed and counted as such.

Anchors. `current_anchor` gives the log's current end ({"seq", "hash"}), which every attestation (predicate
`audit`), submission record (`audit`) and training provenance (`audit`) carries. `verify_log` finds those anchors
(guards.audit_anchors) and requires the log to hold, at each anchored seq, exactly the anchored hash. Because each hash
covers every entry before it, an anchor fixes the whole log up to its seq: cutting past it, deleting the log, or
removing entries and re-hashing the rest is then detected. `check_log` reports the log "intact" only when the chain is
consistent and at least one anchor exists and all match; under a configured trust root at least one of those anchors
must come from a record signed by a key of the record's role.

What anchoring cannot prove. Entries after the newest anchor are not yet anchored: cutting them off (with the head)
goes unnoticed until a later record anchors a seq past the cut, and unsigned ones among them can be rewritten. An
anchor is only as good as its record: one in a record signed by a trusted key cannot be moved, one in an unsigned
record (the development default) could have been written by the same hand that rewrote the log, so the report says
how many anchors come from signed records. Only records in this checkout are read: deleting the log together with
every record that anchors it leaves an unanchored state, reported as such, never as intact; records that left the
machine (a submission record with the scheduler, provenance beside published weights) still carry the old head, and
comparing them with the log is for whoever holds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from filelock import FileLock
from pydantic import ValidationError

from guards import git, keys
from guards.paths import AUDIT_HEAD, AUDIT_LOG
from oracle_base.atomic_write import write_atomically
from oracle_base.digests import canonical_json
from oracle_base.errors import ConfigurationError
from oracle_base.records.governance import GENESIS, AuditAnchor, AuditEntry
from oracle_base.validation import describe_validation_error

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from guards.audit_anchors import Anchor

SIGNER = "signer"  # the signing key's id; part of the hashed contents, so a signature cannot be stripped unnoticed
SIGNATURE = "sig"  # base64 Ed25519 over SIGNED_PREFIX + hash; outside the hash, which it covers
SIGNED_FIELDS = frozenset({SIGNER, SIGNATURE})
SIGNED_PREFIX = b"oracle-audit-entry-v1 "  # domain separation: an entry signature is never valid for anything else
ANCHOR_HINT = "run `make guards` (oracle guards attest), whose attestation anchors the log"


class AuditError(ConfigurationError):
    """The audit log or its head cannot be read or written, or is in no state to be extended.

    A configuration error (exit 2) for every command, never a refusal: nothing about the action asked for was judged,
    the machine's log is unusable (permissions, a full disk, a log restored without its head), and the fix lies
    there. The action still does not happen (fail closed: what cannot be recorded is not done)."""


class AuditIntegrityError(AuditError):
    """The log or its head no longer match (deleted, cut, edited, re-chained): TRU004, which leads the message. No gate
    extends the log until it is restored."""

    def __init__(self, message: str) -> None:
        super().__init__(f"TRU004 {message}")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of the entry's canonical JSON without `hash` and `sig` (lines are written in the same form)."""
    hashed = {k: v for k, v in entry.items() if k not in ("hash", SIGNATURE)}
    return hashlib.sha256(canonical_json(hashed)).hexdigest()


def signed_bytes(digest: str) -> bytes:
    """What an entry's signature is over: its hash, which covers its contents and, through `prev`, the log before."""
    return SIGNED_PREFIX + digest.encode("ascii")


def append_entry(
    root: Path,
    *,
    gate: str,
    result: str,
    commit: str | None,
    waivers: list[str] | None = None,
    details: dict[str, object] | None = None,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """Append one entry, signed when ORACLE_SIGNING_KEY (in `environ`, default os.environ) names a key; returns it
    (with its hash). A configured key that cannot be loaded is an AuditError, never a silently unsigned entry."""
    log_path = root / AUDIT_LOG
    signing_key = _signing_key(log_path, environ)
    body: dict[str, object] = {
        "time": _utc_stamp(now),
        "who": _who(root),  # before the lock: it runs git, and the lock should be held briefly
        "gate": gate,
        "commit": commit,
        "result": result,
        "waivers": list(waivers or []),
        "details": _plain_json(log_path, gate, details or {}),
    }
    if signing_key is not None:
        body[SIGNER] = keys.key_id(signing_key.public_key())
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # "a" opens with O_APPEND, so every write lands at the end whatever was read before it
        with _locked(log_path), log_path.open("a+b") as handle:
            last = _last_entry(log_path, handle)
            _check_head_allows_append(root, last)
            seq = 1 if last is None else int(last["seq"]) + 1
            entry: dict[str, object] = {**body, "seq": seq, "prev": GENESIS if last is None else str(last["hash"])}
            digest = entry["hash"] = entry_hash(entry)
            if signing_key is not None:
                entry[SIGNATURE] = keys.sign(signing_key, signed_bytes(digest))[1]
            _check_schema(log_path, entry)
            handle.write(canonical_json(entry) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            # still under the lock, so the head never describes another appender's entry out of order
            _write_head(root / AUDIT_HEAD, seq, digest)
    except OSError as exc:
        raise AuditError(
            f"cannot write the audit log {log_path}: {exc}; check that {log_path.parent} is writable"
        ) from exc
    return entry


def current_anchor(root: Path) -> dict[str, object] | None:
    """The log's current end, `{"seq": N, "hash": "<64 hex>"}`, for a record to carry; None when there is no log yet.

    Stable for every record writer (attestation, submission record, training provenance): store the value as it is
    under the key `audit` (null when None); `verify_log` then requires the log to still hold exactly that entry.
    Read under the log's lock, so it names an entry that was completely written. Raises AuditError when the log's
    end disagrees with its head (as `append_entry` does): a record must never anchor a log that was already cut.
    """
    log_path = root / AUDIT_LOG
    try:
        with log_path.open("rb") as handle, _locked(log_path):
            last = _last_entry(log_path, handle)
            _check_head_allows_append(root, last)
    except FileNotFoundError:
        head_path = root / AUDIT_HEAD
        if head_path.exists():
            raise AuditIntegrityError(
                f"{head_path}: exists but {log_path} is gone (the log was deleted); restore it from a backup"
            ) from None
        return None
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {log_path}: {exc}; check its permissions") from exc
    if last is None:
        return None
    return {"seq": int(last["seq"]), "hash": str(last["hash"])}


@dataclass
class AuditReport:
    """What `check_log` found: the problems (each one line) and what the log holds and what anchors it."""

    problems: list[str] = field(default_factory=list)
    log_exists: bool = False
    entries: int = 0  # lines that parsed as entries
    last_seq: int | None = None
    signed: int = 0  # entries whose signature verifies with a trusted key
    unsigned: int = 0
    anchors: list[Anchor] = field(default_factory=list)
    signed_anchor_required: bool = False  # under a trust root, only a record signed by a trusted key anchors

    @property
    def signed_anchors(self) -> int:
        return sum(anchor.signed for anchor in self.anchors)

    @property
    def anchored_seq(self) -> int | None:
        """The highest seq some record anchors."""
        return max((anchor.seq for anchor in self.anchors), default=None)

    @property
    def intact(self) -> bool:
        return not self.problems and bool(self.signed_anchors if self.signed_anchor_required else self.anchors)

    def summary(self) -> list[str]:
        """The verdict in a few lines (the first one says intact, unanchored or tampered)."""
        if self.problems:
            return [f"audit log NOT intact: {len(self.problems)} problem(s) above"]
        signing = f"entries: {self.signed} signed by trusted keys, {self.unsigned} unsigned (no ORACLE_SIGNING_KEY)"
        held = f"its {self.entries} entries chain consistently" if self.entries else "it has no entries"
        if not self.anchors:
            return [
                f"audit log unanchored: {held}, but no attestation, submission record or provenance carries its head, "
                f"so a cut, deleted or re-hashed log could not be told apart; {ANCHOR_HINT}",
                signing,
            ]
        if not self.intact:
            return [
                f"audit log unanchored: {held} and {len(self.anchors)} record(s) anchor it, but none is signed by a "
                f"key of the trust root (whoever rewrote the log could have written them); {ANCHOR_HINT} with "
                "ORACLE_SIGNING_KEY set to an attestation key",
                signing,
            ]
        lines = [
            f"audit log intact: {self.entries} entries, anchored up to seq {self.anchored_seq} by "
            f"{len(self.anchors)} record(s), {self.signed_anchors} of them signed by a trusted key"
            + ("" if self.signed_anchors else " (development default: unsigned records prove less)"),
        ]
        if self.last_seq is not None and self.anchored_seq is not None and self.last_seq > self.anchored_seq:
            lines.append(
                f"seq {self.anchored_seq + 1}..{self.last_seq} not yet anchored: a cut there would go unnoticed until "
                "the next attestation, submission or provenance carries the head"
            )
        lines.append(signing)
        return lines


def check_log(root: Path) -> AuditReport:
    """The chain, the head, the entries' signatures and every record's anchor, checked; see AuditReport."""
    from guards.audit_anchors import check_anchors, find_anchors

    log_path = root / AUDIT_LOG
    report = AuditReport(log_exists=True)
    try:
        with log_path.open("rb") as handle, _locked(log_path):
            data = handle.read()
            head = _read_head(root / AUDIT_HEAD)  # under the log's lock: appenders write both together
    except FileNotFoundError:
        report.log_exists, data, head = False, b"", _read_head(root / AUDIT_HEAD)
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {log_path}: {exc}; check its permissions") from exc
    trusted = _TrustedKeys(root)
    entries, report.problems, last = _check_chain(data, trusted, report)
    if data and not data.endswith(b"\n"):
        line_no = data.count(b"\n") + 1
        report.problems.append(f"{AUDIT_LOG}:{line_no}: no newline at the end (a write was cut off)")
    report.problems.extend(_check_head(head, last))
    report.entries, report.last_seq = len(entries), (None if last is None else int(last[1]["seq"]))
    report.anchors, record_problems = find_anchors(root, trusted.for_role)
    report.problems.extend(record_problems)
    report.problems.extend(check_anchors(report.anchors, entries, log_exists=report.log_exists))
    report.signed_anchor_required = bool(report.anchors) and not trusted.development()
    if trusted.error is not None:
        report.problems.append(trusted.error)
    return report


def verify_log(root: Path) -> list[str]:
    """Problems found, each one line naming the file and line and what is wrong; [] when nothing contradicts the log
    (an unanchored log has no problems but is not "intact": see `check_log`). A missing log and head with no record
    anchoring them is empty, not a problem."""
    return check_log(root).problems


class _TrustedKeys:
    """The trust root's keys, loaded once and only when a signature needs checking; a trust root that cannot be
    loaded is recorded as one problem (fail closed: nothing verifies), not raised."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._trust: Any = None
        self.error: str | None = None

    def for_role(self, role: str | None) -> Mapping[str, Ed25519PublicKey]:
        """The keys of one signing role; every role's keys for role None (entries may be signed by any signer)."""
        trust = self._load()
        if trust is None:
            return {}
        return dict(trust.all_keys() if role is None else trust.keys_for(role))

    def development(self) -> bool:
        """Whether only the embedded development default applies (True too when the trust root failed to load:
        that failure is a problem of its own)."""
        trust = self._load()
        return trust is None or bool(trust.development)

    def _load(self) -> Any:
        if self._trust is None and self.error is None:
            from guards.trust import TrustError, load_trust_root

            try:
                self._trust = load_trust_root(self._root)
            except (TrustError, keys.SigningKeyError) as exc:
                self.error = f"cannot check signatures: {exc}"
        return self._trust


def _signing_key(log_path: Path, environ: Mapping[str, str] | None) -> Ed25519PrivateKey | None:
    try:
        return keys.load_signing_key(environ)
    except keys.SigningKeyError as exc:
        raise AuditError(f"cannot sign entries of {log_path}: {exc}") from exc


def _utc_stamp(now: datetime | None) -> str:
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        raise ValueError(f"audit time {moment.isoformat()} has no time zone; pass an aware datetime, e.g. in UTC")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _who(root: Path) -> str:
    name = git.user(root)
    if name:
        return name
    return f"{os.environ.get('USER') or 'unknown'}@{socket.gethostname()}"


def _plain_json(log_path: Path, gate: str, details: dict[str, object]) -> dict[str, object]:
    # round-trip so the returned entry is exactly what is stored (tuples become lists, keys become strings)
    try:
        plain: dict[str, object] = json.loads(json.dumps(details, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise AuditError(
            f"cannot write {log_path}: details for gate {gate!r} are not plain JSON ({exc}); "
            "pass only str, int, float, bool, None, lists and dicts with str keys"
        ) from exc
    return plain


@contextlib.contextmanager
def _locked(log_path: Path) -> Iterator[None]:
    """The log's lock, held by an appender while it reads the end, appends one entry and replaces the head, and by a
    reader while it reads: nobody sees half an entry, or a head of another entry. A `filelock.FileLock` on
    `<log>.lock` beside the log, in the git-ignored state folder; readers open the log first, so a checkout without
    a log gets no lock file either."""
    # fallback_to_soft=False: on a file system without flock (Lustre mounted without it, some FUSE mounts) the log
    # cannot be locked, and that is an error, never a marker file whose stale-lock breaking two nodes could race on.
    with FileLock(log_path.with_name(log_path.name + ".lock"), fallback_to_soft=False):
        yield


def _last_entry(log_path: Path, handle: IO[bytes]) -> dict[str, Any] | None:
    """The last entry, or None for an empty log; raises when the tail is not an entry we can chain onto."""
    handle.seek(0)
    data = handle.read()  # logs are one short line per gate run; reading it whole keeps the line count exact
    if not data:
        return None
    line_no = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    fix = (
        f"run `oracle guards audit verify`, then restore {log_path} or move it and its head aside to start a new chain"
    )
    if not data.endswith(b"\n"):
        raise AuditIntegrityError(f"{log_path}:{line_no}: no newline at the end (a write was cut off); {fix}")
    try:
        entry = json.loads(data[:-1].rsplit(b"\n", 1)[-1].decode("utf-8"))
    except ValueError as exc:
        raise AuditIntegrityError(f"{log_path}:{line_no}: not a valid JSON entry ({exc}); {fix}") from exc
    if not (isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("hash"), str)):
        raise AuditIntegrityError(f"{log_path}:{line_no}: not an audit entry (no integer seq and string hash); {fix}")
    return entry


def _check_head_allows_append(root: Path, last: dict[str, Any] | None) -> None:
    """Refuse to extend (or anchor) a log whose end disagrees with the head: that would hide the truncation."""
    head_path = root / AUDIT_HEAD
    head = _read_head(head_path)
    if isinstance(head, str):
        raise AuditIntegrityError(f"{head_path}: {head}; run `oracle guards audit verify` and restore the head")
    fix = f"run `oracle guards audit verify`, then restore {root / AUDIT_LOG} and {head_path} from a backup"
    if last is None:
        if head is not None:
            raise AuditIntegrityError(
                f"{head_path}: records seq {head['seq']} but {root / AUDIT_LOG} is empty or gone; {fix}"
            )
        return
    if head is None:
        # a crash right after the very first append leaves one entry and no head yet
        if last["seq"] != 1:
            raise AuditIntegrityError(f"{head_path}: missing while {root / AUDIT_LOG} ends at seq {last['seq']}; {fix}")
        return
    if head == {"seq": last["seq"], "hash": last["hash"]}:
        return
    # a crash between appending a line and replacing the head leaves the head one entry behind
    if head == {"seq": last["seq"] - 1, "hash": last.get("prev")}:
        return
    raise AuditIntegrityError(
        f"{head_path}: records seq {head['seq']} but {root / AUDIT_LOG} ends at seq {last['seq']} "
        f"(entries were removed or the head was replaced); {fix}"
    )


def _write_head(head_path: Path, seq: int, digest: str) -> None:
    # readers see the old head or the new one, never half
    write_atomically(head_path, canonical_json(AuditAnchor(seq=seq, hash=digest).document()) + b"\n")


def _read_head(head_path: Path) -> dict[str, Any] | str | None:
    """The head as {"seq", "hash"}, None when missing, or a one-line description of why it is unusable."""
    try:
        text = head_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    try:
        head = json.loads(text)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    try:
        AuditAnchor.model_validate(head)
    except ValidationError as exc:
        return f'not of the form {{"seq": N >= 1, "hash": "<64 hex>"}} ({describe_validation_error("", "", exc)})'
    return dict(head)


def _check_chain(
    data: bytes, trusted: _TrustedKeys, report: AuditReport
) -> tuple[dict[int, tuple[int, dict[str, Any]]], list[str], tuple[int, dict[str, Any]] | None]:
    """The entries that parsed (by seq, with their line number), the problems in the lines themselves, and the last
    line that parsed as an entry; counts signed and unsigned entries into `report`."""
    problems: list[str] = []
    entries: dict[int, tuple[int, dict[str, Any]]] = {}
    last: tuple[int, dict[str, Any]] | None = None
    expected_seq: int | None = 1
    expected_prev: str | None = GENESIS
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for line_no, raw in enumerate(lines, start=1):
        entry, problem = _parse_line(raw, line_no)
        if entry is None:
            problems.append(problem)
            expected_seq = expected_prev = None  # unknown: do not blame the next line for this one
            continue
        if problem:
            problems.append(problem)
        elif entry_hash(entry) != entry["hash"]:
            problems.append(f"{AUDIT_LOG}:{line_no}: hash does not match the entry's contents (it was edited)")
        else:
            signed, signature_problem = _check_signature(entry, trusted.for_role)
            if signature_problem and trusted.error is None:  # else the one line about the trust root says it
                problems.append(f"{AUDIT_LOG}:{line_no}: {signature_problem}")
            report.signed += signed
            report.unsigned += not signed and not signature_problem
        if expected_seq is not None and entry["seq"] != expected_seq:
            problems.append(
                f"{AUDIT_LOG}:{line_no}: seq is {entry['seq']}, expected {expected_seq} "
                "(an entry was removed, inserted or reordered)"
            )
        if expected_prev is not None and entry["prev"] != expected_prev:
            problems.append(
                f"{AUDIT_LOG}:{line_no}: prev does not match the hash of "
                + ("no entry (the first entry's prev must be 64 zeros)" if line_no == 1 else f"line {line_no - 1}")
                + " (an entry was removed, inserted or reordered)"
            )
        entries.setdefault(entry["seq"], (line_no, entry))
        expected_seq, expected_prev, last = entry["seq"] + 1, entry["hash"], (line_no, entry)
    return entries, problems, last


def _check_signature(entry: dict[str, Any], keys_for: Callable[[str | None], Mapping[str, Any]]) -> tuple[bool, str]:
    """(True, "") when the entry's signature verifies with a trusted key, (False, "") when it is unsigned, and
    (False, what is wrong) otherwise."""
    signer, signature = entry.get(SIGNER), entry.get(SIGNATURE)
    if signer is None and signature is None:
        return False, ""
    if not isinstance(signer, str) or not isinstance(signature, str):
        return False, (
            f"{SIGNER} and {SIGNATURE} must both be strings (the signature was stripped or altered); "
            "restore the entry from a backup"
        )
    trusted = keys_for(None)
    if signer not in trusted:
        return False, (
            f"signed by key {signer}, which the trust root does not name; sign with a key of the trust root "
            "(`oracle trust show`)"
        )
    if not keys.verify(trusted, signer, signed_bytes(str(entry["hash"])), signature):
        return False, f"the signature by key {signer} does not verify (the entry or its signature was altered)"
    return True, ""


def _parse_line(raw: bytes, line_no: int) -> tuple[dict[str, Any] | None, str]:
    """The entry (None when unusable: no integer seq, or no prev and hash to chain on) and a problem line ("" when
    none) for one line of the log, checked against the schema (AuditEntry)."""
    where = f"{AUDIT_LOG}:{line_no}"
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, f"{where}: not valid UTF-8"
    except ValueError as exc:
        return None, f"{where}: not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"{where}: not a JSON object but {type(value).__name__}"
    try:
        AuditEntry.model_validate(value)
    except ValidationError as exc:
        problem = f"{describe_validation_error(where, '', exc)} (not an audit entry of this version)"
        chainable = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}.isdisjoint({"seq", "prev", "hash"})
        return (value if chainable else None), problem
    return value, ""


def _check_schema(log_path: Path, entry: dict[str, object]) -> None:
    try:
        AuditEntry.model_validate(entry)
    except ValidationError as exc:
        raise AuditError(f"cannot write {describe_validation_error(log_path, '', exc)}; pass plain values") from exc


def _check_head(head: dict[str, Any] | str | None, last: tuple[int, dict[str, Any]] | None) -> list[str]:
    if isinstance(head, str):
        return [f"{AUDIT_HEAD}: {head}"]
    if head is None:
        if last is None:
            return []
        line_no, entry = last
        return [f"{AUDIT_HEAD}: missing while {AUDIT_LOG} has entries up to line {line_no} (seq {entry['seq']})"]
    if last is None:
        return [f"{AUDIT_HEAD}: records seq {head['seq']} but {AUDIT_LOG} has no entries (the log was emptied)"]
    line_no, entry = last
    if head["seq"] == entry["seq"] and head["hash"] == entry["hash"]:
        return []
    cause = (
        "entries were removed from the end"
        if head["seq"] > entry["seq"]
        else "the head is stale or was replaced: a write was interrupted, or the last entry was altered"
    )
    return [
        f"{AUDIT_HEAD}: records seq {head['seq']} hash {head['hash'][:12]}…, but the last entry (line {line_no}) "
        f"is seq {entry['seq']} hash {str(entry['hash'])[:12]}… ({cause})"
    ]
