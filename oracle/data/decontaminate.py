"""The decontaminate stage: drop training documents that share a 13-gram of words with an evaluation item.

Evaluation sets are local JSONL files (`--eval-sets DIR`, one file per set, every string field of an item counts).
Words are lowercased `\\w+` runs, so punctuation and case differences do not hide an overlap. A document with any
overlapping 13-gram is dropped whole (reason `contaminated`): removing only the span would leave the surrounding
question or answer text behind. Hits are counted per evaluation set.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

N = 13
_WORD = re.compile(r"\w+")


class EvalSetError(ValueError):
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
        if eval_dir is None:
            return
        if not eval_dir.is_dir():
            raise EvalSetError(f"--eval-sets {eval_dir}: not a directory of JSONL files")
        for path in sorted(eval_dir.glob("*.jsonl")):
            name = path.stem
            self.sets.append(name)
            try:
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as exc:
                raise EvalSetError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
            for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may be in a string
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalSetError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
                for text in _strings(item):
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
