"""The decontaminate stage: drop training documents that share a 13-gram of words with an evaluation item.

Evaluation sets are local files (`--eval-sets DIR`, one file per set, in any format oracle/data/reader.py reads;
every string field of a JSONL item counts). A record that cannot be read is listed, never fatal (the reader's rule).
Words are lowercased `\\w+` runs, so punctuation and case differences do not hide an overlap. A document with any
overlapping 13-gram is dropped whole (reason `contaminated`): removing only the span would leave the surrounding
question or answer text behind. Hits are counted per evaluation set.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from oracle.data.reader import FORMATS, format_of, read_records
from oracle_base.errors import ConfigurationError

N = 13
_WORD = re.compile(r"\w+")


class EvalSetError(ConfigurationError, ValueError):
    """An evaluation set that cannot be read; the message names the file and line."""


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


class Decontaminator:
    def __init__(self, eval_dir: Path | None) -> None:
        self.index: dict[tuple[str, ...], set[str]] = {}
        self.hits: Counter[str] = Counter()
        self.sets: list[str] = []
        self.corrupt: list[str] = []  # records of the evaluation sets that could not be read: listed, not fatal
        if eval_dir is None:
            return
        if not eval_dir.is_dir():
            raise EvalSetError(f"--eval-sets {eval_dir}: not a directory of evaluation-set files")
        files = sorted(path for path in eval_dir.iterdir() if path.is_file() and path.name.lower().endswith(FORMATS))
        for path in files:
            name = path.name[: -len(format_of(path.name))]
            self.sets.append(name)
            for record in read_records(str(path))[1]:
                if record.problem is not None:
                    self.corrupt.append(record.problem)
                    continue
                for text in _strings(record.value):
                    for gram in ngrams(text):
                        self.index.setdefault(gram, set()).add(name)

    def check(self, text: str) -> str | None:
        """None for a clean document, else `contaminated` (and the hit is counted per evaluation set)."""
        if not self.index:
            return None
        matched: set[str] = set()
        for gram in ngrams(text):
            matched |= self.index.get(gram, set())
        for name in matched:
            self.hits[name] += 1
        return "contaminated" if matched else None
