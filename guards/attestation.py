"""The attestation: proof that the ci gate passed on exactly this tree, lock, policy bundle and model config.

`write_attestation` records a passing ci run on a clean tree as an in-toto Statement v1 wrapped in a DSSE envelope
(signed with Ed25519 when a key is configured) at `.oracle/attestations/<git tree id>.json`. `verify_attestation` is
what `publish` and `submit` call: it refuses a missing, stale, tampered or failing attestation with an
AttestationError whose `reason` says which, and returns the envelope's digest for the records that name it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards import git, keys, paths, startup
from guards.audit import current_anchor
from guards.result import GateResult
from guards.trust import ATTESTATION as ATTESTATION_ROLE
from guards.trust import TrustError, TrustRoot, load_trust_root
from oracle_base.atomic_write import write_atomically
from oracle_base.digests import canonical_json, sha256_file
from oracle_base.errors import Refused
from oracle_base.records import RecordError
from oracle_base.records.governance import (
    ATTESTATION_PAYLOAD_TYPE,
    GUARDS_RESULT_TYPE,
    STATEMENT_TYPE,
    AttestationStatement,
    Envelope,
)
from policies.rule import Gate

PREDICATE_TYPE = GUARDS_RESULT_TYPE
PAYLOAD_TYPE = ATTESTATION_PAYLOAD_TYPE

TREE_SUBJECT = "git-tree"
LOCK_SUBJECT = "requirements.lock"
POLICY_SUBJECT = "policy-bundle"
MODEL_CONFIG_SUBJECT = "model-config"

REASONS = frozenset(
    {
        "missing",
        "other-commit",
        "dirty-tree",
        "startup-hazard",
        "lock-changed",
        "policy-changed",
        "model-config-changed",
        "bad-signature",
        "unsigned",
        "failed",
        "malformed",
    }
)

_REATTEST = "run `make guards` (nox -s guards), which attests on a passing ci gate"
_SHOWN_DIRTY_PATHS = 5


RULE = "TRU003"  # the catalog's rule for every attestation refusal (policies/gate_checks.py)


class AttestationError(Refused):
    """An attestation cannot be written or does not vouch for the current checkout; `reason` says why. The message
    leads with the rule id, TRU003."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown attestation failure reason {reason!r}; use one of {sorted(REASONS)}")
        super().__init__(f"{RULE} {message}")
        self.reason = reason


@dataclass(frozen=True)
class VerifiedAttestation:
    path: Path
    digest: str  # sha256 of the envelope file's bytes: the "attestation digest" other records name
    statement: dict[str, Any]  # the verified AttestationStatement, as JSON
    keyid: str | None  # the key that signed it; None when unsigned
    development: bool = True  # verified under the development default (no trust root): never enough to leave here


def policy_bundle_files(root: Path) -> list[Path]:
    """The files whose content decides what the gates enforce: policy modules, settings and waivers."""
    files = sorted((root / paths.POLICIES_DIR).glob("*.py"))
    files += [root / extra for extra in (paths.SETTINGS_FILE, paths.WAIVERS_FILE) if (root / extra).is_file()]
    return [path for path in files if path.is_file()]


def policy_bundle_digest(root: Path) -> str:
    """sha256 of the canonical JSON list of sorted (relative posix path, content sha256) pairs of the bundle."""
    entries = sorted([path.relative_to(root).as_posix(), sha256_file(path)] for path in policy_bundle_files(root))
    return hashlib.sha256(canonical_json(entries)).hexdigest()


def current_digests(root: Path) -> dict[str, str | None]:
    """The sha256 of each non-tree subject as it is now; None for a file that does not exist."""
    lock, model_config = root / paths.LOCK_FILE, root / paths.MODEL_CONFIG
    return {
        LOCK_SUBJECT: sha256_file(lock) if lock.is_file() else None,
        POLICY_SUBJECT: policy_bundle_digest(root),
        MODEL_CONFIG_SUBJECT: sha256_file(model_config) if model_config.is_file() else None,
    }


