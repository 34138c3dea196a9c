"""The one table of secret shapes: tokens and keys by their documented prefixes and lengths.

Two users, one table: the data pipeline masks them in text (oracle.data.pii, `<SECRET>`) and the publish gate
refuses a staged file that holds one (PUB003, hub.stage, over bytes). A shape added here is masked and refused alike.
"""

from __future__ import annotations

import re

# (what it is, the pattern): each pattern carries its own boundaries, so that the shapes can be joined.
SECRET_SHAPES: tuple[tuple[str, str], ...] = (
    ("a Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}"),
    ("an AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("a private key", r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    ("a GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("an OpenAI-style API key", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"),
    ("a Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("a Google API key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("a GitLab token", r"\bglpat-[A-Za-z0-9_-]{20,}"),
    ("a JSON web token", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
)

# Every shape in one alternation, for masking text.
SECRET_TEXT = re.compile("|".join(f"(?:{pattern})" for _, pattern in SECRET_SHAPES))
# Each shape on its own, over bytes, for saying which one a file holds.
SECRET_BYTES: tuple[tuple[str, re.Pattern[bytes]], ...] = tuple(
    (what, re.compile(pattern.encode("ascii"))) for what, pattern in SECRET_SHAPES
)
