"""Reading a small file an attacker may control without trusting what it is: a symbolic link to /dev/zero, a FIFO,
a folder or a sparse file of terabytes must not hang the process or exhaust its memory before anything is checked."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

METADATA_LIMIT = 256 << 20  # configs, indexes, tokenizers, provenance records: far below this


def read_regular_file(path: Path, limit: int = METADATA_LIMIT) -> bytes:
    """The bytes of `path` when it is a regular file of at most `limit` bytes; OSError otherwise (its strerror says
    why: not a regular file, or too large)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer, then is refused
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        size = 0
        want = status.st_size + 1  # the whole file and one byte more in one read, unless it grew since fstat
        while chunk := os.read(fd, min(want, 1 << 20, limit + 1 - size) if chunks else min(want, limit + 1)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)
