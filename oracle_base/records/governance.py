"""Schemas of the signed governance records: the DSSE envelope every signed record travels in, and the payloads
inside it (the attestation's in-toto Statement, training provenance, the submission record, the trust root), plus
the audit log's entries and its anchor. Writers build these models and sign `document()`; readers open the envelope
here, verify its signatures (guards), then validate the payload here: one schema per record for both sides.

Bytes. What is signed is `oracle_base.digests.canonical_json(record.document())`, and `document()` holds exactly the
keys that were set: a record written before a field existed keeps its bytes and its meaning, and version 1 is never
written (`schema_version` absent means 1; a later version is written, and this code refuses it).

Errors. A record that does not match its schema is refused with one line, `KIND path:line: key: what is wrong`; keys
inside an envelope's payload are named `payload.<key>` on the line of `payload`.

DSSE. `Envelope` is the one parser of DSSE envelopes (payloadType, base64 payload, signatures of {keyid, sig}), and
it is strict: an unknown key, a payload that is not base64, or a signature entry without both strings is refused.
That departs on purpose from DSSE's parsing rules (consumers "MUST ignore unrecognized fields", `keyid` optional):
these are our own records, sealed only by guards.keys.seal, and a field we did not write means a file we did not
write. securesystemslib's `dsse.Envelope` was weighed and not used: it is not installed, and the gates' install is
kept small for the pre-commit hook; it signs and verifies only through its own `Signer`/`Key` classes, while our keys
are plain `cryptography` Ed25519 keys with ids of our own (guards.keys); and its `from_dict` reads the three fields it
knows, ignores the rest and fails with a bare KeyError, where our readers must refuse and name the line and key. What
we share with it is the specification: `pae` below is DSSE v1's pre-authentication encoding, byte for byte, and the
envelope's JSON is DSSE's.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, cast

from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator

from oracle_base.records import Record, RecordError, Sha256
from oracle_base.validation import describe_validation_error

GENESIS = "0" * 64  # the `prev` of the audit log's first entry

R = TypeVar("R", bound=Record)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed, so the type cannot be swapped under a signature."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(body), body)


class GovernanceRecord(Record):
    """A signed or hash-chained record: types are strict (no "3" for 3, no 1 for true), since what was signed is
    what is meant."""

    # Only the names on disk (payloadType, _type, predicateType): a Python field name in their place is an unknown
    # key, as a standard DSSE or in-toto verifier would refuse it.
    model_config = ConfigDict(strict=True)

    def document(self) -> dict[str, Any]:
        """The JSON object that is signed or hashed: the keys that were set, under their names on disk."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


# --- the envelope ------------------------------------------------------------------------------------------------


class Signature(GovernanceRecord):
    KIND = "DSSE signature"

    keyid: str
    sig: str  # base64; a signature that is not base64 never verifies (guards.keys.verify), it is not malformed


