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


# --- VENV009-VENV011: files of an opted-in tree that install packages or reach another environment ---------------

OPTED_IN = {"policies/policies.toml": ""}


def _notebook(*cells: str) -> str:
    import json

    return json.dumps({"cells": [{"cell_type": "code", "source": cell} for cell in cells], "nbformat": 4})


@pytest.mark.parametrize(
    ("path", "content", "rule"),
    [
        ("scripts/setup.sh", "#!/bin/sh\nset -e\npip install flash-attn\n", "VENV009"),
        ("scripts/extra", "#!/bin/bash\nsudo -E pip3 install --upgrade peft 2>&1 | tee log\n", "VENV009"),
        ("Makefile", "deps:\n\t@$(PYTHON) -m pip install transformers==4.41\n", "VENV009"),
        ("Dockerfile", "FROM python:3.11\nRUN pip install --no-cache-dir \\\n    vllm \\\n    accelerate\n", "VENV009"),
        (
            ".github/workflows/ci.yml",
            "jobs:\n  t:\n    steps:\n      - run: uv pip install -r requirements.txt\n",
            "VENV009",
        ),
        (".gitlab-ci.yml", "test:\n  script:\n    - uv add peft\n", "VENV009"),
        ("ci/build.yaml", "steps:\n  - run: |\n      conda install -y -c pytorch faiss-cpu\n", "VENV009"),
        ("tools/pipx.sh", "pipx run black .\n", "VENV009"),
        ("tools/mamba.sh", "mamba install -y cudatoolkit\n", "VENV009"),
        (
            ".devcontainer/devcontainer.json",
            '{"postCreateCommand": "pre-commit install && pip install peft"}\n',
            "VENV009",
        ),
        (
            "tox.toml",
            'commands = [\n    [\n        "uv", "pip", "install",\n        "click==8.1.3",\n    ],\n]\n',
            "VENV009",
        ),
        ("nb/setup.ipynb", _notebook("!pip install -q peft\n", "import peft\n"), "VENV009"),
        ("nb/magic.ipynb", _notebook("%pip install bitsandbytes\n"), "VENV009"),
        ("nb/conda.ipynb", _notebook("%conda install -y ffmpeg\n"), "VENV009"),
        ("nb/bash.ipynb", _notebook("%%bash\nset -e\npip install \\\n  trl\n"), "VENV009"),
        (
            "tools/sub.py",
            'import subprocess, sys\nsubprocess.run([sys.executable, "-m", "pip", "install", "peft"])\n',
            "VENV009",
        ),
        ("tools/sys.py", 'import os\nos.system("pip install x")\n', "VENV009"),
        (
            "tools/var.py",
            'import subprocess\ncmd = ["uv", "pip", "install", name]\nsubprocess.check_call(cmd)\n',
            "VENV009",
        ),
        ("noxfile.py", 'def t(session):\n    session.install("pytest")\n', "VENV009"),
        ("tools/path.py", 'import sys\nsys.path.insert(0, "/opt/conda/lib/python3.11/site-packages")\n', "VENV010"),
        (
            "tools/site.py",
            'import site, os\nsite.addsitedir(os.path.expanduser("~/envs/ml/lib/python3.11/site-packages"))\n',
            "VENV010",
        ),
        (
            "tools/prefix.py",
            'import os, sys\nsys.path.append(os.path.join(os.environ["CONDA_PREFIX"], "lib"))\n',
            "VENV010",
        ),
        ("scripts/env.sh", "export PYTHONPATH=/usr/lib/python3/dist-packages:$PYTHONPATH\n", "VENV010"),
        ("extra.pth", "/home/me/.virtualenvs/scratch/lib/python3.11/site-packages\n", "VENV010"),
        (
            "environment.yml",
            "name: ml\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip:\n      - peft\n",
            "VENV011",
        ),
        ("envs/dev.yaml", "dependencies:\n  - numpy=1.26\n  - pytorch\n", "VENV011"),
        (".envrc", "source ~/venvs/scratch/bin/activate\n", "VENV011"),
        (".envrc", "layout python3\n", "VENV011"),
        (".envrc", "use conda ml\n", "VENV011"),
        ("scripts/job.sh", "#!/bin/bash\nconda activate ml\npython train.py\n", "VENV011"),
        ("Dockerfile", "FROM continuumio/miniconda3\nENV PATH=/opt/conda/envs/ml/bin:$PATH\n", "VENV011"),
    ],
)
def test_installs_and_other_environments_in_files_are_found(project: Path, path: str, content: str, rule: str) -> None:
    write_tree(project, {path: content})
    findings = [f for f in _run(project).findings if f.rule_id in {"VENV009", "VENV010", "VENV011"}]  # type: ignore[attr-defined]
    assert [f.rule_id for f in findings] == [rule], findings
    assert findings[0].path == path


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (
            "Makefile",
            "venv:\n\t$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements.lock && \\\n"
            "\t$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .\n",
        ),
        ("scripts/sync.sh", "uv pip sync requirements.lock\n.venv/bin/pip install -e '.[dev]'\n"),
        ("scripts/make-venv.sh", "python3 -m venv .venv\nsource .venv/bin/activate\n"),
        ("README.md", "```\npip install flash-attn\nconda activate ml\n```\n"),
        ("docs/setup.rst", "Run ``pip install -U transformers`` first.\n"),
        ("scripts/fetch.sh", "pip download -d wheels torch\npip hash wheels/*.whl\necho 'then pip install it'\n"),
        ("tools/args.py", "pip_install_args = ['--quiet']\nprint(pip_install_args)\n"),
        ("tools/msg.py", 'raise ImportError("peft is missing: `pip install peft`")\n'),
        ("tools/path.py", "import sys\nfrom pathlib import Path\nsys.path.insert(0, str(Path(__file__).parent))\n"),
        (
            "ci/lint.yaml",
            "# pip install ruff\nsteps:\n  - run: ruff check .\n    description: pip install is not used\n",
        ),
        ("deploy/Chart.yaml", "name: oracle\ndependencies:\n  - name: redis\n    repository: https://charts\n"),
        (".envrc", "source .venv/bin/activate\nexport ORACLE_ENV=dev\n"),
    ],
)
def test_the_lock_the_project_itself_and_prose_are_not_installs(project: Path, path: str, content: str) -> None:
    write_tree(project, {path: content})
    assert [f.rule_id for f in _run(project).findings if f.rule_id in {"VENV009", "VENV010", "VENV011"}] == []  # type: ignore[attr-defined]


def test_another_python_project_that_did_not_opt_in_is_not_judged_by_the_venv_policy(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "pyproject.toml": '[project]\nname = "other"\n',
        ".devcontainer/setup.sh": "pip install -r requirements/dev.txt\npip install -e .\n",
    }
    write_tree(tmp_path, files)
    assert ids(_run(tmp_path), "VENV") == []  # type: ignore[arg-type]


def test_a_bare_folder_of_scripts_is_held_to_the_lock(tmp_path: Path) -> None:
    write_tree(tmp_path, {"scripts/setup.sh": "pip install flash-attn\n"})
    assert ids(_run(tmp_path, prefix=Path("/usr")), "VENV") == ["VENV009"]  # type: ignore[arg-type]


def test_upgrading_pip_itself_is_allowed_but_the_project_name_from_an_index_is_not(project: Path) -> None:
    write_tree(project, {"scripts/a.sh": "python -m pip install --upgrade pip\n", "scripts/b.sh": "pip install demo\n"})
    findings = only(_run(project), "VENV009")  # type: ignore[arg-type]
    assert [f.path for f in findings] == ["scripts/b.sh"]
