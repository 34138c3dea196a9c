"""The trust root: the one file, outside the checkout, that decides which keys may sign what, and the policy floor.

A gate proves something only if what it relies on cannot be written by the change it judges. The keys that verify
attestations, submission records, training provenance and waiver approvals therefore come from a file the
organisation controls, never from the tree: `ORACLE_TRUST_ROOT` names it; on machines where the organisation installs
`/etc/oracle/trust-root.json` (CI runners, cluster login nodes, publish and serving hosts) that file wins and the
environment cannot point elsewhere. A trust root inside the checkout being judged is refused.

The file is a DSSE envelope (the signing format of in-toto and sigstore: a payload type, a base64 payload and
Ed25519 signatures over the DSSE pre-authentication encoding) whose payload is shaped like a TUF root:

    {"type": "oracle-trust-root", "version": 3, "expires": "2027-12-05T00:00:00Z",
     "keys":  {"<keyid>": {"keytype": "ed25519", "public": "<PEM SubjectPublicKeyInfo>"}},
     "roles": {"root": {"keyids": [...], "threshold": 1}, "attestation": {...}, "submission": {...},
               "provenance": {...}, "waiver-approval": {...}},
     "floor": {...}}

It verifies when at least `roles.root.threshold` distinct root keys listed in it sign it and it has not expired;
key ids are recomputed from the keys, so a key cannot be listed under another key's id. python-tuf's `Root` fixes its
roles to TUF's four (root, targets, snapshot, timestamp); ours are the four signing duties of this project, so the
format keeps TUF's semantics (threshold, expiry, version) under our own role names.

Without a trust root the embedded development default applies: the public keys committed under `policies/keys/`
verify (unsigned attestations too, unless policies.toml requires signatures), so a newcomer's `make guards` and
`make test` work, but everything it yields is development-only, and the actions that leave this machine (sending a
job to a scheduler, publishing to the Hub, serving weights) refuse it with one line saying how to set up trust.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guards import keys
from oracle_base.digests import canonical_json
from oracle_base.errors import Refused
from oracle_base.records import RecordError
from oracle_base.records.governance import (
    TRUST_ROOT_PAYLOAD_TYPE,
    Envelope,
    KeyEntry,
    RoleEntry,
    TrustRootDocument,
)

TRUST_ROOT_ENV = "ORACLE_TRUST_ROOT"
SYSTEM_TRUST_ROOT = Path("/etc/oracle/trust-root.json")
PAYLOAD_TYPE = TRUST_ROOT_PAYLOAD_TYPE
DOCUMENT_TYPE = "oracle-trust-root"

ROOT_ROLE = "root"
ATTESTATION = "attestation"  # CI: `oracle guards attest` on a passing ci gate
SUBMISSION = "submission"  # the submitter: `oracle submit` records
PROVENANCE = "provenance"  # the training job: checkpoint provenance
WAIVER_APPROVAL = "waiver-approval"  # reviewers: approvals of waivers of critical rules
SIGNING_ROLES = (ATTESTATION, SUBMISSION, PROVENANCE, WAIVER_APPROVAL)
ROLES = (ROOT_ROLE, *SIGNING_ROLES)

SETUP_HINT = (
    "set up trust: `oracle keys new` for each signer, `oracle trust init`, then point ORACLE_TRUST_ROOT at the "
    "file (README: Trust root and keys)"
)


class TrustError(Refused):
    """The trust root cannot be found, read or verified, or a development-only record meets a gate that needs trust."""


@dataclass(frozen=True)
class TrustRoot:
    """A verified trust root, or the embedded development default (`development=True`)."""

    source: str
    development: bool
    version: int = 0
    expires: datetime | None = None
    digest: str | None = None  # sha256 of the trust root file's bytes
    role_keys: Mapping[str, Mapping[str, Ed25519PublicKey]] = field(default_factory=dict)
    thresholds: Mapping[str, int] = field(default_factory=dict)
    floor: Mapping[str, Any] = field(default_factory=dict)

    def keys_for(self, role: str) -> dict[str, Ed25519PublicKey]:
        if role not in SIGNING_ROLES:
            raise ValueError(f"unknown signing role {role!r}; one of {', '.join(SIGNING_ROLES)}")
        return dict(self.role_keys.get(role, {}))

    def all_keys(self) -> dict[str, Ed25519PublicKey]:
        merged: dict[str, Ed25519PublicKey] = {}
        for role in SIGNING_ROLES:
            merged.update(self.role_keys.get(role, {}))
        return merged

    def describe(self) -> dict[str, object]:
        """What records say about the trust they were made under."""
        if self.development:
            return {"development": True}
        return {"development": False, "version": self.version, "digest": self.digest}

    @property
    def label(self) -> str:
        if self.development:
            return "development-only (no trust root: the embedded default, keys from policies/keys/)"
        return f"trust root v{self.version} sha256:{(self.digest or '')[:16]} ({self.source})"


def require_trusted(trust: TrustRoot, action: str) -> None:
    """Refuse, in one line, an action that leaves this machine while only the development default applies."""
    if trust.development:
        raise TrustError(f"{action} refused: development-only (no trust root); {SETUP_HINT}")


def require_protected(trust: TrustRoot, action: str) -> None:
    """Refuse `action` unless the trust root is a file that only root can change: it and every folder above it owned
    by root and not writable by group or others (a sticky folder such as /tmp excepted: others cannot replace what
    is in it). Where the code runs on a machine the organisation controls (the training job on a cluster node, a
    serving host), a trust root the user made themselves and named through the environment would vouch for their
    own keys; anywhere the user owns the machine the gates are advisory and their artefacts verify only where the
    organisation's trust root is installed."""
    require_trusted(trust, action)
    path = Path(trust.source)
    problem = _unprotected(path)
    if problem:
        raise TrustError(
            f"{action} refused: trust root {path} {problem}; install the organisation's trust root as "
            f"{SYSTEM_TRUST_ROOT} (root-owned, mode 0644), or name a root-owned copy in {TRUST_ROOT_ENV}"
        )


