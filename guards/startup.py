"""Start-up hazards: files outside HEAD's tree that Python would run in a job whose PYTHONPATH is the checkout.

The gate scans and attests HEAD's tree, but the interpreter also executes what merely lies in the checkout:
`sitecustomize`/`usercustomize` modules (imported by `site` at start-up from anywhere on the path), `.pth` files,
untracked top-level modules and packages (they shadow standard or installed ones, the checkout being first on the
path), and untracked code inside our own packages. `.gitignore`, `.git/info/exclude` and `core.excludesFile` hide
such files from `git status`, so they are found by walking the folder, not by asking git what is untracked.

Bytecode: Python loads `__pycache__/<module>.<tag>.pyc` instead of the source whenever the header matches the source
(its mtime and size, or its hash; an "unchecked" hash-based pyc always), and never checks that the code inside was
compiled from that source. A normal checkout holds such caches after any run, so refusing all of them would refuse
every developer; instead each cache Python would load for a tracked source must hold exactly the code compiled from
that source (code objects compared, so the check does not depend on marshal's byte layout). Stale caches, which
Python recompiles, are harmless and pass; caches for another interpreter cannot be checked and are refused.

Virtual environments inside the checkout (a folder holding `pyvenv.cfg`: `.venv`, nox's) are left to the venv policy,
which checks their files against the installed distributions' RECORDs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from importlib.machinery import all_suffixes
from pathlib import Path, PurePosixPath

from guards import git
from policies.bytecode import forged

START_UP_MODULES = frozenset({"sitecustomize", "usercustomize"})
# The one start-up module this project writes itself: the SLURM job's private sitecustomize (infra/slurm renders this
# text into `.oracle/jobs/<job id>/site/`), which only takes the live checkout off the import path. A running job
# keeps it in the checkout, so a train command started beside the job would otherwise see a hazard; this exact text
# at that place is none (any other byte, or any other place, still is).
JOB_SITE_HOOK = """import os
import sys

