"""Bytecode a governed process runs: only what it compiled from the sources it checked.

Python runs `__pycache__/m.<tag>.pyc` instead of `m.py` whenever the cache's header matches the source (its mtime
and size, both of which a user sets at will, or a hash it need not check). Package managers write no hash for those
caches into RECORD, so a planted cache runs other code than the verified source. Two defences, one check:

- `forged(cache, source)` says whether Python would load `cache` for `source` and it holds other code than the
  source compiled (the checkout's start-up scan and `venv_integrity.py`'s full scan use it);
- `stop_reading_bytecode()` makes the running process compile every module it imports from now on from its source
  (`sys.pycache_prefix` under a path that cannot exist, the same one the training job exports; a bare `m.pyc` with
  no source is no longer importable at all), and verifies the caches of the modules it had already imported. That
  costs about 3 s of compiling what a gated command imports, where checking every cache of the venv costs about 28 s
  on two cores (bench/venv_bytecode.py), and it leaves no window between the check and the import. The runtime
  layer's commands (guards.process_policy) and the publish and submit gates (policies.context.Environment) call it.

Standard library only: `policies/venv_integrity.py` imports it when it runs isolated (`python -I -S`).
"""

from __future__ import annotations

import _imp
import functools
import importlib.util
import marshal
import os
import sys
import sysconfig
from collections.abc import MutableMapping
from importlib.machinery import EXTENSION_SUFFIXES, SOURCE_SUFFIXES, ExtensionFileLoader, FileFinder, SourceFileLoader
from pathlib import Path
from types import CodeType

# Under /dev/null nothing can be created: Python finds no cache there and cannot write one.
NO_BYTECODE_PREFIX = "/dev/null/oracle-no-bytecode"
_HEADER = 16  # magic, flags, then mtime and size, or the source hash
# (cache, mtime_ns, size) of caches this process has already verified: a module is imported once.
_verified: set[tuple[str, int, int]] = set()


def optimization(cache: Path) -> int:
    """The `-O` level a cache named `<module>.<tag>[.opt-N].pyc` was compiled at."""
    parts = cache.name.split(".")
    return int(parts[2].removeprefix("opt-")) if len(parts) == 4 and parts[2].startswith("opt-") else 0


def forged(cache: Path, source: Path) -> str | None:
    """Why Python would load `cache` for `source` and run other code than the source's; None when it would not load
    it (another header, stale, rejected) or it holds exactly the source compiled. Unreadable files are a reason."""
    try:
        data, source_bytes, stat = cache.read_bytes(), source.read_bytes(), source.stat()
    except OSError as exc:
        return f"unreadable bytecode or source ({exc.strerror})"
    if len(data) < _HEADER or data[:4] != importlib.util.MAGIC_NUMBER:
        return None  # Python rejects the header and compiles the source
    flags = int.from_bytes(data[4:8], "little")
    if flags == 0b01 or (flags == 0b11 and _imp.check_hash_based_pycs == "never"):
        pass  # an unchecked hash-based cache, or checking switched off (`--check-hash-based-pycs never`): loaded
    elif flags == 0:
        mtime, size = int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF
        if data[8:16] != mtime.to_bytes(4, "little") + size.to_bytes(4, "little"):
            return None  # stale: Python compiles the source again
    elif flags == 0b11:
        if data[8:16] != importlib.util.source_hash(source_bytes):
            return None  # a checked hash-based cache of other source: Python compiles the source again
    else:
        return None  # invalid flags: Python rejects the header
    try:
        cached = marshal.loads(data[_HEADER:])
        expected = compile(source_bytes, str(source), "exec", dont_inherit=True, optimize=optimization(cache))
    except (ValueError, EOFError, TypeError, SyntaxError) as exc:
        return f"bytecode Python would load that cannot be checked ({type(exc).__name__})"
    if not _same_code(cached, expected):
        return "bytecode Python would load instead of the source, not compiled from it (planted or forged)"
    return None


def _same_code(cached: object, expected: CodeType) -> bool:
    """Code objects equal field for field, instructions included as they will run: `==` compares the instructions
    with their specialised forms mapped back and their inline caches skipped, so a cache holding a specialised
    instruction that the interpreter runs differently would compare equal to the source."""
    if not isinstance(cached, CodeType) or cached != expected:
        return False
    if getattr(cached, "_co_code_adaptive", cached.co_code) != getattr(expected, "_co_code_adaptive", expected.co_code):
        return False
    return all(
        _same_code(mine, theirs)
        for mine, theirs in zip(cached.co_consts, expected.co_consts, strict=True)
        if isinstance(theirs, CodeType)
    )


