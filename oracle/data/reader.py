"""The one reader of documents: the data pipeline, the tokenizer trainer and decontamination all read through it.

Inputs are local paths, globs (`**` included), directories (every file in a supported format below them), https://
URLs and s3:// URIs. Formats, by name:
- `.jsonl`, `.jsonl.gz`: one JSON object a line, the document in its `text` field (an optional UTF-8 BOM is dropped);
- `.parquet`: the `text` column;
- `.txt`: the whole file is one document;
- `.tar`: a WebDataset shard, one document per `KEY.txt` member (what `oracle data run` writes).

One rule for corrupt records, everywhere: a record that cannot be read (a line that is not UTF-8 or not JSON, a
record without a string `text`, a member that is not UTF-8, a container that is damaged part-way — a truncated
gzip stream, a broken tar or Parquet file) is yielded as a document whose `text` is None and whose `problem` names
the file, the line or member and what is wrong. Readers count and list those; none of them stops on one. Only an
input that cannot be found or fetched at all (or is in no supported format) is an error, `ReaderError`.

Record ids are stable across runs and machines: `URI#LINE` (the 1-based line or row; 1 for a `.txt` file),
`URI#KEY` for a tar member, and `URI#0` for damage that belongs to no single record.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import tarfile
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from oracle_base.errors import ConfigurationError, InternalError

FORMATS = (".jsonl", ".jsonl.gz", ".parquet", ".txt", ".tar")
REMOTE_SCHEMES = ("https://", "http://", "s3://")


class ReaderError(ConfigurationError, ValueError):
    """An input that cannot be found, fetched or recognised at all; the message names it and the fix."""


@dataclass(frozen=True)
class Source:
    uri: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Record:
    """One record of a source: `value` is the parsed JSON object (JSONL, a Parquet row's `text`) or the text (`.txt`,
    a tar member); None with `problem` set when the record cannot be read."""

    record_id: str
    value: object
    problem: str | None = None


@dataclass(frozen=True)
class RawDocument:
    doc_id: str  # see the module docstring: stable across runs
    text: str | None  # None for a corrupt record
    source: str
    problem: str | None = None  # why the record is corrupt


def format_of(name: str) -> str:
    lowered = name.split("?")[0].lower()
    for suffix in FORMATS:
        if lowered.endswith(suffix):
            return suffix
    raise ReaderError(f"{name}: unsupported format; inputs must end in {', '.join(FORMATS)}")


def _supported(path: Path) -> bool:
    return path.name.lower().endswith(FORMATS)


def expand(inputs: Iterable[str | Path]) -> list[str]:
    """Every input file behind `inputs`, in a stable order (each glob and directory sorted); URLs and URIs as given.
    A missing path, a glob that matches nothing or a file in no supported format is a `ReaderError`."""
    uris: list[str] = []
    for entry in inputs:
        item = str(entry)
        if item.startswith(REMOTE_SCHEMES):
            format_of(item)
            uris.append(item)
            continue
        matches = sorted(glob.glob(item, recursive=True)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise ReaderError(f"{item}: the glob matches no file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                uris += sorted(str(p) for p in path.rglob("*") if p.is_file() and _supported(p))
            elif path.is_file():
                format_of(path.name)
                uris.append(str(path))
            else:
                raise ReaderError(f"{item}: no such file or directory")
    return uris


def fetch(uri: str) -> bytes:
    if uri.startswith("s3://"):
        import boto3

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
        data: bytes = body.read()
        return data
    if uri.startswith(("https://", "http://")):
        with urllib.request.urlopen(uri, timeout=60) as response:
            payload: bytes = response.read()
            return payload
    try:
        return Path(uri).read_bytes()
    except OSError as exc:
        raise ReaderError(f"{uri}: cannot read ({exc.strerror}); check the path and its permissions") from exc


def read_records(uri: str) -> tuple[Source, Iterator[Record]]:
    """The source's identity (sha256 and size of the bytes read) and its records, lazily."""
    kind = format_of(uri)
    data = fetch(uri)
    return Source(uri, hashlib.sha256(data).hexdigest(), len(data)), _records(uri, kind, data)


def read_documents(uri: str) -> tuple[Source, Iterator[RawDocument]]:
    """The source's documents: the `text` of each record, or a corrupt document that says why there is none."""
    source, records = read_records(uri)
    return source, (_document(uri, record) for record in records)


def documents(uris: Iterable[str]) -> Iterator[RawDocument]:
    for uri in uris:
        yield from read_documents(uri)[1]


