"""The hooks of .pre-commit-hooks.yaml, run by the real pre-commit framework the way another repository uses them,
and the environment pre-commit builds for them: the gates only, no torch.

The hook repository is a clone of this repository's committed HEAD with one more commit holding the working tree's
version of what the hook installs (the manifest, pyproject.toml, README.md, the gates lock and the wheel's packages),
because pre-commit only reads hooks from commits. The hooks are `language: python`: pre-commit builds their virtualenv
with `pip install .` of that clone, from the package index pip is configured with. Every run gets its own HOME and git
config; the pre-commit cache (PRE_COMMIT_HOME) is shared by the module so that the hook's environment is built once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from policies.lockfile import declared_input_digest, normalise_name, parse_lock

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ".pre-commit-hooks.yaml"
PYPROJECT = REPO_ROOT / "pyproject.toml"
GATES_LOCK = REPO_ROOT / "requirements-gates.lock"
FULL_LOCK = REPO_ROOT / "requirements.lock"
BIN = Path(sys.executable).parent
PRE_COMMIT = BIN / "pre-commit"
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
GIT += ["-c", "init.defaultBranch=main"]
# What a virtualenv holds before anything is installed into it, and the project itself.
SEEDED = {"pip", "setuptools", "wheel", "oracle"}

# Only the loader call: importing AutoModelForCausalLM is a finding of its own (EXT004, a foreign model class).
FOREIGN = 'model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
OWN_NAMESPACE = '[project]\nname = "demo"\n\n[tool.oracle.external_weights]\nallowed_namespaces = ["oracle-ai"]\n'
OURS = (
    "from transformers import AutoTokenizer\n"
    'tokenizer = AutoTokenizer.from_pretrained("./checkpoints/ours")\n'
    'hub_tokenizer = AutoTokenizer.from_pretrained("oracle-ai/oracle-mini")\n'
)


def _user_pip_config() -> str | None:
    """The caller's own pip configuration file (it may name the package index these machines use): a test's private
    HOME would hide it from pip."""
    if os.environ.get("PIP_CONFIG_FILE"):
        return os.environ["PIP_CONFIG_FILE"]
    home = Path.home()
    config = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    return next((str(path) for path in (config / "pip/pip.conf", home / ".pip/pip.conf") if path.is_file()), None)


def _env(home: Path, pre_commit_home: Path) -> dict[str, str]:
    """The environment without the caller's git state (a test run from inside a git hook sets GIT_DIR and
    GIT_INDEX_FILE), with `pre-commit` first on PATH, a private HOME and the module's pre-commit cache."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["PRE_COMMIT_HOME"] = str(pre_commit_home)
    env["PRE_COMMIT_COLOR"] = "never"
    if (pip_config := _user_pip_config()) is not None:
        env["PIP_CONFIG_FILE"] = pip_config
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = _run([*GIT, *args], cwd, env)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stdout}"
    return done.stdout


