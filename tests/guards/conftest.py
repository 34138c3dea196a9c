"""Fixtures of the guards tests."""

from pathlib import Path

import pytest

from tests.floors import generic_floor_env


@pytest.fixture
def generic_floor(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ORACLE_TRUST_ROOT names a trust root with the generic floor, for small trees that are not this project."""
    directory = tmp_path_factory.mktemp("floor")
    for key, value in generic_floor_env(directory).items():
        monkeypatch.setenv(key, value)
    return directory
