"""The audit log of gate decisions: append-only JSON lines, each entry hash-chained to the one before it.

Every entry carries `prev` (the previous entry's hash) and `hash` (sha256 of its own canonical JSON without `hash`),
and `.oracle/audit.head` records the last entry's seq and hash. An edited, removed, reordered or garbled line breaks
the chain, and removing entries from the end disagrees with the head. The chain is unkeyed: it makes tampering
evident to `verify_log`, it does not stop someone who rewrites every later hash and the head as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from guards import git
from guards.paths import AUDIT_HEAD, AUDIT_LOG
from oracle.atomic_write import write_atomically

GENESIS = "0" * 64  # the `prev` of the first entry
FIELDS = frozenset({"seq", "time", "who", "gate", "commit", "result", "waivers", "details", "prev", "hash"})


class AuditError(RuntimeError):
    """The audit log or its head cannot be read or written, or is in no state to be extended."""


def canonical(value: object) -> str:
    """The one serialisation hashes are computed over (and lines are written in)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"}).encode("utf-8")).hexdigest()


def append_entry(
    root: Path,
    *,
    gate: str,
    result: str,
    commit: str | None,
    waivers: list[str] | None = None,
    details: dict[str, object] | None = None,
    now: datetime | None = None,
) -> dict[str, object]:
    """Append one entry; returns it (with its hash)."""
    log_path = root / AUDIT_LOG
    body: dict[str, object] = {
        "time": _utc_stamp(now),
        "who": _who(root),  # before the lock: it runs git, and the lock should be held briefly
        "gate": gate,
        "commit": commit,
        "result": result,
        "waivers": list(waivers or []),
        "details": _plain_json(log_path, gate, details or {}),
    }
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # "a" opens with O_APPEND, so every write lands at the end whatever was read before it
        with log_path.open("a+b") as handle, _locked(handle, fcntl.LOCK_EX):
            last = _last_entry(log_path, handle)
            _check_head_allows_append(root, last)
            seq = 1 if last is None else int(last["seq"]) + 1
            entry: dict[str, object] = {**body, "seq": seq, "prev": GENESIS if last is None else str(last["hash"])}
            digest = entry["hash"] = entry_hash(entry)
            handle.write((canonical(entry) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            # still under the lock, so the head never describes another appender's entry out of order
            _write_head(root / AUDIT_HEAD, seq, digest)
    except OSError as exc:
        raise AuditError(
            f"cannot write the audit log {log_path}: {exc}; check that {log_path.parent} is writable"
        ) from exc
    return entry


def verify_log(root: Path) -> list[str]:
    """Problems found, each one line naming the line number and what is wrong; [] when the chain is intact.

    A missing log (and missing head) is intact and empty.
    """
    log_path = root / AUDIT_LOG
    try:
        if log_path.exists():
            with log_path.open("rb") as handle, _locked(handle, fcntl.LOCK_SH):
                data = handle.read()
                head = _read_head(root / AUDIT_HEAD)  # under the log's lock: appenders write both together
        else:
            data, head = b"", _read_head(root / AUDIT_HEAD)
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {log_path}: {exc}; check its permissions") from exc
    problems, last = _check_chain(data)
    if data and not data.endswith(b"\n"):
        line_no = data.count(b"\n") + 1
        problems.append(f"{AUDIT_LOG} line {line_no}: no newline at the end (a write was cut off)")
    problems.extend(_check_head(head, last))
    return problems


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
        plain: dict[str, object] = json.loads(canonical(details))
    except (TypeError, ValueError) as exc:
        raise AuditError(
            f"cannot write {log_path}: details for gate {gate!r} are not plain JSON ({exc}); "
            "pass only str, int, float, bool, None, lists and dicts with str keys"
        ) from exc
    return plain


@contextlib.contextmanager
def _locked(handle: IO[bytes], operation: int) -> Iterator[None]:
    fcntl.flock(handle.fileno(), operation)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _last_entry(log_path: Path, handle: IO[bytes]) -> dict[str, Any] | None:
    """The last entry, or None for an empty log; raises when the tail is not an entry we can chain onto."""
    handle.seek(0)
    data = handle.read()  # logs are one short line per gate run; reading it whole keeps the line count exact
    if not data:
        return None
    line_no = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    fix = f"run guards.audit.verify_log, then restore {log_path} or move it and its head aside to start a new chain"
    if not data.endswith(b"\n"):
        raise AuditError(f"{log_path} line {line_no}: no newline at the end (a write was cut off); {fix}")
    try:
        entry = json.loads(data[:-1].rsplit(b"\n", 1)[-1].decode("utf-8"))
    except ValueError as exc:
        raise AuditError(f"{log_path} line {line_no}: not a valid JSON entry ({exc}); {fix}") from exc
    if not (isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("hash"), str)):
        raise AuditError(f"{log_path} line {line_no}: not an audit entry (no integer seq and string hash); {fix}")
    return entry


def _check_head_allows_append(root: Path, last: dict[str, Any] | None) -> None:
    """Refuse to extend a log whose end disagrees with the head: the next head would hide the truncation."""
    head_path = root / AUDIT_HEAD
    head = _read_head(head_path)
    if isinstance(head, str):
        raise AuditError(f"{head_path}: {head}; run guards.audit.verify_log and restore the head before appending")
    fix = f"run guards.audit.verify_log, then restore {root / AUDIT_LOG} and {head_path} from a backup"
    if last is None:
        if head is not None:
            raise AuditError(f"{head_path}: records seq {head['seq']} but {root / AUDIT_LOG} is empty or gone; {fix}")
        return
    if head is None:
        # a crash right after the very first append leaves one entry and no head yet
        if last["seq"] != 1:
            raise AuditError(f"{head_path}: missing while {root / AUDIT_LOG} ends at seq {last['seq']}; {fix}")
        return
    if head == {"seq": last["seq"], "hash": last["hash"]}:
        return
    # a crash between appending a line and replacing the head leaves the head one entry behind
    if head == {"seq": last["seq"] - 1, "hash": last.get("prev")}:
        return
    raise AuditError(
        f"{head_path}: records seq {head['seq']} but {root / AUDIT_LOG} ends at seq {last['seq']} "
        f"(entries were removed or the head was replaced); {fix}"
    )


def _write_head(head_path: Path, seq: int, digest: str) -> None:
    # readers see the old head or the new one, never half
    write_atomically(head_path, canonical({"seq": seq, "hash": digest}) + "\n")


def _read_head(head_path: Path) -> dict[str, Any] | str | None:
    """The head as {"seq", "hash"}, None when missing, or a one-line description of why it is unusable."""
    try:
        text = head_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return "not valid UTF-8"
    try:
        head = json.loads(text)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not (
        isinstance(head, dict)
        and set(head) == {"seq", "hash"}
        and isinstance(head["seq"], int)
        and isinstance(head["hash"], str)
    ):
        return 'not of the form {"seq": N, "hash": "..."}'
    return head


def _check_chain(data: bytes) -> tuple[list[str], tuple[int, dict[str, Any]] | None]:
    """Problems in the lines themselves, and the last line that parsed as an entry (with its line number)."""
    problems: list[str] = []
    last: tuple[int, dict[str, Any]] | None = None
    expected_seq: int | None = 1
    expected_prev: str | None = GENESIS
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for line_no, raw in enumerate(lines, start=1):
        entry, problem = _parse_line(raw)
        if entry is None:
            problems.append(f"{AUDIT_LOG} line {line_no}: {problem}")
            expected_seq = expected_prev = None  # unknown: do not blame the next line for this one
            continue
        if problem:
            problems.append(f"{AUDIT_LOG} line {line_no}: {problem}")
        elif entry_hash(entry) != entry["hash"]:
            problems.append(f"{AUDIT_LOG} line {line_no}: hash does not match the entry's contents (it was edited)")
        if expected_seq is not None and entry["seq"] != expected_seq:
            problems.append(
                f"{AUDIT_LOG} line {line_no}: seq is {entry['seq']}, expected {expected_seq} "
                "(an entry was removed, inserted or reordered)"
            )
        if expected_prev is not None and entry["prev"] != expected_prev:
            problems.append(
                f"{AUDIT_LOG} line {line_no}: prev does not match the hash of "
                + ("no entry (the first entry's prev must be 64 zeros)" if line_no == 1 else f"line {line_no - 1}")
                + " (an entry was removed, inserted or reordered)"
            )
        expected_seq, expected_prev, last = entry["seq"] + 1, entry["hash"], (line_no, entry)
    return problems, last


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The entry (None when unusable) and a problem ("" when none) for one line of the log."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"not a JSON object but {type(value).__name__}"
    if not all(isinstance(value.get(key), kind) for key, kind in (("seq", int), ("prev", str), ("hash", str))):
        return None, "not an audit entry (needs an integer seq and string prev and hash)"
    if set(value) != FIELDS:
        missing, extra = sorted(FIELDS - set(value)), sorted(set(value) - FIELDS)
        return value, f"fields are wrong (missing: {missing or 'none'}; unexpected: {extra or 'none'})"
    return value, ""


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