def _pre_commit(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert PRE_COMMIT.is_file(), f"pre-commit is not installed next to {sys.executable}"
    return _run([str(PRE_COMMIT), *args], cwd, env)


# These trees are not this project: the generic floor (tests.floors) judges them, without a policies.toml.
pytestmark = pytest.mark.usefixtures("generic_floor")


def _installed_paths() -> list[str]:
    """What `pip install .` of this repository reads: the manifest, the project's metadata and the wheel's packages,
    as the working tree has them (tracked and untracked files that git does not ignore)."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return [MANIFEST, "pyproject.toml", "README.md", GATES_LOCK.name, *packages]


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory, pre_commit_home: Path) -> Path:
    """A clone of this repository's HEAD whose HEAD commit carries the working tree's hook manifest, metadata and
    packages."""
    assert (REPO_ROOT / MANIFEST).is_file(), f"{REPO_ROOT / MANIFEST} is missing"
    base = tmp_path_factory.mktemp("hook-repo")
    env = _env(base / "home", pre_commit_home)
    clone = base / "oracle"
    _git(base, env, "clone", "--quiet", str(REPO_ROOT), str(clone))
    paths = _installed_paths()
    listed = _git(REPO_ROOT, env, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths)
    for path in paths:
        target = clone / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for relative in filter(None, listed.split("\0")):
        source = REPO_ROOT / relative
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (clone / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, clone / relative)
    _git(clone, env, "add", "--all", "--", *paths)
    if _git(clone, env, "status", "--porcelain"):
        _git(clone, env, "commit", "--quiet", "-m", "the hook's files from the working tree")
    return clone


def _project(tmp_path: Path, env: dict[str, str]) -> Path:
    """Another repository, which declares its own Hub namespace (oracle-ai) in its pyproject.toml."""
    project = tmp_path / "project"
    project.mkdir()
    _git(project, env, "init", "--quiet")
    (project / "pyproject.toml").write_text(OWN_NAMESPACE, encoding="utf-8")
    _git(project, env, "add", "pyproject.toml")
    return project


def _configure(project: Path, hook_repo: Path, env: dict[str, str]) -> None:
    rev = _git(hook_repo, env, "rev-parse", "HEAD").strip()
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hook_repo}\n    rev: {rev}\n    hooks:\n      - id: oracle-guards\n", encoding="utf-8"
    )


@pytest.fixture(scope="module")
def hook_env(hook_repo: Path, pre_commit_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtualenv pre-commit builds for the `oracle-guards` hook (`pre-commit install-hooks`)."""
    base = tmp_path_factory.mktemp("hook-env")
    env = _env(base / "home", pre_commit_home)
    project = _project(base, env)
    _configure(project, hook_repo, env)
    built = _pre_commit(project, env, "install-hooks")
    why = "pre-commit could not build the hook's environment (its pip needs a package index)"
    assert built.returncode == 0, f"{why}:\n{built.stdout}"
    found = sorted(path.parent.parent for path in pre_commit_home.glob("repo*/py_env-*/bin/oracle"))
    assert len(found) == 1, f"expected one python environment with `oracle` under {pre_commit_home}, found {found}"
    return found[0]


def _distributions(python: Path) -> dict[str, str]:
    code = "import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: d.version "
    code += "for d in m.distributions()}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return {normalise_name(name): version for name, version in json.loads(done.stdout).items()}


def _lock_requirements(lock: Path) -> dict[str, tuple[str, bool]]:
    """name → (version, whether its marker holds on this platform) of a lock compiled by uv."""
    found: dict[str, tuple[str, bool]] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if match:
            applies = match[3] is None or Marker(match[3]).evaluate()
            found[normalise_name(match[1])] = (match[2], applies)
    return found


def _runtime_names() -> set[str]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return {normalise_name(Requirement(text).name) for text in extras["runtime"]}


@pytest.mark.usefixtures("hook_env")  # built (and looked up) first: try-repo then finds it in the cache
def test_try_repo_blocks_a_foreign_from_pretrained(hook_repo: Path, pre_commit_home: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home", pre_commit_home)
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


@pytest.mark.usefixtures("hook_env")
def test_installed_hook_blocks_the_commit(hook_repo: Path, pre_commit_home: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home", pre_commit_home)
    project = _project(tmp_path, env)
    _configure(project, hook_repo, env)
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


def test_the_hook_environment_holds_the_gates_lock_and_no_torch(hook_env: Path) -> None:
    installed = _distributions(hook_env / "bin" / "python")
    locked = {name: version for name, (version, applies) in _lock_requirements(GATES_LOCK).items() if applies}

    assert "torch" not in installed
    assert not _runtime_names() & set(installed), "the runtime extra leaked into the hook's environment"
    assert {name: installed[name] for name in set(installed) - SEEDED} == locked


def test_a_runtime_command_in_the_hook_environment_says_what_to_install(hook_env: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "PYTHON"))}

    done = subprocess.run(
        [str(hook_env / "bin" / "oracle"), "params"], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "`oracle params` needs the `runtime` extra" in done.stderr
    assert "pip install 'oracle[runtime]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_gate_pins_agree_with_both_locks() -> None:
    """pyproject.toml's dependencies (what pre-commit's `pip install .` installs) pin exactly the versions of
    requirements-gates.lock (hashed, every platform), which are those requirements.lock installs in .venv."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins: dict[str, str] = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1, f"{text!r}: the gates' requirements are pinned with =="
        assert specifiers[0].operator == "==", f"{text!r}: the gates' requirements are pinned with =="
        pins[normalise_name(requirement.name)] = specifiers[0].version
    gates, full = parse_lock(GATES_LOCK.read_text()), parse_lock(FULL_LOCK.read_text())
    markers = _lock_requirements(GATES_LOCK)

    assert not _runtime_names() & set(pins)
    assert gates.stamp == declared_input_digest(PYPROJECT, []), "requirements-gates.lock is stale: run `make lock`"
    assert gates.unpinned == []
    for name, entry in gates.entries.items():
        assert entry.hashes, f"{name} has no hash in {GATES_LOCK.name}"
        if not markers[name][1]:
            continue  # another platform's (colorama on Windows): requirements.lock is compiled for Linux only
        assert pins.get(name) == entry.version, (
            f"{GATES_LOCK.name} locks {name}=={entry.version}, pyproject pins {pins.get(name)}"
        )
        assert full.entries[name].version == entry.version, f"the two locks disagree on {name}"
        assert set(full.entries[name].hashes) == set(entry.hashes), f"{name}: the two locks hash other files"
    assert set(pins) <= set(gates.entries)


def test_the_gates_lock_installs_with_hashes_and_runs_the_gate(hook_repo: Path, tmp_path: Path) -> None:
    """The hash-checked way to the same environment: `pip install --require-hashes -r requirements-gates.lock`, then
    the project without dependencies; its `oracle guards run` refuses a foreign load and passes our own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "PYTHON"))}
    venv = tmp_path / "gates-venv"
    subprocess.run([sys.executable, "-m", "virtualenv", "-q", str(venv)], env=env, check=True)
    python = str(venv / "bin" / "python")
    for arguments in (["--require-hashes", "-r", str(GATES_LOCK)], ["--no-deps", str(hook_repo)]):
        done = _run([python, "-m", "pip", "install", "--quiet", *arguments], tmp_path, env)
        assert done.returncode == 0, done.stdout
    assert "torch" not in _distributions(venv / "bin" / "python")
    home = tmp_path / "home"
    project = _project(tmp_path, _env(home, tmp_path / "unused"))
    gate = [str(venv / "bin" / "oracle"), "guards", "run", "--gate", "commit", "a.py"]

    (project / "a.py").write_text(FOREIGN, encoding="utf-8")
    blocked = _run(gate, project, env)
    (project / "a.py").write_text(OURS, encoding="utf-8")
    passed = _run(gate, project, env)

    assert blocked.returncode == 1, blocked.stdout
    assert "EXT001" in blocked.stdout
    assert passed.returncode == 0, passed.stdout


