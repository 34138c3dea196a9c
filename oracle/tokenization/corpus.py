"""Reading training text for the tokenizer: plain text, JSONL and JSONL.gz files (the `text` field), WebDataset tar
shards (their `.txt` members, as `oracle data run` writes them), and directories of any of these."""

from __future__ import annotations

import gzip
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".tar")


class CorpusError(ValueError):
    """An input that cannot be read as training text; the message names the file (and line) and the fix."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def input_files(inputs: list[Path]) -> list[Path]:
    """Every readable file behind the inputs, in a stable order; a missing input or an empty selection is an error."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and _suffix(p) in TEXT_SUFFIXES)
        elif item.is_file():
            if _suffix(item) not in TEXT_SUFFIXES:
                raise CorpusError(f"{item}: unsupported input; use {', '.join(TEXT_SUFFIXES)} files or a directory")
            files.append(item)
        else:
            raise CorpusError(f"{item}: no such file or directory")
    if not files:
        raise CorpusError(
            f"no training text under {', '.join(map(str, inputs))} (looked for {', '.join(TEXT_SUFFIXES)})"
        )
    return files


def iter_documents(files: list[Path]) -> Iterator[str]:
    for path in files:
        suffix = _suffix(path)
        if suffix == ".txt":
            try:
                yield path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as exc:
                raise CorpusError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
        elif suffix in {".jsonl", ".jsonl.gz"}:
            try:
                raw = gzip.decompress(path.read_bytes()) if suffix == ".jsonl.gz" else path.read_bytes()
                lines = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").split("\n")
            except (OSError, EOFError, UnicodeDecodeError) as exc:
                raise CorpusError(f"{path}: not readable UTF-8 JSONL ({exc})") from exc
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg}); fix or drop the line") from exc
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise CorpusError(f"{path}:{number}: no string field `text`; each line needs one")
                yield text
        else:  # a WebDataset shard
            with tarfile.open(path) as archive:
                for member in archive:
                    if member.isfile() and member.name.endswith(".txt"):
                        extracted = archive.extractfile(member)
                        if extracted is not None:
                            yield extracted.read().decode("utf-8")
