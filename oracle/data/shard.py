"""The shard stage: WebDataset tar shards (`KEY.txt` + `KEY.json` per sample) whose real file size never exceeds the
cap. webdataset's own ShardWriter(maxsize=) counts payload only and overshoots (1.2-2.7x measured here), so this
writer computes each shard's real size: ustar headers (512 bytes a member), payload padded to 512-byte blocks, the
1,024-byte end marker and tarfile's padding to 10,240-byte records. Shards are written to a temporary name and
renamed when complete.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from oracle_base.errors import ConfigurationError

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240
DEFAULT_MAX_SHARD_BYTES = 512 * 1024 * 1024


class ShardError(ConfigurationError, ValueError):
    """A sample that cannot fit in any shard under the cap."""


def _member_bytes(payload: int) -> int:
    return BLOCK + -(-payload // BLOCK) * BLOCK


def _closed_size(offset: int) -> int:
    return -(-(offset + 2 * BLOCK) // RECORD) * RECORD


class ShardWriter:
    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_SHARD_BYTES, prefix: str = "shard") -> None:
        if max_bytes < 4 * RECORD:
            raise ShardError(f"--max-shard-bytes {max_bytes} is below the smallest useful shard ({4 * RECORD} bytes)")
        self.directory, self.max_bytes, self.prefix = directory, max_bytes, prefix
        directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self._archive: tarfile.TarFile | None = None
        self._handle: io.BufferedWriter | None = None
        self._tmp: Path | None = None

    def write(self, key: str, text: str, meta: dict[str, object]) -> None:
        members = [(f"{key}.txt", text.encode()), (f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())]
        needed = sum(_member_bytes(len(data)) for _, data in members)
        if _closed_size(needed) > self.max_bytes:
            raise ShardError(f"sample {key} needs {_closed_size(needed)} bytes, more than the cap {self.max_bytes}")
        if self._archive is None or _closed_size(self._offset() + needed) > self.max_bytes:
            self._roll()
        assert self._archive is not None
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._archive.addfile(info, io.BytesIO(data))

    def _offset(self) -> int:
        assert self._handle is not None
        return self._handle.tell()

    def _roll(self) -> None:
        self._finish()
        final = self.directory / f"{self.prefix}-{len(self.paths):06d}.tar"
        self._tmp = final.with_suffix(".tar.tmp")
        self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in _finish
        self._archive = tarfile.open(fileobj=self._handle, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.paths.append(final)

    def _finish(self) -> None:
        if self._archive is None:
            return
        assert self._handle is not None
        assert self._tmp is not None
        self._archive.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        size = self._tmp.stat().st_size
        if size > self.max_bytes:  # the arithmetic above is exact; this guards it
            raise ShardError(f"{self._tmp}: {size} bytes exceed the cap {self.max_bytes}")
        os.replace(self._tmp, self.paths[-1])
        self._archive = self._handle = self._tmp = None

    def close(self) -> list[Path]:
        self._finish()
        return self.paths
