"""Waivers: `policies/waivers.toml`, each naming a rule and a path glob or a fingerprint, with a reason, an owner,
its creation date and an expiry date. An expired waiver stops applying (its findings come back) and is reported; a
malformed file is an error that names the file, line and key.

    [[waiver]]
    rule = "EXT002"
    path = "tests/guards/test_fixtures.py"   # or: fingerprint = "<from the report>"
    reason = "fixtures of the rule's own tests"
    owner = "platform@oracle.invalid"
    created = 2026-12-01
    expires = 2027-02-28
    approval = "<keyid>:<base64 signature>"  # only for the floor's critical rules

The policy floor bounds them (`bound_waivers`): a glob names at least one and at most `max_files` files of the tree
and has a literal part (never `*` or `**`); `expires - created` is at most the floor's lifetime and `created` is not
in the future; a waiver of a critical rule carries an Ed25519 approval, by a `waiver-approval` key of the trust root,
over the canonical JSON of its other fields. A waiver that breaks a bound does not apply and becomes a TRU002
finding; a glob that matches no file is stale (reported, applies to nothing).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guards.paths import WAIVERS_FILE
from oracle_base.validation import describe_validation_error, line_of
from policies.floor import WaiverLimits
from policies.rule import Finding
from policies.settings import SettingsError, read_toml

if TYPE_CHECKING:  # cryptography loads only when a waiver is signed or verified: the commit gate must feel instant
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

APPROVAL_PAYLOAD_TYPE = "application/vnd.oracle.waiver-approval+json"


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(pattern=r"^[A-Z]+[0-9]{3}$")
    path: str | None = Field(default=None, min_length=1, description="A glob relative to the root")
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    reason: str = Field(min_length=10, description="Why this is acceptable; a few words at least")
    owner: str = Field(min_length=3)
    created: date = Field(description="When the waiver was written; its lifetime counts from here")
    expires: date
    approval: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{16}:[A-Za-z0-9+/=]+$", description="<keyid>:<base64 Ed25519 signature>"
    )

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        from policies import find_rule

        if find_rule(value) is None:
            raise ValueError(f"unknown rule id {value!r}; `oracle guards rules` lists them")
        return value

    @model_validator(mode="after")
    def _one_selector(self) -> Self:
        if (self.path is None) == (self.fingerprint is None):
            raise ValueError("rule: a waiver needs exactly one of `path` (a glob) or `fingerprint`")
        return self

    @property
    def selector(self) -> str:
        return self.path if self.path is not None else f"fingerprint {self.fingerprint}"

    def matches(self, finding: Finding) -> bool:
        if finding.rule_id != self.rule:
            return False
        if self.fingerprint is not None:
            return finding.fingerprint == self.fingerprint
        assert self.path is not None
        return _glob_match(finding.path, self.path)


class _WaiverFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    waiver: list[Waiver] = Field(default_factory=list)


@dataclass(frozen=True)
class Waivers:
    active: list[Waiver]
    expired: list[Waiver]
    lines: Mapping[Waiver, int] = field(default_factory=dict)  # the line of each waiver's [[waiver]] header
    refused: list[tuple[Waiver, str]] = field(default_factory=list)  # (waiver, the bound it breaks): never applied
    stale: list[Waiver] = field(default_factory=list)  # a glob that matches no file of the tree

    def match(self, finding: Finding) -> Waiver | None:
        return next((waiver for waiver in self.active if waiver.matches(finding)), None)


def approval_payload(waiver: Waiver) -> bytes:
    """What an approver signs: the DSSE encoding of the canonical JSON of every field but the approval itself, so
    changing the rule, selector, owner, reason or dates voids it."""
    from oracle_base.digests import canonical_json
    from oracle_base.records.governance import pae

    fields = waiver.model_dump(mode="json", exclude={"approval"}, exclude_none=True)
    return pae(APPROVAL_PAYLOAD_TYPE, canonical_json(fields))


def approve(waiver: Waiver, private_key: Ed25519PrivateKey) -> str:
    """The `approval` value for a waiver, signed by a reviewer's key (one of the trust root's waiver-approval keys)."""
    from guards import keys

    keyid, signature = keys.sign(private_key, approval_payload(waiver))
    return f"{keyid}:{signature}"


def bound_waivers(
    waivers: Waivers,
    limits: WaiverLimits,
    tree_files: Callable[[], list[str]],
    approval_keys: Mapping[str, Ed25519PublicKey],
    today: date,
) -> Waivers:
    """The waivers that respect the floor's limits stay active; the others are refused (with the bound they break)
    and globs matching no file are stale. `tree_files` is called only when a path waiver needs counting."""
    from policies import find_rule

    active: list[Waiver] = []
    refused: list[tuple[Waiver, str]] = []
    stale: list[Waiver] = []
    files: list[str] | None = None
    for waiver in waivers.active:
        rule = find_rule(waiver.rule)
        lifetime = (waiver.expires - waiver.created).days
        problem = None
        if rule is not None and not rule.waivable:
            problem = f"{waiver.rule} guards the gate itself and cannot be waived"
        elif waiver.created > today:
            problem = f"created {waiver.created.isoformat()} is in the future"
        elif not 0 <= lifetime <= limits.max_lifetime_days:
            problem = (
                f"lives {lifetime} days (created {waiver.created.isoformat()}, expires {waiver.expires.isoformat()});"
                f" the floor allows at most {limits.max_lifetime_days}"
            )
        elif waiver.path is not None and not _LITERAL.sub("", waiver.path):
            problem = f"path {waiver.path!r} names no file, only wildcards; name the files or use fingerprints"
        elif waiver.rule in limits.critical_rules and not _approved(waiver, approval_keys):
            problem = (
                f"{waiver.rule} is critical: the waiver needs an `approval` signed by a waiver-approval key of the "
                "trust root over its other fields"
                + ("" if waiver.approval is None else " (the one given does not verify)")
            )
        elif waiver.path is not None:
            files = tree_files() if files is None else files
            matched = sum(1 for name in files if _glob_match(name, waiver.path))
            if matched == 0:
                stale.append(waiver)
                continue
            if matched > limits.max_files:
                problem = (
                    f"path {waiver.path!r} matches {matched} files; the floor allows at most {limits.max_files} "
                    "per waiver: name the files or use fingerprints"
                )
        if problem is None:
            active.append(waiver)
        else:
            refused.append((waiver, problem))
    return Waivers(active, waivers.expired, waivers.lines, refused, stale)


# Wildcards and separators: what is left after removing them is the part of a glob that names something.
_LITERAL = re.compile(r"[*?/.]")


def _approved(waiver: Waiver, approval_keys: Mapping[str, Ed25519PublicKey]) -> bool:
    if waiver.approval is None:
        return False
    from guards import keys

    keyid, _, signature = waiver.approval.partition(":")
    return keys.verify(approval_keys, keyid, approval_payload(waiver), signature)


def _glob_match(path: str, pattern: str) -> bool:
    """Globs relative to the root: `*` and `?` stay within one directory, `**` spans directories."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    regex = regex.replace(r"\?", "[^/]")
    return re.fullmatch(regex, path) is not None


def load_waivers(root: Path, *, today: date | None = None) -> Waivers:
    path = root / WAIVERS_FILE
    if not path.exists():
        return Waivers([], [])
    text, raw = read_toml(path)
    try:
        parsed = _WaiverFile.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(
            describe_validation_error(
                path, text, exc, fix="each [[waiver]] needs rule, path or fingerprint, reason, owner, created, expires"
            )
        ) from exc
    today = today or date.today()
    active = [waiver for waiver in parsed.waiver if waiver.expires >= today]
    expired = [waiver for waiver in parsed.waiver if waiver.expires < today]
    lines = {waiver: line_of(text, ("waiver", index)) or 0 for index, waiver in enumerate(parsed.waiver)}
    return Waivers(active, expired, lines)
