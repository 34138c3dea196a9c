import subprocess
from pathlib import Path

import pytest

from guards.runner import run_gate
from policies.context import Environment
from policies.lockfile import declared_input_digest, stamp_lock
from policies.rule import Gate
from tests.policies.conftest import ids, only, write_tree

PYPROJECT = '[project]\nname = "demo"\nrequires-python = ">=3.11"\ndependencies = ["numpy>=2.0", "rich"]\n'
HASH = "--hash=sha256:" + "a" * 64
LOCK = f"numpy==2.4.6 \\\n    {HASH}\nrich==15.0.0 \\\n    {HASH}\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_tree(tmp_path, {"pyproject.toml": PYPROJECT, "requirements.lock": LOCK, "policies/policies.toml": ""})
    stamp_lock(tmp_path / "requirements.lock", tmp_path / "pyproject.toml", ["dev"])
    return tmp_path


def _run(root: Path, prefix: Path | None = None, dists: dict[str, str] | None = None, gate: Gate = Gate.ci) -> object:
    env = Environment(
        prefix or root / ".venv", Path("/usr"), {"numpy": "2.4.6", "rich": "15.0.0"} if dists is None else dists
    )
    return run_gate(root, gate, environment_factory=lambda: env)


def test_the_project_venv_matching_the_lock_passes(project: Path) -> None:
    assert ids(_run(project), "VENV") == []  # type: ignore[arg-type]


def test_running_outside_a_virtualenv_is_found(project: Path) -> None:
    result = _run(project, prefix=Path("/usr"))
    assert ids(result, "VENV") == ["VENV001"]  # type: ignore[arg-type]


def test_running_in_another_virtualenv_is_found(project: Path, tmp_path: Path) -> None:
    result = _run(project, prefix=tmp_path / ".nox" / "tests")
    assert ids(result, "VENV") == ["VENV002"]  # type: ignore[arg-type]


def test_installed_distributions_that_differ_from_the_lock_are_found(project: Path) -> None:
    result = _run(project, dists={"numpy": "2.3.0", "requests": "2.32.0", "pip": "24.0"})
    messages = sorted(f.message for f in only(result, "VENV003"))  # type: ignore[arg-type]
    assert messages == [
        "numpy 2.3.0 is installed, requirements.lock pins 2.4.6",
        "requests 2.32.0 is installed but not in requirements.lock",
        "rich==15.0.0 is locked but not installed",
    ]


def test_lock_entries_without_hashes_or_pins_are_found(project: Path) -> None:
    lock = project / "requirements.lock"
    lock.write_text(lock.read_text() + "typer==0.29.2\nclick>=8\n")
    findings = only(_run(project, dists={"numpy": "2.4.6", "rich": "15.0.0", "typer": "0.29.2"}), "VENV004")  # type: ignore[arg-type]
    assert sorted(f.message for f in findings) == [
        "'click>=8' is not pinned with == and hashes",
        "typer==0.29.2 has no --hash",
    ]


def test_a_lock_older_than_its_declared_input_is_found(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(PYPROJECT.replace('"rich"]', '"rich", "httpx>=0.27"]'))
    messages = [f.message for f in only(_run(project), "VENV005")]  # type: ignore[arg-type]
    assert any("another declared input" in m for m in messages)
    assert any("'httpx>=0.27', which requirements.lock does not pin" in m for m in messages)


def test_a_restamped_lock_that_satisfies_the_input_passes(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    pyproject.write_text(PYPROJECT.replace('"numpy>=2.0"', '"numpy>=2.4"'))
    stamp_lock(project / "requirements.lock", pyproject, ["dev"])
    assert ids(_run(project), "VENV") == []  # type: ignore[arg-type]
    assert (project / "requirements.lock").read_text().count(declared_input_digest(pyproject, ["dev"])) == 1


def test_the_commit_gate_checks_the_lock_only_when_it_is_staged(project: Path) -> None:
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    (project / "requirements.lock").write_text("typer==0.29.2\n")
    (project / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], cwd=project, check=True)
    assert ids(_run(project, gate=Gate.commit), "VENV004") == []  # type: ignore[arg-type]
    subprocess.run([*git, "add", "requirements.lock"], cwd=project, check=True)
    assert ids(_run(project, gate=Gate.commit), "VENV004") == ["VENV004"]  # type: ignore[arg-type]


def test_a_checkout_without_lock_or_settings_has_not_opted_in(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.py": "x = 1\n"})
    assert ids(_run(tmp_path, prefix=Path("/usr")), "VENV") == []  # type: ignore[arg-type]


def test_the_real_environment_is_the_projects_venv() -> None:
    root = Path(__file__).resolve().parents[2]
    assert Environment.current().prefix.resolve() == (root / ".venv").resolve()