class Envelope(GovernanceRecord):
    """A DSSE envelope. `open` reads one of an expected payload type; `statement` validates its payload."""

    KIND = "DSSE envelope"

    payload_type: str = Field(alias="payloadType")
    payload: str
    signatures: list[Signature]

    @field_validator("payload")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not base64 ({exc})") from exc
        return value

    @classmethod
    def seal(cls, payload_type: str, body: bytes, signatures: list[Signature]) -> Self:
        payload = base64.b64encode(body).decode("ascii")
        return cls.model_validate({"payloadType": payload_type, "payload": payload, "signatures": signatures})

    @classmethod
    def open(cls, data: bytes, path: Path | str, payload_type: str) -> Self:
        """The envelope in `data` (the file's bytes), unverified; RecordError unless it is one of `payload_type`."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"{path}: not a {cls.KIND}: not UTF-8 ({exc})") from exc
        envelope = cls.parse_text(text, path)
        if envelope.payload_type != payload_type:
            raise RecordError(
                f"{cls.KIND} {_where(path, text, 'payloadType')}: payloadType: is {envelope.payload_type!r}, "
                f"expected {payload_type!r} (this file is another kind of record)"
            )
        return envelope

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.payload, validate=True)

    def signed_bytes(self) -> bytes:
        return pae(self.payload_type, self.body)

    def statement(self, schema: type[R], path: Path | str, text: str) -> R:
        """The payload validated by `schema`; `text` is the envelope file's, whose `payload` line errors name."""
        try:
            document = json.loads(self.body)
        except ValueError as exc:
            raise RecordError(
                f"{schema.KIND} {_where(path, text, 'payload')}: payload: not base64-encoded JSON ({exc})"
            ) from exc
        try:
            validated = _under_payload(schema).model_validate({"payload": document})
        except ValidationError as exc:
            # every key of the payload sits on the line of `payload`, however the envelope is laid out
            where = _where(path, text, "payload")
            raise RecordError(f"{schema.KIND} {describe_validation_error(where, '', exc)}") from exc
        return cast("R", vars(validated)["payload"])

    def to_bytes(self, *, sort_keys: bool = False) -> bytes:
        """The file's bytes: indented JSON and a newline (submission records sort the keys, as they always have;
        their digest is of these bytes, so the layout stays what it was)."""
        return json.dumps(self.document(), indent=2, sort_keys=sort_keys).encode("utf-8") + b"\n"


@functools.cache
def _under_payload(schema: type[Record]) -> type[Record]:
    """A model holding `schema` under the key `payload`, so that an error names the key as `payload.<key>`."""
    return create_model(f"{schema.__name__}Payload", __base__=Record, payload=(schema, ...))


def _where(path: Path | str, text: str, key: str) -> str:
    """`path:line` of the first line holding `key` as a JSON key, or `path` alone."""
    for number, line in enumerate(text.splitlines(), start=1):
        if f'"{key}"' in line:
            return f"{path}:{number}"
    return str(path)


# --- pieces several records carry ----------------------------------------------------------------------------------


class AuditAnchor(GovernanceRecord):
    """The audit log's end when a record was made (guards.audit.current_anchor); also the shape of `audit.head`."""

    KIND = "audit anchor"

    seq: int = Field(ge=1)
    hash: Sha256


class TrustDescription(GovernanceRecord):
    """What a record says of the trust root it was made under (guards.trust.TrustRoot.describe)."""

    KIND = "trust description"

    development: bool
    version: int | None = None
    digest: str | None = None


class WaiverInUse(GovernanceRecord):
    """A waiver that suppressed a finding, as attestations and submission records list it (guards.result)."""

    KIND = "waiver in use"

    rule: str
    selector: str
    owner: str
    created: str
    expires: str


# --- the attestation: an in-toto Statement v1 ----------------------------------------------------------------------

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
GUARDS_RESULT_TYPE = "https://oracle.invalid/attestation/guards-result/v1"
ATTESTATION_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class Subject(GovernanceRecord):
    KIND = "in-toto subject"

    name: str
    digest: dict[str, str]


class RuleOutcome(GovernanceRecord):
    KIND = "rule outcome"

    id: str
    result: Literal["pass", "fail", "waived"]


class GuardsResult(GovernanceRecord):
    """The predicate: what the ci gate decided. Fields that came later default to "not recorded"."""

    KIND = "guards result"

    gate: str
    commit: str
    passed: bool
    created: str
    rules: list[RuleOutcome]
    findings: int = Field(ge=0)
    waived: list[str] = Field(default_factory=list)  # fingerprints of the waived findings
    waivers: list[WaiverInUse] = Field(default_factory=list)
    examined: dict[str, int] = Field(default_factory=dict)  # files examined, per policy
    trust: TrustDescription | None = None
    audit: AuditAnchor | None = None


class AttestationStatement(GovernanceRecord):
    """The attestation's payload; its version is the statement type and the predicate type."""

    KIND = "attestation"

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[Subject]
    predicate_type: Literal["https://oracle.invalid/attestation/guards-result/v1"] = Field(alias="predicateType")
    predicate: GuardsResult


