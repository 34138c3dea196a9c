"""Turning a pydantic ValidationError about a file into one line per problem that names the file, line and key.

Shared by every loader of a file that users edit (model configs, policy settings, waivers), so all of them report
errors the same way: `path:line: key.path: what is wrong`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError


def line_of(text: str, location: tuple[int | str, ...]) -> int | None:
    """Best-effort line of a key path in JSON or TOML text: each string part is looked up after the previous one;
    an integer part selects the n-th `[[table]]` (TOML) of the preceding key."""
    lines = text.splitlines()
    current = 0
    found: int | None = None
    previous_key: str | None = None
    for part in location:
        if isinstance(part, int):
            if previous_key is None:
                continue
            header = re.compile(rf"^\s*\[\[\s*{re.escape(previous_key)}\s*\]\]")
            seen = -1
            for number in range(current, len(lines)):
                if header.match(lines[number]):
                    seen += 1
                    if seen == part:
                        current, found = number, number + 1
                        break
            continue
        key = re.compile(rf'^\s*(\[+\s*)?"?{re.escape(part)}"?\s*(\]+|[:=])')
        for number in range(current, len(lines)):
            if key.search(lines[number]):
                current, found = number, number + 1
                break
        previous_key = part
    return found


def describe_validation_error(path: Path | str, text: str, error: ValidationError, *, fix: str = "") -> str:
    problems = []
    for item in error.errors():
        location = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        key = ".".join(str(part) for part in location)
        if not key:  # a model-level validator: its message starts with the field it is about
            key = message.split(":", 1)[0]
            location = tuple(key.split("."))  # `section.key` names a nested key
            message = message.split(":", 1)[1].strip() if ":" in message else message
        line = line_of(text, location)
        where = f"{path}:{line}" if line else str(path)
        problems.append(f"{where}: {key}: {message}")
    suffix = f" ({fix})" if fix else ""
    return "; ".join(problems) + suffix
