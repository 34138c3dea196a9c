"""Versioned schemas of the records this project's tools write and read back (one pydantic model per record, shared
by its writer and every reader). A record that does not validate is refused with one line per problem in the
`path:line: key: what is wrong` form of `oracle_base.validation`.

- `oracle_base.records.training`: the packed-data index, the checkpoint manifest, the trainer state.
- `oracle_base.records.governance`: provenance, the attestation envelope (DSSE), audit entries, submission records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oracle_base.errors import ConfigurationError
from oracle_base.validation import describe_validation_error

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # a sha256 as records carry it: 64 lower-case hex digits


class RecordError(ConfigurationError, ValueError):
    """A record file that cannot be read, is not JSON, or does not match its schema."""


class Record(BaseModel):
    """Base of every record: unknown keys are refused, instances are immutable, and `read` names file, line and key.

    Subclasses set `KIND` (what the record is, in messages) and, where the file carries one, a `schema_version`
    field with the versions this code reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[str] = "record"

    @classmethod
    def parse_text(cls, text: str, path: Path | str, *, fix: str = "") -> Self:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{exc.lineno}: not a JSON {cls.KIND}: {exc.msg}") from exc
        return cls.parse_document(document, text, path, fix=fix)

    @classmethod
    def parse_document(cls, document: Any, text: str, path: Path | str, *, fix: str = "") -> Self:
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise RecordError(f"{cls.KIND} {describe_validation_error(path, text, exc, fix=fix)}") from exc

    @classmethod
    def read(cls, path: Path, *, fix: str = "") -> Self:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordError(f"{path}: cannot read the {cls.KIND}: {exc}") from exc
        return cls.parse_text(text, path, fix=fix)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"