def reads_bytecode() -> bool:
    """Whether this process may still import modules from caches beside their sources."""
    return sys.pycache_prefix != NO_BYTECODE_PREFIX


def stop_reading_bytecode(environ: MutableMapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """From now on this process (and, through `environ`, the interpreters it starts) compiles every module it
    imports from its source. Returns (source, cache, why) for each module it had already imported from a cache that
    is not its source compiled: code that has run, which the caller must refuse."""
    sys.pycache_prefix = NO_BYTECODE_PREFIX
    sys.dont_write_bytecode = True
    _import_sources_and_extensions_only()
    if environ is not None:
        environ["PYTHONPYCACHEPREFIX"] = NO_BYTECODE_PREFIX
        environ["PYTHONDONTWRITEBYTECODE"] = "1"
    return imported_from_forged_bytecode()


def describe(source: str, cache: str, why: str) -> str:
    """One line for a cache `imported_from_forged_bytecode` found, with the fix."""
    if not source:
        return f"{cache}: {why}; delete it, or install the source it was compiled from"
    return f"{cache} ran instead of {source}: {why}; delete it"


def _import_sources_and_extensions_only() -> None:
    """The path hook that finds modules in folders, without its loader of bare `.pyc` files (a module that is only
    bytecode): finders made from now on find sources and extension modules (whose files RECORD hashes)."""
    hook = FileFinder.path_hook((ExtensionFileLoader, EXTENSION_SUFFIXES), (SourceFileLoader, SOURCE_SUFFIXES))
    hooks = [item for item in sys.path_hooks if "FileFinder" not in getattr(item, "__qualname__", "")]
    if len(hooks) == len(sys.path_hooks):
        return  # no folder finder (an embedded interpreter): nothing imports bare bytecode either
    sys.path_hooks[:] = [*hooks, hook]
    sys.path_importer_cache.clear()  # the finders made with the old hook go; new ones are made on the next import


@functools.cache
def _stdlib_roots() -> tuple[str, ...]:
    """The base interpreter's standard library folders (computed once: asked for every imported module)."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix, "installed_base": sys.base_prefix,
            "installed_platbase": sys.base_exec_prefix}  # fmt: skip
    paths = sysconfig.get_paths(vars=base)
    return tuple({os.path.realpath(paths[key]) + os.sep for key in ("stdlib", "platstdlib")})


def _in_stdlib(path: str) -> bool:
    """Under the base interpreter's standard library and outside every site-packages (inside a venv sysconfig's
    `platstdlib` is the venv's lib/pythonX.Y, which holds site-packages: not the interpreter's)."""
    real = os.path.realpath(path)
    outside_sites = not {"site-packages", "dist-packages"} & set(Path(real).parts)
    return outside_sites and real.startswith(_stdlib_roots())


def imported_from_forged_bytecode() -> list[tuple[str, str, str]]:
    """(source, cache, why) for each imported module whose cache Python would have loaded and is forged. The base
    interpreter's standard library, source and cache both, belongs to the interpreter, which is trusted as a whole
    (the job requires a root-owned one)."""
    found = []
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        cache, source = getattr(spec, "cached", None), getattr(spec, "origin", None)
        if isinstance(source, str) and source.endswith(".pyc") and not _in_stdlib(source):
            found.append(("", source, "a module that is only bytecode ran: what it does cannot be checked"))
            continue
        if not isinstance(cache, str) or not isinstance(source, str) or not source.endswith(".py"):
            continue  # built-in, frozen, extension or namespace module
        if cache.startswith(NO_BYTECODE_PREFIX) or (_in_stdlib(source) and _in_stdlib(cache)):
            continue
        try:
            stat = os.stat(cache)
        except FileNotFoundError:
            continue  # no cache: it was compiled from its source
        except OSError as exc:
            found.append((source, cache, f"unreadable bytecode ({exc.strerror})"))
            continue
        key = (cache, stat.st_mtime_ns, stat.st_size)
        if key in _verified:
            continue
        why = forged(Path(cache), Path(source))
        if why is None:
            _verified.add(key)
        else:
            found.append((source, cache, why))
    return found