def _document(uri: str, record: Record) -> RawDocument:
    if record.problem is not None:
        return RawDocument(record.record_id, None, uri, record.problem)
    value = record.value
    text = value.get("text") if isinstance(value, dict) else value
    if isinstance(text, str):
        return RawDocument(record.record_id, text, uri)
    where = record.record_id.rpartition("#")
    if isinstance(value, dict):
        problem = f"{where[0]}:{where[2]}: no string field `text` (it is {type(text).__name__})"
    else:
        problem = f"{where[0]}:{where[2]}: a {type(value).__name__}, not an object with a string field `text`"
    return RawDocument(record.record_id, None, uri, problem)


def _records(uri: str, kind: str, data: bytes) -> Iterator[Record]:
    if kind == ".txt":
        try:
            yield Record(f"{uri}#1", data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            yield Record(f"{uri}#1", None, f"{uri}: not UTF-8 ({exc.reason} at byte {exc.start})")
    elif kind == ".parquet":
        yield from _parquet(uri, data)
    elif kind == ".tar":
        yield from _tar(uri, data)
    else:
        yield from _jsonl(uri, _gunzip(uri, data) if kind == ".jsonl.gz" else iter([data]))


class _DamagedError(InternalError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _gunzip(uri: str, data: bytes) -> Iterator[bytes]:
    """The decompressed stream in pieces (members of a multi-member file one after another); damage part-way raises
    `_DamagedError` after every intact piece was yielded."""
    stream = zlib.decompressobj(wbits=31)  # gzip framing
    view, offset, step = memoryview(data), 0, 1 << 20
    try:
        while offset < len(view):
            piece = view[offset : offset + step]
            offset += len(piece)
            yield stream.decompress(piece)
            if stream.eof:
                offset -= len(stream.unused_data)  # the next member starts there
                if not bytes(view[offset:]).strip(b"\0"):
                    return
                stream = zlib.decompressobj(wbits=31)
    except zlib.error as exc:
        raise _DamagedError(f"{uri}: not a readable gzip stream ({exc}); re-download the file") from exc
    if not stream.eof:
        raise _DamagedError(f"{uri}: the gzip stream is truncated; the records before the cut were read")


def _lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for piece in pieces:
        pending += piece
        *complete, pending = pending.split(b"\n")
        yield from complete
    yield pending


def _jsonl(uri: str, pieces: Iterator[bytes]) -> Iterator[Record]:
    number = 0
    try:
        for number, line_bytes in enumerate(_lines(pieces), start=1):
            if number == 1:
                line_bytes = line_bytes.removeprefix(b"\xef\xbb\xbf")
            if not line_bytes.strip():
                continue
            record_id = f"{uri}#{number}"
            try:
                line = line_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(record_id, None, f"{uri}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            try:
                yield Record(record_id, json.loads(line))
            except json.JSONDecodeError as exc:
                yield Record(record_id, None, f"{uri}:{number}: invalid JSON ({exc.msg})")
    except _DamagedError as damage:
        # the partial line before the damage is not read; the damage is one more corrupt record, of its own id
        yield Record(f"{uri}#0", None, damage.problem)


def _parquet(uri: str, data: bytes) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data), columns=["text"])
    except (pa.ArrowException, KeyError, OSError) as exc:
        yield Record(f"{uri}#0", None, f"{uri}: not a Parquet file with a `text` column ({exc})")
        return
    for number, value in enumerate(table.column("text").to_pylist(), start=1):
        if isinstance(value, str):
            yield Record(f"{uri}#{number}", value)
        else:
            yield Record(
                f"{uri}#{number}", None, f"{uri}: row {number}: `text` is {type(value).__name__}, not a string"
            )


def _tar(uri: str, data: bytes) -> Iterator[Record]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if not (member.isfile() and member.name.endswith(".txt")):
                    continue
                key = member.name.removesuffix(".txt")
                extracted = archive.extractfile(member)
                payload = extracted.read() if extracted is not None else b""
                try:
                    yield Record(f"{uri}#{key}", payload.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    problem = f"{uri}: member {member.name}: not UTF-8 ({exc.reason} at byte {exc.start})"
                    yield Record(f"{uri}#{key}", None, problem)
    except (tarfile.TarError, EOFError, OSError) as exc:
        yield Record(f"{uri}#0", None, f"{uri}: not a readable tar shard ({exc}); the members before it were read")
