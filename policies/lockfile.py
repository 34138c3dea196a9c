"""requirements.lock and its declared input (pyproject.toml): parsing, and the digest that ties them together.

`make lock` stamps the lock with `# declared-input-sha256: <digest>` of the requirements it was compiled from
(`project.dependencies`, the locked extras and `requires-python`); the venv policy recomputes the digest, so a lock
that is older than its input is found whatever the file times say.

`make lock` calls stamp_lock() after compiling. Reading the lock needs only the standard library, so that
policies/venv_integrity.py can run with nothing of the venv it checks imported.

Two locks, one declared input: `requirements.lock` (torch's CPU build, from the local wheel folder) for machines
without a GPU, CI included, and `requirements-gpu.lock` (torch's CUDA build from PyPI with the `nvidia-*` libraries it
depends on, every other pin equal to the CPU lock's) for machines with an NVIDIA driver. The GPU lock's name follows
the CPU lock's (`venv.lock`, which the policy floor holds equal), so no setting of the tree can name a third lock.
`machine_lock` says which one this machine installs; `python -I -S policies/lockfile.py machine` prints it for the
Makefile, so the build and the venv policy ask the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
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
    from oracle_base.atomic_write import write_atomically

    lines = [line for line in lock.read_text(encoding="utf-8").splitlines() if not line.startswith(STAMP_PREFIX)]
    insert_at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    lines.insert(insert_at, STAMP_PREFIX + declared_input_digest(pyproject, extras))
    write_atomically(lock, "\n".join(lines) + "\n")


# --- which lock a machine installs ----------------------------------------------------------------------------------

ACCELERATOR_ENV = "ORACLE_ACCELERATOR"
ACCELERATORS = ("cpu", "cuda")
# What an NVIDIA driver leaves on a Linux machine: the kernel module's version file, and nvidia-smi on PATH.
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
GPU_SUFFIX = "-gpu"


class AcceleratorError(ValueError):
    """ORACLE_ACCELERATOR names neither cpu nor cuda. A plain ValueError, not of oracle_base.errors: this module runs
    isolated (`python -I -S policies/lockfile.py`, imported by policies/venv_integrity.py run the same way), where
    nothing of the checkout but its own folder can be imported. The venv policy turns it into a finding."""


def gpu_lock_name(lock: str) -> str:
    """The CUDA machines' lock beside `lock`: requirements.lock → requirements-gpu.lock."""
    folder, _, name = lock.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    gpu = f"{stem}{GPU_SUFFIX}.{suffix}" if dot else f"{name}{GPU_SUFFIX}"
    return f"{folder}/{gpu}" if folder else gpu


def lock_names(lock: str) -> dict[str, str]:
    """Accelerator → the lock a machine with it installs: exactly these two."""
    return {"cpu": lock, "cuda": gpu_lock_name(lock)}


def job_lock_name(lock: str, gpus_per_node: int) -> str:
    """The lock a cluster job's environment must be built from: the GPU lock when the job holds GPUs."""
    return lock_names(lock)["cuda" if gpus_per_node > 0 else "cpu"]


@dataclass(frozen=True)
class MachineLock:
    accelerator: str  # "cpu" or "cuda"
    lock: str  # the lock's path relative to the checkout
    why: str  # what decided it, for messages and the gate's report
    overridden: bool  # ORACLE_ACCELERATOR chose against what the machine has


def nvidia_driver(environ: Mapping[str, str]) -> str | None:
    """Where this machine shows an NVIDIA driver (None: it shows none)."""
    if NVIDIA_DRIVER.exists():
        return str(NVIDIA_DRIVER)
    return shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))


def machine_lock(
    lock: str,
    environ: Mapping[str, str] | None = None,
    driver: Callable[[Mapping[str, str]], str | None] | None = None,
) -> MachineLock:
    """The lock this machine installs: the GPU lock where an NVIDIA driver is found (`driver`, nvidia_driver by
    default), the CPU lock elsewhere; ORACLE_ACCELERATOR=cpu|cuda overrides (empty is unset). Raises AcceleratorError
    for another value."""
    environ = os.environ if environ is None else environ
    found = (driver or nvidia_driver)(environ)
    detected = "cuda" if found else "cpu"
    seen = f"an NVIDIA driver ({found})" if found else "no NVIDIA driver"
    chosen = environ.get(ACCELERATOR_ENV, "").strip()
    if chosen and chosen not in ACCELERATORS:
        raise AcceleratorError(f"{ACCELERATOR_ENV}={chosen!r} is neither {' nor '.join(ACCELERATORS)}")
    accelerator = chosen or detected
    why = f"{ACCELERATOR_ENV}={chosen} ({seen} on this machine)" if chosen else f"{seen} on this machine"
    return MachineLock(accelerator, lock_names(lock)[accelerator], why, accelerator != detected)


def pins(text: str, excluded: Sequence[str]) -> list[str]:
    """`name==version` of every entry of a lock but the excluded names: the constraints that keep the GPU lock's
    pins equal to the CPU lock's wherever both install the same distribution."""
    skip = {normalise_name(name) for name in excluded}
    return [f"{e.name}=={e.version}" for e in sorted(parse_lock(text).entries.values(), key=lambda e: e.name)
            if e.name not in skip]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """`machine [--lock L]`: print `<accelerator> <lock>` for this machine (the Makefile's choice); `pins LOCK
    --except NAME...`: print the lock's pins as constraints."""
    import argparse

    parser = argparse.ArgumentParser(description="Which lock this machine installs, and a lock's pins")
    commands = parser.add_subparsers(dest="command", required=True)
    machine = commands.add_parser("machine", help="print `<accelerator> <lock>` for this machine")
    machine.add_argument("--lock", default="requirements.lock", help="the CPU lock (policies.toml venv.lock)")
    listed = commands.add_parser("pins", help="print `name==version` of a lock's entries")
    listed.add_argument("lock", type=Path)
    listed.add_argument("--except", dest="excluded", nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.command == "pins":
        print("\n".join(pins(args.lock.read_text(encoding="utf-8"), args.excluded)))
        return 0
    try:
        chosen = machine_lock(args.lock)
    except AcceleratorError as exc:
        print(f"oracle: {exc}", file=sys.stderr)
        return 2
    print(f"{chosen.accelerator} {chosen.lock}")
    print(f"oracle: this machine installs {chosen.lock}: {chosen.why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
