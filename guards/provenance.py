"""Provenance records: `provenance.json` beside a checkpoint's weights, signed, binding every weights file's sha256
to the commit, attestation, submission, configs, data and job that produced it.

The record is a DSSE envelope (as attestations are) whose payload lists `files` (name → sha256) plus the training
facts; `hub` (weights) and `serve` (loading) accept weights only when it verifies, and the external-weights policy
lets such files stay in the tree. Unsigned provenance never verifies: anyone can write a hash.

Files derived from a checkpoint (`oracle export`) get a record of the same form: their `files`, and under `source`
the checkpoint they came from (its path, the sha256 of its provenance.json and the facts that identify its run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards import keys
from guards.trust import PROVENANCE as PROVENANCE_ROLE
from guards.trust import TrustError, TrustRoot, load_trust_root
from oracle_base.atomic_write import write_atomically
from oracle_base.bounded_read import read_regular_file
from oracle_base.digests import canonical_json, sha256_file
from oracle_base.errors import Refused
from oracle_base.records import RecordError
from oracle_base.records.governance import PROVENANCE_PAYLOAD_TYPE, Envelope, ProvenanceRecord, RunIdentity

PROVENANCE_FILE = "provenance.json"
PAYLOAD_TYPE = PROVENANCE_PAYLOAD_TYPE


class ProvenanceError(Refused):
    """A provenance record is missing, malformed, unsigned, signed by an unknown key, or does not match the files."""


def write_provenance(
    directory: Path,
    weights: list[str],
    facts: dict[str, Any],
    signing_key: Ed25519PrivateKey | None,
    *,
    digests: dict[str, str] | None = None,
) -> Path:
    """Write (and sign, given a key) a record for the named weights files in `directory`; their sha256 are computed
    here, except those `digests` gives (computed by the rank of a training job that wrote the file: the signer never
    reads another rank's files). Without a key the record is written unsigned, and so never verifies: it still
    documents the run. `facts` must fit the schema (ProvenanceRecord): a fact it does not know is refused here, as
    every reader would refuse it."""
    given = digests or {}
    files = {name: given[name] if name in given else sha256_file(directory / name) for name in sorted(weights)}
    path = directory / PROVENANCE_FILE
    try:
        record = ProvenanceRecord.parse_document({"files": files, **facts}, "", path)
    except RecordError as exc:
        raise ProvenanceError(f"cannot write {exc}") from exc
    sealed = keys.seal(PAYLOAD_TYPE, canonical_json(record.document()), [signing_key] if signing_key else [])
    return write_atomically(path, sealed.to_bytes())


def derived_facts(checkpoint: Path, record: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """The facts of a record for files derived from `checkpoint`, whose verified record is `record`: `source` names
    it (path, the sha256 of its provenance.json, its commit, run and step); `facts` say how they were derived."""
    identity: dict[str, Any] = {key: record[key] for key in RunIdentity.model_fields if key in record}
    source: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "provenance_sha256": sha256_file(checkpoint / PROVENANCE_FILE),
        **identity,
    }
    return {"source": source, **facts}


def verify_provenance(
    directory: Path, root: Path, *, only: list[str] | None = None, trust: TrustRoot | None = None
) -> dict[str, Any]:
    """The verified record of `directory`; raises ProvenanceError saying exactly what is wrong. `only`: check just
    these files of the record (each must be listed), e.g. weights staged beside a rewritten config.json. The keys
    that verify are the trust root's `provenance` role (guards.trust; `root`'s policies/keys/ only under the
    development default)."""
    if trust is None:
        try:
            trust = load_trust_root(root)
        except TrustError as exc:
            raise ProvenanceError(str(exc)) from exc
    path = directory / PROVENANCE_FILE
    try:
        data = read_regular_file(path)
    except FileNotFoundError as exc:
        raise ProvenanceError(f"{path} is missing: weights need a signed provenance record beside them") from exc
    except OSError as exc:
        raise ProvenanceError(f"{path} is not a provenance envelope ({exc})") from exc
    try:
        envelope = Envelope.open(data, path, PAYLOAD_TYPE)
    except RecordError as exc:
        raise ProvenanceError(f"{exc}; it is not a provenance record") from exc
    body = envelope.body
    public_keys = trust.keys_for(PROVENANCE_ROLE)
    where = "policies/keys/ (development default)" if trust.development else f"the trust root {trust.source}"
    if not envelope.signatures:
        raise ProvenanceError(f"{path} is unsigned; provenance must be signed by a provenance key of {where}")
    for entry in envelope.signatures:
        if entry.keyid not in public_keys:
            raise ProvenanceError(f"{path} is signed by key {entry.keyid}, which is not a provenance key of {where}")
        if not keys.verify(public_keys, entry.keyid, envelope.signed_bytes(), entry.sig):
            raise ProvenanceError(f"{path}: the signature by {entry.keyid} does not verify (altered after signing)")
    try:
        record = envelope.statement(ProvenanceRecord, path, data.decode("utf-8")).document()
    except RecordError as exc:
        raise ProvenanceError(f"{exc}; write the record again (`oracle train` or `oracle export`)") from exc
    if body != canonical_json(record):
        raise ProvenanceError(f"{path}: the payload is not in canonical form")
    files: dict[str, Any] = record["files"]
    if only is not None:
        unlisted = [name for name in only if name not in files]
        if unlisted:
            raise ProvenanceError(f"{path} does not list {', '.join(unlisted)}")
        files = {name: files[name] for name in only}
    for name, digest in files.items():
        target = directory / name
        if not target.is_file() or sha256_file(target) != digest:
            raise ProvenanceError(f"{path}: {name} is missing or its sha256 differs from the signed record")
    return record


def provenance_verifier(root: Path) -> Callable[[str], bool]:
    """For the external-weights policy: is this weights file (relative to root) covered by a verifying record?"""
    cache: dict[Path, dict[str, Any] | None] = {}
    try:
        trust: TrustRoot | None = load_trust_root(root)
    except TrustError:
        trust = None  # no key can vouch for anything: every weights file stays a finding

    def verify(relative: str) -> bool:
        path = root / relative
        directory = path.parent
        if directory not in cache:
            try:
                if trust is None:
                    raise ProvenanceError("no usable trust root")
                cache[directory] = verify_provenance(directory, root, trust=trust)
            except ProvenanceError:
                cache[directory] = None
        record = cache[directory]
        return record is not None and path.name in record["files"]

    return verify
