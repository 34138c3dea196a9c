"""Packed token sequences for training: the one format `oracle data run --tokenizer` writes and training reads.

Layout under `DIR/tokens/`:
- `tokens-NNNNNN.bin`: fixed-length sequences of `seq_len` token ids, little-endian unsigned integers of `dtype`
  (`uint16` when the vocabulary fits in 65,536 ids, else `uint32`), back to back, no header;
- `index.json`: `{"format": "oracle-packed-v1", "dtype", "seq_len", "vocab_size", "eos_id", "pad_id",
  "files": [{"name", "sequences", "sha256"}], "tokens", "padded_tokens"}`, and `"tokenizer": {file name: sha256}`
  when the tokenizer that encoded the tokens is kept beside them (the schema: oracle_base.records.training.PackedIndex,
  shared with the reader);
- `tokenizer/`: that tokenizer's files (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`), so
  training can put the tokenizer into every checkpoint (serving needs it, and the provenance covers it).
Documents are concatenated in pipeline order, each followed by `<|endoftext|>`, and cut into sequences of `seq_len`;
the last sequence is padded with `<|pad|>` (counted in `padded_tokens`). A file holds at most `sequences_per_file`
sequences, so data-parallel ranks can take whole files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np

from oracle_base.atomic_write import write_atomically
from oracle_base.errors import ConfigurationError
from oracle_base.records import RecordError
from oracle_base.records.training import PackedFile, PackedIndex

FORMAT: Final = "oracle-packed-v1"
INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"


class PackedFormatError(ConfigurationError, ValueError):
    """A tokens folder that does not match the documented format; the message names the file."""


@dataclass
class PackedWriter:
    directory: Path
    seq_len: int
    vocab_size: int
    eos_id: int
    pad_id: int
    sequences_per_file: int = 4096
    tokenizer_dir: Path | None = None  # copied to tokenizer/ on close and listed in the index
    _buffer: list[int] = field(default_factory=list)
    _pending: list[np.ndarray] = field(default_factory=list)
    _files: list[PackedFile] = field(default_factory=list)
    tokens: int = 0
    padded_tokens: int = 0

    prefix: str = "tokens"  # file names: PREFIX-NNNNNN.bin

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def add(self, ids: list[int]) -> None:
        self._buffer.extend(ids)
        self._buffer.append(self.eos_id)
        self.tokens += len(ids) + 1
        while len(self._buffer) >= self.seq_len:
            self._pending.append(np.asarray(self._buffer[: self.seq_len], dtype=self.dtype))
            del self._buffer[: self.seq_len]
            if len(self._pending) == self.sequences_per_file:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = np.stack(self._pending).tobytes()
        name = f"{self.prefix}-{len(self._files):06d}.bin"
        write_atomically(self.directory / name, data)
        self._files.append(PackedFile(name=name, sequences=len(self._pending), sha256=hashlib.sha256(data).hexdigest()))
        self._pending = []

    def finish(self) -> list[PackedFile]:
        """Pad and write the last sequence; the files written, for an index (`close`, or `write_index` over the
        files of several writers)."""
        if self._buffer:
            self.padded_tokens = self.seq_len - len(self._buffer)
            self._pending.append(np.asarray(self._buffer + [self.pad_id] * self.padded_tokens, dtype=self.dtype))
            self._buffer = []
        self._flush()
        return self._files

    def close(self) -> Path:
        files = self.finish()
        return write_index(
            self.directory,
            seq_len=self.seq_len,
            vocab_size=self.vocab_size,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            files=files,
            tokens=self.tokens,
            padded_tokens=self.padded_tokens,
            tokenizer_dir=self.tokenizer_dir,
        )


def token_dtype_name(vocab_size: int) -> Literal["uint16", "uint32"]:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(token_dtype_name(vocab_size)).newbyteorder("<")


def write_index(
    directory: Path,
    *,
    seq_len: int,
    vocab_size: int,
    eos_id: int,
    pad_id: int,
    files: list[PackedFile],
    tokens: int,
    padded_tokens: int,
    tokenizer_dir: Path | None,
) -> Path:
    """`index.json` over `files` (already in `directory`), with a copy of the tokenizer when one is given."""
    digests = None
    if tokenizer_dir is not None:
        from oracle.tokenization.tokenizer import TOKENIZER_FILES

        digests = {}
        for name in TOKENIZER_FILES:
            data = (tokenizer_dir / name).read_bytes()
            write_atomically(directory / TOKENIZER_DIR / name, data)
            digests[name] = hashlib.sha256(data).hexdigest()
    index = PackedIndex(
        format=FORMAT,
        dtype=token_dtype_name(vocab_size),
        seq_len=seq_len,
        vocab_size=vocab_size,
        eos_id=eos_id,
        pad_id=pad_id,
        files=files,
        tokens=tokens,
        padded_tokens=padded_tokens,
        tokenizer=digests,
    )
    return write_atomically(directory / INDEX_FILE, index.to_json())


def parse_index(data: bytes, path: Path) -> PackedIndex:
    """The index in `data` (the bytes of `path`), validated by its schema; PackedFormatError names file, line, key."""
    try:
        return PackedIndex.parse_text(data.decode("utf-8"), path)
    except UnicodeDecodeError as exc:
        raise PackedFormatError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except RecordError as exc:
        raise PackedFormatError(str(exc)) from exc


def read_index(directory: Path) -> PackedIndex:
    path = directory / INDEX_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackedFormatError(f"{path}: cannot read the index ({exc.strerror})") from exc
    return parse_index(data, path)


def read_sequences(directory: Path, file_name: str | None = None) -> Iterator[np.ndarray]:
    """Every sequence (shape `(seq_len,)`) of one file, or of all files in order; sizes and digests are checked."""
    index = read_index(directory)
    dtype = np.dtype(index.dtype).newbyteorder("<")
    for entry in index.files:
        if file_name is not None and entry.name != file_name:
            continue
        path = directory / entry.name
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise PackedFormatError(f"{path}: sha256 differs from {INDEX_FILE}; the file was altered or truncated")
        array = np.frombuffer(data, dtype=dtype).reshape(entry.sequences, index.seq_len)
        yield from array
