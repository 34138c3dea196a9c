"""oracle_base.atomic_write: files are replaced whole; a device or a pipe is written in place, never replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from oracle_base.atomic_write import write_atomically


def test_a_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    write_atomically(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_dev_null_stays_a_device() -> None:
    write_atomically(Path(os.devnull), b"a report nobody keeps")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_pipe_is_written_in_place(tmp_path: Path) -> None:
    pipe = tmp_path / "out.fifo"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()

    def fill(staged: Path) -> None:
        staged.write_text("through a callback")

    write_atomically(pipe, fill)
    reader.join(timeout=10)
    assert received == [b"through a callback"]
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
