"""Small files an attacker may control (provenance records, configs, indexes) are read only when they are regular
files of bounded size: a link to /dev/zero, a FIFO or a huge file is one clear error, not a hang or an exhausted
memory (red team helper-33, F2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guards.provenance import PROVENANCE_FILE, ProvenanceError, verify_provenance
from oracle_base.bounded_read import read_regular_file


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert read_regular_file(tmp_path / "f", limit=100) == b"x" * 100


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda p: p.symlink_to("/dev/zero"), "not a regular file", id="a link to /dev/zero"),
        pytest.param(lambda p: os.mkfifo(p), "not a regular file", id="a FIFO with no writer"),
        pytest.param(lambda p: p.mkdir(), "not a regular file", id="a folder"),
        pytest.param(lambda p: p.write_bytes(b"x" * 101), "larger than 100 bytes", id="too large"),
    ],
)
def test_anything_else_is_refused_without_reading_it(tmp_path: Path, make: object, reason: str) -> None:
    make(tmp_path / "f")  # type: ignore[operator]
    with pytest.raises(OSError, match=reason):
        read_regular_file(tmp_path / "f", limit=100)


def test_a_provenance_record_that_is_a_device_or_fifo_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / PROVENANCE_FILE).symlink_to("/dev/zero")
    with pytest.raises(ProvenanceError, match=r"is not a provenance envelope.*not a regular file"):
        verify_provenance(tmp_path, tmp_path)
    (tmp_path / PROVENANCE_FILE).unlink()
    os.mkfifo(tmp_path / PROVENANCE_FILE)
    with pytest.raises(ProvenanceError, match="not a regular file"):
        verify_provenance(tmp_path, tmp_path)
