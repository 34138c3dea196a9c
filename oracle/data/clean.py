"""The clean stage for one document: lossless Unicode normalisation, control-character and whitespace
normalisation, PII redaction, then length and quality filters with documented thresholds.

Normalisation is NFC only: no lowercasing, no accent stripping (Cyrillic, accents and emoji survive unchanged).
Every dropped document gets one reason, so the pipeline can account for each input document.

Thresholds (CleanSettings defaults; Gopher-style heuristics, loosened for code and Russian):
- length: at least 50 characters and 5 words after cleaning, at most 1,000,000 characters;
- letters: at least 40 % of non-space characters are letters or digits (drops symbol soup, base64 blobs);
- words: mean word length between 2 and 15 characters;
- repetition: at most 30 % of non-empty lines are duplicates of other lines in the document.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from oracle.data.pii import redact

# C0/C1 controls except tab and newline, plus zero-width and bidi formatting characters that only hide text.
# Not U+200C/U+200D (zero-width non-joiner and joiner): they build emoji sequences and Persian or Indic words.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_INDENT = re.compile(r"^([ \t]*)(.*)$")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class CleanSettings:
    min_chars: int = 50
    max_chars: int = 1_000_000
    min_words: int = 5
    min_alnum_fraction: float = 0.4
    min_mean_word_length: float = 2.0
    max_mean_word_length: float = 15.0
    max_duplicate_line_fraction: float = 0.3


@dataclass
class Cleaned:
    text: str | None  # None when the document is dropped
    drop_reason: str | None = None
    pii: Counter[str] = field(default_factory=Counter)


def normalise(text: str) -> str:
    """NFC, CRLF/CR → LF, controls removed, runs of spaces inside lines collapsed (indentation kept), trailing spaces
    and extra blank lines removed."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = unicodedata.normalize("NFC", text)  # after removing controls, which could sit between a base and its mark
    lines = []
    for line in text.split("\n"):
        indent, rest = _INDENT.match(line).groups()  # type: ignore[union-attr]
        lines.append((indent + _SPACES.sub(" ", rest)).rstrip())  # indentation is meaning in code: kept
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _quality_problem(text: str, settings: CleanSettings) -> str | None:
    if len(text) < settings.min_chars:
        return "too_short"
    if len(text) > settings.max_chars:
        return "too_long"
    words = text.split()
    if len(words) < settings.min_words:
        return "too_few_words"
    visible = [char for char in text if not char.isspace()]
    if sum(char.isalnum() for char in visible) < settings.min_alnum_fraction * len(visible):
        return "low_alnum_fraction"
    mean_length = sum(len(word) for word in words) / len(words)
    if not settings.min_mean_word_length <= mean_length <= settings.max_mean_word_length:
        return "mean_word_length"
    lines = [line for line in text.split("\n") if line.strip()]
    duplicates = len(lines) - len(set(lines))
    if lines and duplicates > settings.max_duplicate_line_fraction * len(lines):
        return "repeated_lines"
    return None


def clean_document(text: str, settings: CleanSettings | None = None) -> Cleaned:
    settings = settings or CleanSettings()
    if len(text) > 2 * settings.max_chars:  # before any regex work: a huge document costs time, not only space
        return Cleaned(None, "too_long")
    normalised = normalise(text)
    redaction = redact(normalised)
    problem = _quality_problem(redaction.text, settings)
    if problem:
        return Cleaned(None, problem, redaction.counts)
    return Cleaned(redaction.text, None, redaction.counts)
