"""The ingest stage: documents from local paths and globs, https:// URLs and s3:// URIs, in JSONL, JSONL.gz,
Parquet (a `text` column) or plain text, with a manifest entry (sha256, size) for every source.

A line that is not valid JSON, or has no string `text`, is not fatal: it is counted as a `corrupt_record` drop with
its file and line, so the accounting stays exact.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = (".jsonl", ".jsonl.gz", ".parquet", ".txt")


class IngestError(ValueError):
    """An input that cannot be found or read at all; the message names it and the fix."""


@dataclass(frozen=True)
class Source:
    uri: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RawDocument:
    doc_id: str  # source uri + record number: stable across runs
    text: str | None  # None for a corrupt record
    source: str
    problem: str | None = None  # why the record is corrupt


def _format(name: str) -> str:
    lowered = name.lower()
    for suffix in FORMATS:
        if lowered.endswith(suffix):
            return suffix
    raise IngestError(f"{name}: unsupported format; inputs must end in {', '.join(FORMATS)}")


def expand(inputs: list[str]) -> list[str]:
    uris: list[str] = []
    for item in inputs:
        if item.startswith(("https://", "http://", "s3://")):
            uris.append(item)
            continue
        matches = sorted(glob.glob(item, recursive=True)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise IngestError(f"{item}: the glob matches no file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                uris += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(FORMATS))
            elif path.is_file():
                uris.append(str(path))
            else:
                raise IngestError(f"{item}: no such file or directory")
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
        raise IngestError(f"{uri}: cannot read ({exc.strerror})") from exc


def read_source(uri: str) -> tuple[Source, Iterator[RawDocument]]:
    data = fetch(uri)
    source = Source(uri, hashlib.sha256(data).hexdigest(), len(data))
    return source, _records(uri, data)


def _parquet_records(uri: str, data: bytes) -> Iterator[RawDocument]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data), columns=["text"])
    except (pa.ArrowException, KeyError, OSError) as exc:
        raise IngestError(f"{uri}: not a Parquet file with a `text` column ({exc})") from exc
    for number, value in enumerate(table.column("text").to_pylist(), start=1):
        ok = isinstance(value, str)
        problem = None if ok else f"{uri}: row {number}: `text` is {type(value).__name__}, not a string"
        yield RawDocument(f"{uri}#{number}", value if ok else None, uri, problem)


def _records(uri: str, data: bytes) -> Iterator[RawDocument]:
    kind = _format(uri.split("?")[0])
    if kind == ".txt":
        try:
            yield RawDocument(f"{uri}#1", data.decode("utf-8-sig"), uri)
        except UnicodeDecodeError as exc:
            yield RawDocument(f"{uri}#1", None, uri, f"{uri}: not UTF-8 ({exc.reason} at byte {exc.start})")
        return
    if kind == ".parquet":
        yield from _parquet_records(uri, data)
        return
    try:
        raw = gzip.decompress(data) if kind == ".jsonl.gz" else data
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError; a truncated stream raises EOFError
        raise IngestError(f"{uri}: not a readable gzip file ({exc}); re-download or drop it") from exc
    for number, line_bytes in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"{uri}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})"
            yield RawDocument(f"{uri}#{number}", None, uri, problem)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawDocument(f"{uri}#{number}", None, uri, f"{uri}:{number}: invalid JSON ({exc.msg})")
            continue
        text = record.get("text") if isinstance(record, dict) else None
        if isinstance(text, str):
            yield RawDocument(f"{uri}#{number}", text, uri)
        else:
            yield RawDocument(f"{uri}#{number}", None, uri, f"{uri}:{number}: no string field `text`")
