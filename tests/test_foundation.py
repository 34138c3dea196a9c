"""The repository's own contract: a hashed lock generated from pyproject, torch pinned, nox tied to .venv."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def _lock_entries() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            current = match.group(1).lower()
            entries[current] = [match.group(2)]
        elif current and (hash_match := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current].append(hash_match.group(1))
    return entries


def test_every_locked_requirement_is_pinned_with_a_hash() -> None:
    entries = _lock_entries()
    assert len(entries) > 20
    unhashed = [name for name, values in entries.items() if len(values) < 2]
    assert unhashed == []


def test_torch_is_pinned_to_2_13_0() -> None:
    assert _lock_entries()["torch"][0].split("+")[0] == "2.13.0"
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["runtime"]
    assert "torch==2.13.0" in runtime


def test_the_lock_is_generated_from_pyproject_and_covers_its_dependencies() -> None:
    text = LOCK.read_text()
    assert "uv pip compile pyproject.toml --extra runtime --extra dev --generate-hashes" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["runtime"] + extras["dev"]
    names = {re.split(r"[<>=\[ ;]", requirement)[0].lower() for requirement in declared}
    assert names <= set(_lock_entries())
    assert "flash-attn" not in _lock_entries()  # GPU-only extra, never in the lock


def test_nox_refuses_to_run_outside_the_project_venv(tmp_path: Path) -> None:
    nox = Path(sys.executable).parent / "nox"
    # the same nox, but started by a Python whose prefix is not .venv: simulate with a copied noxfile elsewhere
    noxfile = tmp_path / "noxfile.py"
    noxfile.write_text((ROOT / "noxfile.py").read_text())
    result = subprocess.run(
        [str(nox), "-f", str(noxfile), "-s", "guards"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode != 0
    assert "not the project's virtualenv" in result.stderr


def test_runtime_outputs_are_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    for path in (".venv/", ".nox/", "runs/", ".oracle/", ".mypy_cache/"):
        assert path in ignored