def _fake_install(monkeypatch: pytest.MonkeyPatch, installed: set[str]) -> None:
    """oracle's metadata declares a base requirement and a runtime one; `installed` are the distributions present."""
    from importlib import metadata

    import oracle_cli.app

    def version(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return "1"

    declared = ["pydantic==2.14.4", 'torch==2.13.0; extra == "runtime"', 'pytest>=8; extra == "dev"']
    monkeypatch.setattr(metadata, "requires", lambda name: declared if name == "oracle" else None)
    monkeypatch.setattr(metadata, "version", version)

    def needs_torch() -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(oracle_cli.app, "main", needs_torch)
    monkeypatch.setattr(sys, "argv", ["oracle", "params", "--config", "oracle850b"])


def test_without_the_runtime_extra_a_command_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oracle_cli.entry import main

    _fake_install(monkeypatch, {"pydantic", "pytest"})

    with pytest.raises(SystemExit) as exit_info:
        main()

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: `oracle params` needs the `runtime` extra (torch is not installed; missing: torch): install it with "
        "`pip install 'oracle[runtime]'`; this install runs only the gates (`oracle guards`, `oracle trust`, "
        "`oracle keys`)"
    ]


def test_with_the_runtime_extra_installed_a_missing_module_is_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oracle_cli.entry import main

    _fake_install(monkeypatch, {"pydantic", "torch"})  # another extra's (dev) absence does not matter
    monkeypatch.delenv("ORACLE_DEBUG", raising=False)

    with pytest.raises(SystemExit) as exit_info:
        main()

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "internal error: ModuleNotFoundError: No module named 'torch' (set ORACLE_DEBUG=1 for the traceback)"
    ]