def _unprotected(path: Path) -> str | None:
    """Why `path` could be changed by someone other than root, or None."""
    try:
        info = path.lstat()
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != 0:
        return f"is owned by uid {info.st_uid}, not root"
    if info.st_mode & 0o022:
        return "is writable by group or others"
    for folder in path.parents:
        try:
            folder_info = folder.lstat()
        except OSError as exc:
            return f"lies in {folder}, which cannot be checked ({exc.strerror})"
        if folder_info.st_uid != 0:
            return f"lies in {folder}, owned by uid {folder_info.st_uid}, not root"
        if folder_info.st_mode & 0o022 and not folder_info.st_mode & stat.S_ISVTX:
            return f"lies in {folder}, which group or others may write"
    return None


def trust_root_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the trust root is: the system file when installed (the environment may only name that same file), else
    ORACLE_TRUST_ROOT; None when neither is configured."""
    env = os.environ if environ is None else environ
    named = env.get(TRUST_ROOT_ENV, "").strip()
    if SYSTEM_TRUST_ROOT.exists():
        if named and Path(named).expanduser().resolve() != SYSTEM_TRUST_ROOT.resolve():
            raise TrustError(
                f"{TRUST_ROOT_ENV}={named} but this machine's trust root is {SYSTEM_TRUST_ROOT}, which the "
                f"environment cannot replace; unset {TRUST_ROOT_ENV}"
            )
        return SYSTEM_TRUST_ROOT
    return Path(named).expanduser().resolve() if named else None


def load_trust_root(
    checkout: Path | None = None, environ: Mapping[str, str] | None = None, *, now: datetime | None = None
) -> TrustRoot:
    """The verified trust root, or the development default when none is configured. `checkout`: the tree being
    judged (a trust root inside it is refused; in development its policies/keys/ verify)."""
    path = trust_root_path(environ)
    if path is None:
        in_tree = keys.load_public_keys(checkout) if checkout is not None else {}
        return TrustRoot(
            source="embedded development default",
            development=True,
            role_keys={role: in_tree for role in SIGNING_ROLES},
            thresholds={role: 1 for role in SIGNING_ROLES},
        )
    if checkout is not None and path.is_relative_to(checkout.resolve()):
        raise TrustError(
            f"trust root {path} lies inside the checkout {checkout}: a change could write it; keep it outside "
            f"the tree ({SETUP_HINT})"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"trust root {path} cannot be read ({exc.strerror}); {SETUP_HINT}") from exc
    document = parse_trust_root(path, data)
    verify_root_signatures(path, data, document)
    moment = now or datetime.now(UTC)
    if document.expires <= moment:
        raise TrustError(
            f"trust root {path} (version {document.version}) expired on {document.expires.isoformat()}; the root "
            "key holders must issue a new version (`oracle trust init --version N+1`)"
        )
    return TrustRoot(
        source=str(path),
        development=False,
        version=document.version,
        expires=document.expires,
        digest=hashlib.sha256(data).hexdigest(),
        role_keys={role: _role_keys(document, role) for role in SIGNING_ROLES},
        thresholds={role: entry.threshold for role, entry in document.roles.items()},
        floor=document.floor,
    )


def _open(path: Path, data: bytes) -> Envelope:
    try:
        return Envelope.open(data, path, PAYLOAD_TYPE)
    except RecordError as exc:
        raise TrustError(f"trust root {path} is malformed: {exc}; re-issue it with `oracle trust init`") from exc


def parse_trust_root(path: Path, data: bytes) -> TrustRootDocument:
    """The document inside the envelope, validated; TrustError naming the field otherwise (signatures unchecked)."""
    envelope = _open(path, data)
    try:
        document = envelope.statement(TrustRootDocument, path, data.decode("utf-8"))
    except RecordError as exc:
        raise TrustError(f"{exc}; re-issue it with `oracle trust init`") from exc
    if envelope.body != keys_canonical(document):
        raise TrustError(f"trust root {path}: the payload is not in canonical form; re-issue it (`oracle trust init`)")
    unknown = sorted(set(document.roles) - set(ROLES))
    missing = sorted(set(ROLES) - set(document.roles))
    if unknown or missing:
        raise TrustError(
            f"trust root {path}: roles must be exactly {', '.join(ROLES)} (unknown: {unknown or 'none'}; "
            f"missing: {missing or 'none'})"
        )
    for keyid, entry in document.keys.items():
        actual = keys.key_id(_public_key(path, keyid, entry))
        if actual != keyid:
            raise TrustError(f"trust root {path}: key listed as {keyid} is key {actual}; key ids come from the key")
    for role, role_entry in document.roles.items():
        unlisted = [keyid for keyid in role_entry.keyids if keyid not in document.keys]
        if unlisted:
            raise TrustError(f"trust root {path}: roles.{role} names keys not in `keys`: {', '.join(unlisted)}")
        if role == ROOT_ROLE and not role_entry.keyids:
            raise TrustError(f"trust root {path}: roles.root names no key; nothing could ever sign it")
        if role_entry.keyids and role_entry.threshold > len(set(role_entry.keyids)):
            raise TrustError(
                f"trust root {path}: roles.{role}.threshold {role_entry.threshold} exceeds its "
                f"{len(set(role_entry.keyids))} keys"
            )
    return document


def verify_root_signatures(path: Path, data: bytes, document: TrustRootDocument) -> None:
    """At least `roles.root.threshold` distinct root keys of the document signed it."""
    envelope = _open(path, data)
    root_role = document.roles[ROOT_ROLE]
    root_keys = {keyid: _public_key(path, keyid, document.keys[keyid]) for keyid in root_role.keyids}
    signed = envelope.signed_bytes()
    valid = {s.keyid for s in envelope.signatures if keys.verify(root_keys, s.keyid, signed, s.sig)}
    if len(valid) < root_role.threshold:
        raise TrustError(
            f"trust root {path} carries {len(valid)} valid root signature(s) of the {root_role.threshold} required: "
            "it was altered or signed by a key that is not its root key"
        )


def _public_key(path: Path, keyid: str, entry: KeyEntry) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(entry.public.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"trust root {path}: keys.{keyid} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"trust root {path}: keys.{keyid} is a {type(key).__name__}, not Ed25519")
    return key


def _role_keys(document: TrustRootDocument, role: str) -> dict[str, Ed25519PublicKey]:
    return {
        keyid: _public_key(Path("trust root"), keyid, document.keys[keyid]) for keyid in document.roles[role].keyids
    }


def keys_canonical(document: TrustRootDocument) -> bytes:
    return canonical_json(document.model_dump(mode="json"))


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def build_trust_root(
    root_keys: list[Ed25519PrivateKey],
    role_members: Mapping[str, list[Ed25519PublicKey]],
    *,
    version: int = 1,
    expires: datetime | None = None,
    floor: Mapping[str, Any] | None = None,
    threshold: int = 1,
) -> bytes:
    """The signed trust root file's bytes: `root_keys` sign it and form the root role; `role_members` name the
    public keys of each signing role."""
    entries: dict[str, KeyEntry] = {}
    roles: dict[str, RoleEntry] = {}
    members = {ROOT_ROLE: [key.public_key() for key in root_keys], **role_members}
    for role in ROLES:
        ids = []
        for public in members.get(role, []):
            keyid = keys.key_id(public)
            entries[keyid] = KeyEntry(public=public_pem(public))
            ids.append(keyid)
        roles[role] = RoleEntry(keyids=sorted(set(ids)), threshold=threshold if role == ROOT_ROLE else 1)
    when = expires or (datetime.now(UTC) + timedelta(days=365))
    document = TrustRootDocument(
        version=version,
        expires=when.astimezone(UTC).replace(microsecond=0),
        keys=entries,
        roles=roles,
        floor=dict(floor or {}),
    )
    parse_trust_root(Path("(new trust root)"), _bare_envelope(document))  # the same checks a reader applies
    return keys.seal(PAYLOAD_TYPE, keys_canonical(document), root_keys).to_bytes()


def _bare_envelope(document: TrustRootDocument) -> bytes:
    return Envelope.seal(PAYLOAD_TYPE, keys_canonical(document), []).to_bytes()
