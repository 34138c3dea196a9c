"""requirements.lock and its declared input (pyproject.toml): parsing, and the digest that ties them together.

`make lock` stamps the lock with `# declared-input-sha256: <digest>` of the requirements it was compiled from
(`project.dependencies`, the locked extras and `requires-python`); the venv policy recomputes the digest, so a lock
that is older than its input is found whatever the file times say.

`make lock` calls stamp_lock() after compiling. Reading the lock needs only the standard library, so that
policies/venv_integrity.py can run with nothing of the venv it checks imported.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

STAMP_PREFIX = "# declared-input-sha256: "
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=(sha256):([0-9a-f]{64})")


@dataclass
class LockEntry:
    name: str
    version: str
    line: int
    hashes: list[str] = field(default_factory=list)


@dataclass
class Lock:
    entries: dict[str, LockEntry]  # normalised name → entry
    unpinned: list[tuple[int, str]]  # (line, text) of requirement lines that are not `name==version`
    stamp: str | None


def normalise_name(name: str) -> str:
    """PEP 503 normalisation: `Typing_Extensions` and `typing-extensions` are the same distribution."""
    return "-".join(part for part in name.lower().replace("_", "-").replace(".", "-").split("-") if part)


def parse_lock(text: str) -> Lock:
    entries: dict[str, LockEntry] = {}
    unpinned: list[tuple[int, str]] = []
    stamp = None
    current: LockEntry | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(STAMP_PREFIX):
            stamp = line.removeprefix(STAMP_PREFIX).strip()
            continue
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace() or line.startswith("--hash"):
            if current is not None:
                current.hashes += [digest for _, digest in _HASH.findall(line)]
            continue
        if line.startswith("-"):  # an option line such as --index-url
            current = None
            continue
        match = _REQUIREMENT.match(line)
        if not match:
            unpinned.append((number, line.rstrip("\\ ").strip()))
            current = None
            continue
        current = LockEntry(normalise_name(match[1]), match[3], number, [d for _, d in _HASH.findall(line)])
        entries[current.name] = current
    return Lock(entries, unpinned, stamp)


def declared_requirements(pyproject: Path, extras: list[str]) -> tuple[list[str], str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    return requirements, str(project.get("requires-python", ""))


def declared_input_digest(pyproject: Path, extras: list[str]) -> str:
    requirements, requires_python = declared_requirements(pyproject, extras)
    canonical = json.dumps({"requirements": sorted(requirements), "requires-python": requires_python})
    return hashlib.sha256(canonical.encode()).hexdigest()


def stamp_lock(lock: Path, pyproject: Path, extras: list[str]) -> None:
    """Write the declared-input digest into the lock's header (atomically: temporary file, then rename)."""
    from oracle.atomic_write import write_atomically

    lines = [line for line in lock.read_text(encoding="utf-8").splitlines() if not line.startswith(STAMP_PREFIX)]
    insert_at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    lines.insert(insert_at, STAMP_PREFIX + declared_input_digest(pyproject, extras))
    write_atomically(lock, "\n".join(lines) + "\n")