# --- training provenance -----------------------------------------------------------------------------------------

PROVENANCE_PAYLOAD_TYPE = "application/vnd.oracle.provenance+json"


class RunIdentity(GovernanceRecord):
    """What identifies the training run behind a record: in provenance, and again in the `source` of derived files."""

    commit: str | None = None
    attestation_digest: str | None = None
    run: str | None = None
    step: int | None = Field(default=None, ge=0)
    job_id: str | None = None


class ProvenanceSource(RunIdentity):
    """The checkpoint files derived from (`oracle export`) came from, and what identifies its run."""

    KIND = "provenance source"

    checkpoint: str
    provenance_sha256: Sha256


class ExportFacts(GovernanceRecord):
    KIND = "export facts"

    format: str
    architecture: str


class ProvenanceRecord(RunIdentity):
    """`provenance.json`'s payload: every signed file's sha256 and the facts of the run (or of the derivation)."""

    KIND = "provenance record"

    schema_version: Literal[1] = 1
    files: dict[str, Sha256]
    submission_digest: str | None = None
    train_config_sha256: str | None = None
    data_manifest_sha256: str | None = None
    training_state: dict[str, Sha256] | None = None  # what a resume loads, by name
    audit: AuditAnchor | None = None
    local_override: bool | None = None  # ALLOW_LOCAL_TRAIN let the run through: nothing attested its code
    source: ProvenanceSource | None = None
    export: ExportFacts | None = None


# --- the submission record ---------------------------------------------------------------------------------------

SUBMISSION_PAYLOAD_TYPE = "application/vnd.oracle.submission+json"


class SubmissionRecord(GovernanceRecord):
    """What `oracle submit` (training) or `oracle data submit` (kind `data`) signs before a job reaches a cluster."""

    KIND = "submission record"

    schema_version: Literal[1] = 1
    commit: str
    tree: str
    attestation_digest: str
    config_hash: str
    spec_hash: str
    target: Literal["slurm", "k8s", "argo"]
    created: str
    lock_sha256: str
    trust: TrustDescription
    audit: AuditAnchor | None
    waivers: list[WaiverInUse]
    kind: Literal["train", "data"] = "train"  # what the job runs: training, or the data pipeline's stages


# --- the audit log -----------------------------------------------------------------------------------------------


class AuditEntry(GovernanceRecord):
    """One line of the audit log. `hash` covers the line without `hash` and `sig`; `signer` (inside the hash) and
    `sig` are there when a key signed it."""

    KIND = "audit entry"

    schema_version: Literal[1] = 1
    seq: int = Field(ge=1)
    time: str
    who: str
    gate: str
    commit: str | None
    result: str
    waivers: list[str]
    details: dict[str, Any]
    prev: Sha256
    hash: Sha256
    signer: str | None = None
    sig: str | None = None


# --- the trust root ----------------------------------------------------------------------------------------------

TRUST_ROOT_PAYLOAD_TYPE = "application/vnd.oracle.trust-root+json"


class KeyEntry(Record):
    KIND = "trust root key"

    keytype: Literal["ed25519"] = "ed25519"
    public: str = Field(min_length=1, description="PEM SubjectPublicKeyInfo")


class RoleEntry(Record):
    KIND = "trust root role"

    keyids: list[str] = Field(default_factory=list)
    threshold: int = Field(default=1, ge=1)


class TrustRootDocument(Record):
    """The trust root's payload, shaped like a TUF root (guards.trust); `version` is the document's own version
    number (each re-issue raises it), `type` the schema."""

    KIND = "trust root"

    type: Literal["oracle-trust-root"] = "oracle-trust-root"
    version: int = Field(ge=1)
    expires: datetime
    keys: dict[str, KeyEntry]
    roles: dict[str, RoleEntry]
    floor: dict[str, Any] = Field(default_factory=dict, description="The policy floor (policies.floor.PolicyFloor)")