def _rule_results(result: GateResult) -> list[dict[str, str]]:
    failing = {finding.rule_id for finding in result.findings}
    waived = {finding.rule_id for finding, _ in result.waived}
    outcomes = []
    for rule in result.rules:
        # an unwaived finding outweighs a waived one: the rule still found something nobody excused
        outcome = "fail" if rule.id in failing else "waived" if rule.id in waived else "pass"
        outcomes.append({"id": rule.id, "result": outcome})
    return outcomes


def build_statement(
    root: Path, result: GateResult, *, commit: str, tree: str, now: datetime | None = None
) -> AttestationStatement:
    """The in-toto Statement v1 for a gate result over root at (commit, tree)."""
    digests = current_digests(root)
    lock_digest = digests[LOCK_SUBJECT]
    if lock_digest is None:
        raise AttestationError(
            "failed",
            f"cannot attest: {root / paths.LOCK_FILE} does not exist; create it with `make lock` and commit it",
        )
    subjects: list[dict[str, Any]] = [
        {"name": TREE_SUBJECT, "digest": {"gitTree": tree}},
        {"name": LOCK_SUBJECT, "digest": {"sha256": lock_digest}},
        {"name": POLICY_SUBJECT, "digest": {"sha256": digests[POLICY_SUBJECT]}},
    ]
    if digests[MODEL_CONFIG_SUBJECT] is not None:
        subjects.append({"name": MODEL_CONFIG_SUBJECT, "digest": {"sha256": digests[MODEL_CONFIG_SUBJECT]}})
    created = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return AttestationStatement.model_validate(
        {
            "_type": STATEMENT_TYPE,
            "subject": subjects,
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "gate": str(result.gate),
                "commit": commit,
                "passed": result.passed,
                "created": created,
                "rules": _rule_results(result),
                "findings": len(result.findings),
                "waived": sorted({finding.fingerprint for finding, _ in result.waived}),
                "waivers": result.waivers_used,  # rule, selector, owner, created, expires of each waiver in use
                "examined": {policy: len(examined.files) for policy, examined in sorted(result.examined.items())},
                "trust": _trust_root(root).describe(),
                "audit": current_anchor(root),  # the audit log's head, which `oracle guards audit verify` checks
            },
        }
    )


def _write_atomically(path: Path, data: bytes) -> None:
    # a reader (publish, submit) must never see half an attestation
    write_atomically(path, data)


def _dirty_tree_error(dirty: list[str], action: str) -> AttestationError:
    shown = ", ".join(dirty[:_SHOWN_DIRTY_PATHS])
    more = f" and {len(dirty) - _SHOWN_DIRTY_PATHS} more" if len(dirty) > _SHOWN_DIRTY_PATHS else ""
    fix = "commit or stash them"
    if any("hidden from git status by" in path for path in dirty):
        fix = "clear the flags (`git update-index --no-skip-worktree --no-assume-unchanged <path>`), commit or stash"
    elif any(path.startswith(f"{paths.STATE_DIR.as_posix()}/") for path in dirty):
        fix = f"add `{paths.STATE_DIR.as_posix()}/` to .gitignore, and commit or stash the rest"
    return AttestationError("dirty-tree", f"{action}: the working tree has uncommitted changes ({shown}{more}); {fix}")


def _require_what_runs_is_head(root: Path, action: str) -> None:
    """Refuse unless the checkout's files are exactly HEAD's tree (flags and filters seen through) and nothing
    outside that tree would run at start-up in a job started from it (guards.startup)."""
    try:
        dirty = git.dirty_paths(root)
        hazards = startup.startup_hazards(root) if not dirty else []
    except git.GitError as exc:
        raise AttestationError("dirty-tree", f"{action}: cannot compare the checkout with HEAD: {exc}") from exc
    if dirty:
        raise _dirty_tree_error(dirty, action)
    if hazards:
        raise AttestationError("startup-hazard", f"{action}: {startup.describe(hazards)}")


