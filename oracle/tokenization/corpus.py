"""Reading training text for the tokenizer, through the pipeline's one reader (oracle/data/reader.py): plain text,
JSONL and JSONL.gz files (the `text` field), Parquet, WebDataset tar shards (their `.txt` members, as
`oracle data run` writes them), directories of any of these, and the same URLs and URIs the pipeline reads.

A record that cannot be read is counted and listed (`Corpus.corrupt`), never fatal: the reader's one rule."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oracle.data.reader import FORMATS, ReaderError, expand, read_documents
from oracle_base.errors import ConfigurationError


class CorpusError(ConfigurationError, ValueError):
    """An input that cannot be read as training text; the message names the file and the fix."""


def input_files(inputs: list[Path]) -> list[str]:
    """Every input file behind the inputs, in a stable order; a missing input or an empty selection is an error."""
    try:
        files = expand(inputs)
    except ReaderError as exc:
        raise CorpusError(str(exc)) from exc
    if not files:
        raise CorpusError(f"no training text under {', '.join(map(str, inputs))} (looked for {', '.join(FORMATS)})")
    return files


@dataclass
class Corpus:
    files: list[str]
    corrupt: list[str] = field(default_factory=list)  # one line per record that could not be read

    def texts(self) -> Iterator[str]:
        for uri in self.files:
            try:
                documents = read_documents(uri)[1]
            except ReaderError as exc:
                raise CorpusError(str(exc)) from exc
            for document in documents:
                if document.text is None:
                    self.corrupt.append(document.problem or document.doc_id)
                else:
                    yield document.text


def iter_documents(files: list[str]) -> Iterator[str]:
    """The texts of `files`; corrupt records are skipped (use `Corpus` to list them)."""
    return Corpus(files).texts()
