"""policies.bytecode: a governed process runs no cache it did not verify, and refuses one that already ran."""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

from policies.bytecode import NO_BYTECODE_PREFIX, forged

SOURCE = "VALUE = 'honest'\n"


def _module(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "pkgmod.py"
    source.write_text(SOURCE)
    cache = Path(importlib.util.cache_from_source(str(source)))
    import py_compile

    py_compile.compile(str(source), cfile=str(cache), doraise=True)
    return source, cache


def _forge(source: Path, cache: Path) -> None:
    """Another code object under the honest header (mtime and size of the source): Python would load it."""
    header = cache.read_bytes()[:16]
    cache.write_bytes(header + marshal.dumps(compile("VALUE = 'forged'\n", str(source), "exec")))


def test_an_honest_cache_passes_and_a_forged_one_is_named(tmp_path: Path) -> None:
    source, cache = _module(tmp_path)
    assert forged(cache, source) is None
    _forge(source, cache)
    assert forged(cache, source) == (
        "bytecode Python would load instead of the source, not compiled from it (planted or forged)"
    )


def test_a_stale_cache_is_inert_and_an_unreadable_source_is_a_reason(tmp_path: Path) -> None:
    source, cache = _module(tmp_path)
    _forge(source, cache)
    source.write_text(SOURCE + "# changed size\n")  # the header no longer matches: Python recompiles
    assert forged(cache, source) is None
    source.unlink()
    assert str(forged(cache, source)).startswith("unreadable bytecode or source")


def _run(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{Path(__file__).resolve().parents[2]}"}
    for name in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False, cwd=tmp_path
    )


def _run_beside_a_forged_cache(tmp_path: Path, script: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`script` run with the importable module pkgmod, whose cache holds other code under an honest header."""
    source, cache = _module(tmp_path)
    _forge(source, cache)
    return cache, _run(tmp_path, script)


def test_after_stopping_a_process_imports_the_source_not_a_forged_cache(tmp_path: Path) -> None:
    _, done = _run_beside_a_forged_cache(
        tmp_path,
        "import os\nfrom policies.bytecode import stop_reading_bytecode\n"
        "env = {}\nprint(stop_reading_bytecode(env))\nimport pkgmod\nprint(pkgmod.VALUE)\nprint(env)\n",
    )
    assert done.returncode == 0, done.stderr
    found, value, env = done.stdout.splitlines()
    assert (found, value) == ("[]", "honest")
    assert NO_BYTECODE_PREFIX in env
    assert "PYTHONDONTWRITEBYTECODE" in env


def test_a_forged_cache_that_already_ran_is_reported(tmp_path: Path) -> None:
    cache, done = _run_beside_a_forged_cache(
        tmp_path,
        "import pkgmod\nfrom policies.bytecode import stop_reading_bytecode\n"
        "print(pkgmod.VALUE)\nprint(stop_reading_bytecode())\n",
    )
    assert done.returncode == 0, done.stderr
    value, found = done.stdout.splitlines()
    assert value == "forged"  # the planted cache ran before the process stopped reading caches
    assert str(cache) in found
    assert "planted or forged" in found


def test_the_process_policy_refuses_a_command_that_already_ran_a_forged_cache(tmp_path: Path) -> None:
    source, cache = _module(tmp_path)
    _forge(source, cache)
    done = _run(
        tmp_path,
        "import pkgmod\nfrom guards.process_policy import install_for_argv\n"
        "install_for_argv(['export', '--checkpoint', 'c', '--out', 'o'])\nprint('not reached')\n",
    )
    assert done.returncode == 1
    assert "not reached" not in done.stdout
    assert f"{cache} ran instead of {source}" in done.stderr
    assert done.stderr.count("\n") == 1
    entries = [json.loads(line) for line in (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert [(e["gate"], e["result"], e["details"]["bytecode"]) for e in entries] == [("runtime", "refused", str(cache))]


def test_a_module_that_is_only_bytecode_is_not_importable_after_stopping_and_is_reported_before(
    tmp_path: Path,
) -> None:
    import py_compile

    (tmp_path / "src.py").write_text("VALUE = 'bare'\n")
    py_compile.compile(str(tmp_path / "src.py"), cfile=str(tmp_path / "bare.pyc"), doraise=True)
    (tmp_path / "src.py").unlink()
    after = _run(
        tmp_path,
        "from policies.bytecode import stop_reading_bytecode\nstop_reading_bytecode()\n"
        "try:\n    import bare\nexcept ModuleNotFoundError:\n    print('not importable')\n",
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout == "not importable\n"
    before = _run(
        tmp_path, "import bare\nfrom policies.bytecode import stop_reading_bytecode\nprint(stop_reading_bytecode())\n"
    )
    assert before.returncode == 0, before.stderr
    assert str(tmp_path / "bare.pyc") in before.stdout
    assert "a module that is only bytecode ran" in before.stdout


def test_a_specialised_instruction_that_compares_equal_is_still_forged(tmp_path: Path) -> None:
    """Code objects' `==` maps specialised instructions back to their plain form: LOAD_FAST__LOAD_FAST where the
    source has LOAD_FAST; LOAD_CONST compares equal, yet loads the caller's argument instead of the constant."""
    import dis

    source = tmp_path / "victim.py"
    source.write_text('def execute(runner, command):\n    return runner("true")\n')
    module = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
    function = next(const for const in module.co_consts if isinstance(const, type(module)))
    raw = bytearray(function._co_code_adaptive)  # type: ignore[attr-defined]
    constant = function.co_consts.index("true")
    for at in range(0, len(raw) - 2, 2):
        if raw[at] == dis.opmap["LOAD_FAST"] and raw[at + 2] == dis.opmap["LOAD_CONST"] and raw[at + 3] == constant:
            raw[at] = dis._all_opmap["LOAD_FAST__LOAD_FAST"]  # type: ignore[attr-defined]
            break
    blob = marshal.dumps(module)
    assert blob.count(function._co_code_adaptive) == 1  # type: ignore[attr-defined]
    forged_blob = blob.replace(function._co_code_adaptive, bytes(raw))  # type: ignore[attr-defined]
    assert marshal.loads(forged_blob) == module  # what the previous check compared
    cache = Path(importlib.util.cache_from_source(str(source)))
    cache.parent.mkdir()
    info = source.stat()
    flags_and_stamp = (0).to_bytes(4, "little") + int(info.st_mtime).to_bytes(4, "little")
    cache.write_bytes(importlib.util.MAGIC_NUMBER + flags_and_stamp + info.st_size.to_bytes(4, "little") + forged_blob)
    assert forged(cache, source) is not None


def test_installed_packages_are_not_the_standard_library() -> None:
    """Inside a venv sysconfig's `platstdlib` is the venv's lib/pythonX.Y, which holds site-packages."""
    import json as stdlib_module
    import sysconfig

    from policies.bytecode import _in_stdlib

    assert _in_stdlib(stdlib_module.__file__)
    assert not _in_stdlib(str(Path(sysconfig.get_paths()["purelib"]) / "torch" / "__init__.py"))
    assert not _in_stdlib(str(Path(sys.base_prefix) / "lib" / "python3.11" / "site-packages" / "m.py"))
