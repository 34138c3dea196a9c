"""The records training writes and reads back, each one schema for its writer and its readers:

- `PackedIndex`: `tokens/index.json` of a packed-data folder (written by oracle.data.format, read by
  oracle.train.data and by the submit check of a job's data, infra.checks);
- `CheckpointManifest`: a checkpoint's `MANIFEST.json`, the size, sha256 and writing rank of every other file
  (oracle.train.checkpoint writes it last; resuming and serving read it);
- `TrainerState`: a checkpoint's `trainer_state.json`, where a resume continues (oracle.train.trainer).

The schema checks what one file can say about itself; what needs other files (sizes on disk, digests of the token
files, the training config a resume runs with) stays with the reader. `format` / `schema_version` name the version;
a manifest or trainer state written before the field existed is version 1.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, Field, JsonValue, Strict, model_validator

from oracle_base.records import Record, Sha256
from oracle_base.weight_files import TRAINER_STATE

Count = Annotated[int, Strict(), Field(ge=0)]
Positive = Annotated[int, Strict(), Field(ge=1)]


def _plain_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name (the file lies in the index's own folder)")
    return name


PlainName = Annotated[str, Strict(), AfterValidator(_plain_name)]
_TOKEN_CAPACITY = {"uint16": 2**16, "uint32": 2**32}


# --- the packed-data index -----------------------------------------------------------------------------------------


class PackedFile(Record):
    name: PlainName
    sequences: Positive
    sha256: Sha256


class PackedIndex(Record):
    """`tokens/index.json`: the token files in order, each `sequences` x `seq_len` ids of `dtype`."""

    KIND: ClassVar[str] = "packed-data index"

    format: Literal["oracle-packed-v1"]
    dtype: Literal["uint16", "uint32"]
    seq_len: Positive
    vocab_size: Positive
    eos_id: Count
    pad_id: Count
    files: Annotated[list[PackedFile], Field(min_length=1)]
    tokens: Count
    padded_tokens: Count
    tokenizer: dict[PlainName, Sha256] | None = None  # file name -> sha256 of the tokenizer kept in tokenizer/

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for key in ("eos_id", "pad_id"):
            if getattr(self, key) >= self.vocab_size:
                raise ValueError(f"{key}: {getattr(self, key)} is outside vocab_size {self.vocab_size}")
        if self.vocab_size > _TOKEN_CAPACITY[self.dtype]:
            raise ValueError(f"dtype: {self.dtype} cannot hold vocab_size {self.vocab_size}")
        names = [entry.name for entry in self.files]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"files: {twice[0]!r} is listed twice")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"


# --- the checkpoint manifest ---------------------------------------------------------------------------------------


class ManifestEntry(Record):
    rank: Count = 0  # the rank that wrote (and hashes) the file
    sha256: Sha256
    size: Count


class CheckpointManifest(Record):
    """`MANIFEST.json`, written last: every other file of the checkpoint folder (relative posix path -> entry)."""

    KIND: ClassVar[str] = "checkpoint manifest"

    # declared in sorted order: the file is written with sorted keys, as before the schema
    files: Annotated[dict[str, ManifestEntry], Field(min_length=1)]
    schema_version: Literal[1] = 1
    world_size: Positive = 1

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name, entry in self.files.items():
            path = PurePosixPath(name)
            if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
                raise ValueError(f"files: {name!r} is not a path inside the checkpoint folder")
            if entry.rank >= self.world_size:
                raise ValueError(f"files: {name!r} names rank {entry.rank}, not a rank of world_size {self.world_size}")
        if TRAINER_STATE not in self.files:
            raise ValueError(f"files: no {TRAINER_STATE} listed")
        return self


# --- the trainer state ---------------------------------------------------------------------------------------------


class DataPosition(Record):
    """Where the data reader is: `consumed` sequences of epoch `epoch`'s global order are already used."""

    KIND: ClassVar[str] = "data position"

    epoch: Count
    consumed: Count


class TrainerState(Record):
    """`trainer_state.json`: what a resume needs besides DeepSpeed's and the RNG's own files."""

    KIND: ClassVar[str] = "trainer state"

    schema_version: Literal[1] = 1
    step: Count
    data_position: DataPosition
    seed: Count
    world_size: Positive
    config_sha256: Sha256  # the training config's (TrainConfig.sha256): a resume must run the same one
    data_manifest_sha256: Sha256  # the packed-data index's bytes: a resume must read the same data
    train_config: dict[str, JsonValue]  # the whole config, for people reading the checkpoint