def write_attestation(root: Path, result: GateResult, signing_key: Ed25519PrivateKey | None) -> Path:
    """Attest a passing ci result on a clean tree at `.oracle/attestations/<HEAD tree>.json`; return the path."""
    if result.gate != Gate.ci or not result.passed:
        state = "passed" if result.passed else "failed"
        raise AttestationError(
            "failed", f"cannot attest: the {result.gate} gate {state}; only a passing ci gate attests; {_REATTEST}"
        )
    _require_what_runs_is_head(root, "cannot attest")
    trust = _trust_root(root)
    if not trust.development:
        if signing_key is None:
            raise AttestationError(
                "unsigned",
                f"cannot attest: a trust root is configured ({trust.source}) and attestations must be signed; set "
                f"{paths.SIGNING_KEY_ENV} to the private key of a key its attestation role names",
            )
        signer = keys.key_id(signing_key.public_key())
        if signer not in trust.keys_for(ATTESTATION_ROLE):
            raise AttestationError(
                "bad-signature",
                f"cannot attest: the key in {paths.SIGNING_KEY_ENV} ({signer}) is not an attestation key of the trust "
                f"root {trust.source}; use one it names (`oracle trust show`)",
            )
    commit, tree = git.head_commit(root), git.head_tree(root)
    statement = build_statement(root, result, commit=commit, tree=tree)
    path = paths.attestation_path(root, tree)
    sealed = keys.seal(PAYLOAD_TYPE, canonical_json(statement.document()), [signing_key] if signing_key else [])
    _write_atomically(path, sealed.to_bytes())
    # an attestation that git does not ignore dirties the tree it attests, and every later verify would refuse it
    dirty = git.dirty_paths(root)
    if dirty:
        path.unlink()
        raise _dirty_tree_error(dirty, "attestation withdrawn")
    return path


def _malformed(path: Path, what: str) -> AttestationError:
    return AttestationError("malformed", f"attestation {path} is malformed ({what}); delete it and {_REATTEST}")


def _open(path: Path, data: bytes) -> tuple[Envelope, str]:
    """The envelope (unverified) and the file's text; AttestationError("malformed") unless it is a DSSE envelope of
    an attestation."""
    try:
        envelope = Envelope.open(data, path, PAYLOAD_TYPE)
    except RecordError as exc:
        raise AttestationError("malformed", f"{exc}; delete it and {_REATTEST}") from exc
    return envelope, data.decode("utf-8")


def _statement(path: Path, envelope: Envelope, text: str) -> AttestationStatement:
    try:
        return envelope.statement(AttestationStatement, path, text)
    except RecordError as exc:
        raise AttestationError("malformed", f"{exc}; delete it and {_REATTEST}") from exc


# subject → (reason, what it is called in messages), in the order verification reports them
_CHANGE_REASONS = {
    LOCK_SUBJECT: ("lock-changed", str(paths.LOCK_FILE)),
    POLICY_SUBJECT: ("policy-changed", f"the policy bundle ({paths.POLICIES_DIR.as_posix()}/)"),
    MODEL_CONFIG_SUBJECT: ("model-config-changed", f"the model config ({paths.MODEL_CONFIG.as_posix()})"),
}


def _attested_digests(statement: AttestationStatement) -> dict[str, str | None]:
    by_name = {entry.name: entry.digest for entry in statement.subject}
    attested: dict[str, str | None] = {name: by_name.get(name, {}).get("sha256") for name in _CHANGE_REASONS}
    attested[TREE_SUBJECT] = by_name.get(TREE_SUBJECT, {}).get("gitTree")
    return attested


def _changed_subject(statement: AttestationStatement, root: Path, path: Path) -> AttestationError | None:
    """The first subject whose attested digest differs from the current file, as an error; None when all match."""
    attested, current = _attested_digests(statement), current_digests(root)
    for subject, (reason, label) in _CHANGE_REASONS.items():
        if attested[subject] != current[subject]:
            state = "no longer exists" if current[subject] is None else "has changed"
            return AttestationError(reason, f"{label} {state} since attestation {path.name}; {_REATTEST}")
    return None