live = os.path.realpath(os.environ["ORACLE_LIVE_CHECKOUT"])
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != live]
"""
# .py, .pyc and this interpreter's extension-module suffixes (.so), longest first so "x.abi3.so" is module x
_MODULE_SUFFIXES = tuple(sorted(all_suffixes(), key=len, reverse=True))
_CACHE_DIR = "__pycache__"
_VENV_MARKER = "pyvenv.cfg"
_SHOWN = 5
FIX = (
    "delete them (or move them out of the checkout), or commit what should run; "
    "`git clean -ndx` lists what git does not track"
)


def _module_name(name: str, *, is_folder: bool) -> str | None:
    """The module a file or folder called `name` would be imported as; None when it is not importable."""
    if is_folder:
        return name if name.isidentifier() else None
    suffix = next((suffix for suffix in _MODULE_SUFFIXES if name.endswith(suffix)), None)
    stem = name[: -len(suffix)] if suffix else ""
    return stem if stem.isidentifier() else None


def _holds_modules(folder: Path) -> bool:
    """A folder Python would import as a package: a regular one (`__init__`) or a namespace one holding modules."""
    try:
        return any(_module_name(entry.name, is_folder=False) and entry.is_file() for entry in folder.iterdir())
    except OSError:
        return True  # unreadable: cannot show it is harmless


def _walk(root: Path) -> Iterator[tuple[PurePosixPath, list[str], list[str]]]:
    """(folder relative to root, sub-folders, files) below root, without .git. Symlinks to folders and virtual
    environments (their files are the venv policy's) are listed among the sub-folders but not entered."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        relative = PurePosixPath(Path(folder).relative_to(root).as_posix())
        if relative == PurePosixPath("."):
            dirs[:] = [name for name in dirs if name != ".git"]
        listed = list(dirs)
        dirs[:] = [
            name
            for name in listed
            if not (Path(folder) / name).is_symlink() and not (Path(folder) / name / _VENV_MARKER).is_file()
        ]
        yield relative, listed, files


def _is_job_site_hook(relative: PurePosixPath, path: Path) -> bool:
    """`relative` is a SLURM job's own sitecustomize: `.oracle/jobs/<id>/site/sitecustomize.py`, a regular file
    holding exactly JOB_SITE_HOOK."""
    parts = relative.parts
    if len(parts) != 5 or parts[:2] != (".oracle", "jobs") or parts[3:] != ("site", "sitecustomize.py"):
        return False
    try:
        return not path.is_symlink() and path.is_file() and path.read_bytes() == JOB_SITE_HOOK.encode()
    except OSError:
        return False  # unreadable: cannot show it is the job's own


def _untracked_hazard(relative: PurePosixPath, is_folder: bool, path: Path, packages: frozenset[str]) -> str | None:
    """Why an untracked file or folder would run, or None."""
    module = _module_name(relative.name, is_folder=is_folder)
    if is_folder and module is not None and not _holds_modules(path):
        module = None  # a folder without modules imports nothing
    if module in START_UP_MODULES and not is_folder and _is_job_site_hook(relative, path):
        return None
    if module in START_UP_MODULES:
        return f"`site` imports {module} at every interpreter start-up when its folder is on the path"
    if not is_folder and relative.name.endswith(".pth"):
        return "a .pth file: `site` runs its import lines at start-up"
    if module is None or _CACHE_DIR in relative.parts:
        return None
    if len(relative.parts) == 1:
        return f"untracked top-level module: on the job's PYTHONPATH it shadows any installed `{module}`"
    if relative.parts[0] in packages and not is_folder:
        return f"untracked code inside the package {relative.parts[0]}: an import can load it"
    return None


def _bytecode_hazard(cache: Path, source: Path) -> str | None:
    """Why Python could load `cache` for `source` with other code than the source's, or None."""
    tag = cache.name.split(".")[1]  # <module>.<tag>.pyc or <module>.<tag>.opt-<level>.pyc
    if tag != sys.implementation.cache_tag:
        return f"bytecode for another interpreter ({tag}) that this one cannot check"
    return forged(cache, source)


def _cache_source(relative: PurePosixPath) -> PurePosixPath | None:
    """The source a `__pycache__/<module>.<tag>[.opt-N].pyc` file caches; None for anything else."""
    parts = relative.name.split(".")
    if relative.parent.name != _CACHE_DIR or parts[-1] != "pyc" or len(parts) not in (3, 4):
        return None
    return relative.parent.parent / f"{parts[0]}.py"


def startup_hazards(root: Path) -> list[str]:
    """Files in the checkout that Python would run although HEAD's tree does not hold them, each as "path (why)";
    empty when nothing outside the attested tree can run in a job started from this folder."""
    root = root.resolve()
    tracked = set(git.head_entries(root))
    tracked_folders = {parent.as_posix() for path in tracked for parent in PurePosixPath(path).parents}
    packages = frozenset(path.split("/")[0] for path in tracked if path.count("/") == 1 and "/__init__." in path)
    hazards = []
    for folder, dirs, files in _walk(root):
        for name, is_folder in [(name, True) for name in dirs] + [(name, False) for name in files]:
            relative = PurePosixPath(name) if folder == PurePosixPath(".") else folder / name
            key = relative.as_posix()
            source = _cache_source(relative) if not is_folder else None
            if source is not None and source.as_posix() in tracked:
                why = _bytecode_hazard(root / key, root / source)
            elif key in (tracked_folders if is_folder else tracked):
                continue
            else:
                why = _untracked_hazard(relative, is_folder, root / key, packages)
            if why is not None:
                hazards.append(f"{key} ({why})")
    return sorted(hazards)


def describe(hazards: list[str]) -> str:
    """One line naming the hazards (the first few) and the fix."""
    more = f" and {len(hazards) - _SHOWN} more" if len(hazards) > _SHOWN else ""
    return f"files outside the attested tree would run in the job: {'; '.join(hazards[:_SHOWN])}{more}; {FIX}"
