"""Issue 14, attack 8: the venv check compared names and versions only. Each attack is made on a real virtualenv
(`python -m venv`, a tiny wheel built here and installed by pip, no network) and shown refused; the untouched venv
passes."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from guards.runner import run_gate
from policies.context import Environment
from policies.rule import Gate
from policies.venv_integrity import verify_venv

MODULE = "def greet() -> str:\n    return 'hello'\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _build_wheel(folder: Path) -> Path:
    files = {
        "tinypkg/__init__.py": MODULE.encode(),
        "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    wheel = folder / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("tinypkg-1.0.dist-info/RECORD", record + "tinypkg-1.0.dist-info/RECORD,,\n")
    return wheel


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A venv with tinypkg installed by pip (bytecode compiled as pip does), and the lock line that pins it."""
    folder = tmp_path_factory.mktemp("template")
    wheel = _build_wheel(folder)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    subprocess.run([*pip, "--no-index", "--no-deps", str(wheel)], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return venv, f"tinypkg==1.0 \\\n    --hash=sha256:{digest}\n"


@pytest.fixture
def checkout(tmp_path: Path, template: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout holding requirements.lock and its own copy of the template venv as .venv."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    venv, lock = template
    shutil.copytree(venv, tmp_path / ".venv", symlinks=True)
    (tmp_path / "requirements.lock").write_text(lock, encoding="utf-8")
    return tmp_path


def _verify(checkout: Path) -> list[str]:
    return verify_venv(checkout / ".venv", checkout / "requirements.lock", checkout)


def _package(checkout: Path) -> Path:
    return next((checkout / ".venv" / "lib").glob("python*/site-packages/tinypkg"))


def test_the_legitimate_venv_passes(checkout: Path) -> None:
    assert _verify(checkout) == []


def test_an_edited_file_inside_an_installed_package_is_refused_naming_the_file(checkout: Path) -> None:
    source = _package(checkout) / "__init__.py"
    source.write_text(MODULE.replace("'hello'", "'pwned'"), encoding="utf-8")  # the same size
    problems = _verify(checkout)
    assert "tinypkg/__init__.py was changed after tinypkg 1.0 installed it" in problems[0]
    assert all("tinypkg/" in problem for problem in problems)  # its cache may be named too: it no longer matches


def test_a_pth_pulling_a_package_folder_from_outside_the_venv_is_refused(checkout: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "tinypkg").mkdir(parents=True)
    (elsewhere / "tinypkg" / "__init__.py").write_text("def greet() -> str:\n    return 'other'\n")
    (_package(checkout).parent / "zz_extra.pth").write_text(f"{elsewhere}\n")
    problems = _verify(checkout)
    assert any(f"zz_extra.pth:1 puts {elsewhere.resolve()} on the import path, outside the venv" in p for p in problems)


def test_a_forged_lock_stamp_does_not_make_a_mismatching_venv_pass(checkout: Path) -> None:
    lock = checkout / "requirements.lock"
    lock.write_text(lock.read_text().replace("tinypkg==1.0", "tinypkg==2.0"), encoding="utf-8")
    # the Makefile's stamp, written by hand with the lock's digest: "built from this lock"
    (checkout / ".venv" / ".requirements.lock.sha256").write_text(hashlib.sha256(lock.read_bytes()).hexdigest())
    assert _verify(checkout) == ["tinypkg 1.0 is installed, requirements.lock pins 2.0"]


def test_pythonpath_into_another_environments_site_packages_is_refused(
    checkout: Path, template: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other_site = next((template[0] / "lib").glob("python*/site-packages"))
    monkeypatch.setenv("PYTHONPATH", str(other_site))
    problems = _verify(checkout)
    assert problems == [
        f"{other_site.resolve()} is on the import path (sys.path or PYTHONPATH), outside the venv "
        f"{(checkout / '.venv').resolve()}, the standard library and the checkout; unset PYTHONPATH or run from the "
        "checkout"
    ]


def test_an_unrecorded_sitecustomize_is_refused(checkout: Path) -> None:
    (_package(checkout).parent / "sitecustomize.py").write_text("import os\n")
    assert any("sitecustomize.py is importable code that no installed distribution" in p for p in _verify(checkout))


def test_a_planted_bytecode_cache_that_python_would_load_is_refused(checkout: Path) -> None:
    source = _package(checkout) / "__init__.py"
    cache = Path(importlib.util.cache_from_source(str(source)))
    assert cache.exists()  # pip compiled it at install
    planted = compile(MODULE.replace("'hello'", "'pwned'"), str(source), "exec")
    header = cache.read_bytes()[:16]  # keeps the source's mtime and size: Python would load it
    cache.write_bytes(header + __import__("marshal").dumps(planted))
    assert any("__init__.cpython" in p and "is not __init__.py compiled" in p for p in _verify(checkout))


def test_a_file_added_to_record_without_a_hash_is_still_refused(checkout: Path) -> None:
    site = _package(checkout).parent
    (site / "tinypkg" / "extra.py").write_text("import os\n")
    record = site / "tinypkg-1.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "tinypkg/extra.py,,\n")
    assert any("tinypkg/extra.py is importable code" in p for p in _verify(checkout))


def test_the_venv_policy_reports_integrity_as_environment_findings(checkout: Path) -> None:
    (checkout / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = []\n')
    source = _package(checkout) / "__init__.py"
    source.write_text(source.read_text() + "# edited\n")
    env = Environment(checkout / ".venv", Path(sys.base_prefix), {"tinypkg": "1.0"}, import_path=[])
    result = run_gate(checkout, Gate.ci, environment_factory=lambda: env)
    found = [f for f in result.findings if f.rule_id == "VENV006"]
    assert len(found) == 1
    assert (found[0].path, found[0].line) == ("", 0)  # about the environment: no waiver path matches it
    assert "tinypkg/__init__.py was changed after tinypkg 1.0 installed it" in found[0].message


def test_the_isolated_command_line_refuses_with_one_line_per_problem(checkout: Path) -> None:
    source = _package(checkout) / "__init__.py"
    source.write_text(source.read_text() + "# edited\n")
    script = Path(__file__).resolve().parents[2] / "policies" / "venv_integrity.py"
    arguments = ["--prefix", str(checkout / ".venv"), "--lock", str(checkout / "requirements.lock")]
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(script), *arguments, "--checkout", str(checkout)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "tinypkg/__init__.py was changed" in done.stderr