def _stale_error(root: Path, expected: Path, tree: str) -> AttestationError:
    """Why there is no attestation for HEAD's tree: none at all, or the newest one is for other content."""
    candidates = (
        [path for path in expected.parent.glob("*.json") if path != expected] if expected.parent.is_dir() else []
    )
    for candidate in sorted(candidates, key=lambda path: (path.stat().st_mtime, path.name), reverse=True):
        try:
            envelope, text = _open(candidate, candidate.read_bytes())
            statement = _statement(candidate, envelope, text)
        except (AttestationError, OSError):
            continue  # an unreadable older file says nothing about why HEAD is not attested
        changed = _changed_subject(statement, root, candidate)
        if changed is not None:
            return changed
        attested_commit = statement.predicate.commit
        return AttestationError(
            "other-commit",
            f"the newest attestation ({candidate.name}) is for commit {attested_commit}, but HEAD is commit "
            f"{git.head_commit(root)} (tree {tree}); {_REATTEST}",
        )
    return AttestationError("missing", f"no attestation for HEAD's tree {tree}; {_REATTEST}")


def _check_signatures(trust: TrustRoot, path: Path, envelope: Envelope, require_signature: bool) -> str | None:
    """The signing key id when every signature verifies; None when unsigned and that is allowed. With a trust root
    a signature by one of its `attestation` keys is always required; keys committed in the tree never count then."""
    where = (
        f"{paths.PUBLIC_KEYS_DIR.as_posix()}/ (development default)"
        if trust.development
        else f"the trust root's attestation role ({trust.source})"
    )
    signatures = envelope.signatures
    if not signatures:
        if require_signature or not trust.development:
            raise AttestationError(
                "unsigned",
                f"attestation {path.name} is unsigned but a signature is required; set {paths.SIGNING_KEY_ENV} to "
                f"the private key of a key in {where} and {_REATTEST}",
            )
        return None
    public_keys = trust.keys_for(ATTESTATION_ROLE)
    signed = envelope.signed_bytes()
    for entry in signatures:
        if entry.keyid not in public_keys:
            raise AttestationError(
                "bad-signature",
                f"attestation {path.name} is signed by key {entry.keyid}, which is not in {where}; "
                "re-attest with a key the trust root names for attestations",
            )
        if not keys.verify(public_keys, entry.keyid, signed, entry.sig):
            raise AttestationError(
                "bad-signature",
                f"attestation {path.name} does not match its signature by key {entry.keyid} (altered after "
                f"signing); delete it and {_REATTEST}",
            )
    return signatures[0].keyid


def verify_attestation(
    root: Path, *, require_signature: bool = False, trust: TrustRoot | None = None
) -> VerifiedAttestation:
    """The attestation that vouches for HEAD's tree as it is now; AttestationError (with `reason`) otherwise.
    `trust`: the trust root to verify against (default: the one configured for this machine, guards.trust)."""
    trust = trust if trust is not None else _trust_root(root)
    _require_what_runs_is_head(root, "cannot verify the attestation")
    tree = git.head_tree(root)
    path = paths.attestation_path(root, tree)
    if not path.is_file():
        raise _stale_error(root, path, tree)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _malformed(path, f"unreadable: {exc}") from exc
    envelope, text = _open(path, data)
    # authenticate before trusting any field: a tampered statement is reported as tampered, not as whatever it claims
    keyid = _check_signatures(trust, path, envelope, require_signature)
    statement = _statement(path, envelope, text)
    attested_tree = _attested_digests(statement)[TREE_SUBJECT]
    if attested_tree != tree:
        raise AttestationError(
            "other-commit",
            f"attestation {path.name} names tree {attested_tree}, not HEAD's tree {tree}; delete it and {_REATTEST}",
        )
    changed = _changed_subject(statement, root, path)
    if changed is not None:
        raise changed
    predicate = statement.predicate
    if predicate.gate != str(Gate.ci) or not predicate.passed:
        raise AttestationError(
            "failed",
            f"attestation {path.name} records gate {predicate.gate!r} with passed={predicate.passed!r}, "
            f"not a passing ci gate; fix the findings and {_REATTEST}",
        )
    return VerifiedAttestation(
        path=path,
        digest=hashlib.sha256(data).hexdigest(),
        statement=statement.document(),
        keyid=keyid,
        development=trust.development,
    )


def _trust_root(root: Path) -> TrustRoot:
    try:
        return load_trust_root(root)
    except TrustError as exc:
        raise AttestationError("bad-signature", str(exc)) from exc
