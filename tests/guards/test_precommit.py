"""The hooks of .pre-commit-hooks.yaml, run by the real pre-commit framework the way another repository uses them.

The hook repository is a clone of this repository's committed HEAD (plus the working tree's .pre-commit-hooks.yaml,
committed in the clone when HEAD lacks it or differs), because pre-commit only reads hooks from commits. The hooks
are `language: system`: they run the `oracle` of the environment, here the one next to the running Python. Every run
gets its own HOME and PRE_COMMIT_HOME under tmp_path, so neither the user's git config nor pre-commit's cache leak in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent
PRE_COMMIT = BIN / "pre-commit"
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
GIT += ["-c", "init.defaultBranch=main"]

# Only the loader call: importing AutoModelForCausalLM is a finding of its own (EXT004, a foreign model class).
FOREIGN = 'model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
OURS = (
    "from transformers import AutoTokenizer\n"
    'tokenizer = AutoTokenizer.from_pretrained("./checkpoints/ours")\n'
    'hub_tokenizer = AutoTokenizer.from_pretrained("oracle-ai/oracle-mini")\n'
)


def _env(home: Path) -> dict[str, str]:
    """The environment without the caller's git state (a test run from inside a git hook sets GIT_DIR and
    GIT_INDEX_FILE), with `oracle` and `pre-commit` first on PATH and a private HOME and pre-commit cache."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["PRE_COMMIT_HOME"] = str(home / "pre-commit")
    env["PRE_COMMIT_COLOR"] = "never"
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = _run([*GIT, *args], cwd, env)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stdout}"
    return done.stdout


def _pre_commit(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert PRE_COMMIT.is_file(), f"pre-commit is not installed next to {sys.executable}"
    assert (BIN / "oracle").is_file(), f"the oracle command is not installed next to {sys.executable}"
    return _run([str(PRE_COMMIT), *args], cwd, env)


# These trees are not this project: the generic floor (tests.floors) judges them, without a policies.toml.
pytestmark = pytest.mark.usefixtures("generic_floor")


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of this repository's HEAD whose HEAD commit carries the working tree's hook manifest."""
    manifest = REPO_ROOT / MANIFEST
    assert manifest.is_file(), f"{manifest} is missing"
    base = tmp_path_factory.mktemp("hook-repo")
    env = _env(base / "home")
    clone = base / "oracle"
    _git(base, env, "clone", "--quiet", str(REPO_ROOT), str(clone))
    cloned = clone / MANIFEST
    if not cloned.is_file() or cloned.read_bytes() != manifest.read_bytes():
        shutil.copyfile(manifest, cloned)
        _git(clone, env, "add", MANIFEST)
        _git(clone, env, "commit", "--quiet", "-m", "pre-commit hook manifest from the working tree")
    return clone


def _project(tmp_path: Path, env: dict[str, str]) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    _git(project, env, "init", "--quiet")
    return project


def test_try_repo_blocks_a_foreign_from_pretrained(hook_repo: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    project = _project(tmp_path, env)
    (project / "a.py").write_text(FOREIGN, encoding="utf-8")
    _git(project, env, "add", "a.py")

    blocked = _pre_commit(project, env, "try-repo", str(hook_repo), "oracle-guards", "--files", "a.py")

    assert blocked.returncode != 0, blocked.stdout
    assert "EXT001" in blocked.stdout

    (project / "a.py").write_text(OURS, encoding="utf-8")
    _git(project, env, "add", "a.py")

    passed = _pre_commit(project, env, "try-repo", str(hook_repo), "oracle-guards", "--files", "a.py")

    assert passed.returncode == 0, passed.stdout


def test_installed_hook_blocks_the_commit(hook_repo: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    project = _project(tmp_path, env)
    rev = _git(hook_repo, env, "rev-parse", "HEAD").strip()
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hook_repo}\n    rev: {rev}\n    hooks:\n      - id: oracle-guards\n", encoding="utf-8"
    )
    installed = _pre_commit(project, env, "install")
    assert installed.returncode == 0, installed.stdout
    (project / "a.py").write_text(FOREIGN, encoding="utf-8")
    _git(project, env, "add", ".pre-commit-config.yaml", "a.py")

    blocked = _run([*GIT, "commit", "-m", "x"], project, env)

    assert blocked.returncode != 0, blocked.stdout
    assert "EXT001" in blocked.stdout
    assert _git(project, env, "log", "--all", "--oneline") == ""

    (project / "a.py").write_text(OURS, encoding="utf-8")
    _git(project, env, "add", "a.py")

    committed = _run([*GIT, "commit", "-m", "x"], project, env)

    assert committed.returncode == 0, committed.stdout
    assert len(_git(project, env, "log", "--all", "--oneline").splitlines()) == 1
