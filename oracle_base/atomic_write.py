"""Writing a file so that readers see the old content or the new, never half of it: a temporary file in the same
directory, flushed and fsynced, then renamed over the target (and the rename made durable). Every record,
checkpoint, shard, report and audit head is written this way."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def _mode_for(path: Path) -> int:
    # mkstemp creates 0600; the result should get the mode the file had, or what a plain open() would give it.
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomically(path: Path, content: bytes | str | Callable[[Path], None]) -> Path:
    """Write bytes, text (UTF-8) or, through a callback that writes the given temporary path, anything else. A target
    that is a device or a pipe (`--output /dev/null`, `/dev/stdout`) is written in place: renaming a file over it
    would replace the device itself (as root, /dev/null would become a regular file for every process)."""
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path)
    except FileNotFoundError:
        special = False
    if special:
        if callable(content):
            with tempfile.TemporaryDirectory() as scratch:
                staged = Path(scratch) / path.name
                content(staged)
                data = staged.read_bytes()
        else:
            data = content.encode() if isinstance(content, str) else content
        with open(path, "wb") as handle:
            handle.write(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if not callable(content):
                handle.write(content.encode() if isinstance(content, str) else content)
        if callable(content):
            content(Path(tmp_name))
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _mode_for(path))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
    return path
