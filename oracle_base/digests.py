"""The one file-hash helper: sha256 of a file's bytes, read in chunks by `hashlib.file_digest` (memory stays flat
for multi-gigabyte weight files), and the canonical byte form of a JSON value that signed records digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's content. Raises OSError when the file cannot be read."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def canonical_json(value: Any) -> bytes:
    """One byte string per value, so digests and signatures do not depend on key order or whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
