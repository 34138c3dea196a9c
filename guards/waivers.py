"""Waivers: `policies/waivers.toml`, each naming a rule and a path glob or a fingerprint, with a reason, an owner
and an expiry date. An expired waiver stops applying (its findings come back) and is reported; a malformed file is
an error that names the file, line and key.

    [[waiver]]
    rule = "EXT002"
    path = "tests/guards/**"          # or: fingerprint = "<from the report>"
    reason = "fixtures of the rule's own tests"
    owner = "platform@oracle.invalid"
    expires = 2027-06-30
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guards.paths import WAIVERS_FILE
from oracle.validation import describe_validation_error
from policies.rule import Finding
from policies.settings import SettingsError, read_toml


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(pattern=r"^[A-Z]+[0-9]{3}$")
    path: str | None = Field(default=None, min_length=1, description="A glob relative to the root")
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    reason: str = Field(min_length=10, description="Why this is acceptable; a few words at least")
    owner: str = Field(min_length=3)
    expires: date

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

    def match(self, finding: Finding) -> Waiver | None:
        return next((waiver for waiver in self.active if waiver.matches(finding)), None)


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
                path, text, exc, fix="each [[waiver]] needs rule, path or fingerprint, reason, owner and expires"
            )
        ) from exc
    today = today or date.today()
    active = [waiver for waiver in parsed.waiver if waiver.expires >= today]
    expired = [waiver for waiver in parsed.waiver if waiver.expires < today]
    return Waivers(active, expired)
