"""What a policy check sees: the root, the gate, the settings, the files selected for this gate, the running
environment, and shared, cached ways to read files and to find candidate lines with one ripgrep pass."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path

from policies.lockfile import normalise_name as normalise_name  # its home is the stdlib-only lockfile
from policies.rule import Gate
from policies.settings import Settings
from policies.venv_integrity import Problem, check_installation

# When more files than this are selected, ripgrep walks the root itself (respecting .gitignore) and its matches are
# filtered to the selection, instead of receiving every path on its command line.
_RG_ARGV_LIMIT = 2000


class ScanError(RuntimeError):
    """A check could not run (missing tool, unexpected failure): an error of the run, never a pass."""


class Environment:
    """The Python environment the gate runs in (the venv policy's subject); tests build their own. The installed
    distributions are read only when a rule asks for them (the commit gate never does).

    `import_path` is the interpreter's sys.path; its files (RECORD hashes, `.pth` files, the path itself) are checked
    by `installation_problems`. An environment a test describes by its distributions alone, with no import path, has
    no files to check."""

    def __init__(
        self,
        prefix: Path,
        base_prefix: Path,
        distributions: dict[str, str] | None = None,
        import_path: list[str] | None = None,
    ) -> None:
        self.prefix, self.base_prefix = prefix, base_prefix
        self._distributions = distributions
        self.import_path = import_path

    @classmethod
    def current(cls) -> Environment:
        return cls(Path(sys.prefix), Path(sys.base_prefix), import_path=list(sys.path))

    def installation_problems(
        self,
        checkout: Path,
        locked: dict[str, tuple[str, int]],
        allow_unlocked: list[str],
        lock_name: str,
        check_bytecode: bool = True,
    ) -> list[Problem]:
        """What policies/venv_integrity.py finds in this environment's files (nothing for a described one)."""
        if self.import_path is None and self._distributions is not None:
            return []
        return check_installation(
            self.prefix, checkout, locked, allow_unlocked, self.import_path or [], check_bytecode, lock_name
        )

    @property
    def distributions(self) -> dict[str, str]:
        """Normalised name → version of what is installed."""
        if self._distributions is None:
            self._distributions = _installed_distributions()
        return self._distributions


def _installed_distributions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        # The dist-info folder's name carries name and version (PEP 427): no need to parse every METADATA file.
        folder = getattr(dist, "_path", None)
        stem = folder.name.removesuffix(".dist-info") if isinstance(folder, Path) else ""
        name, _, version = stem.partition("-")
        if not (name and version) or folder is None or not folder.name.endswith(".dist-info"):
            name, version = dist.metadata["Name"] or "", dist.version
        if name:
            found.setdefault(normalise_name(name), version)
    return found


@dataclass(frozen=True)
class NotebookCode:
    """A notebook's code cells as one Python program: magics and shell escapes blanked (kept apart in `magics`),
    and for every program line the (cell number, line in cell) it came from."""

    source: str
    where: list[tuple[int, int]]
    magics: list[tuple[int, int, str]]  # (cell, line in cell, text) of `%...` and `!...` lines


@dataclass(frozen=True)
class PythonProgram:
    source: str
    tree: ast.Module | None  # None when it does not parse
    cells: Sequence[tuple[int, int]] = ()  # for a notebook: program line → (cell number, line in cell)
    magics: Sequence[tuple[int, int, str]] = ()


def _parse(source: str, filename: str) -> ast.Module | None:
    try:
        return ast.parse(source, filename=filename)
    except (SyntaxError, ValueError):
        return None


def notebook_code(text: str) -> NotebookCode | None:
    """None when the text is not a notebook (not JSON, or no cell list)."""
    import json

    try:
        cells = json.loads(text).get("cells", [])
    except (ValueError, AttributeError):
        return None
    where: list[tuple[int, int]] = []
    lines: list[str] = []
    magics: list[tuple[int, int, str]] = []
    for number, cell in enumerate(cells if isinstance(cells, list) else [], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        raw = cell.get("source", "")
        for index, line in enumerate(("".join(raw) if isinstance(raw, list) else str(raw)).split("\n"), start=1):
            if line.lstrip().startswith(("%", "!")):
                magics.append((number, index, line))
                line = ""
            lines.append(line)
            where.append((number, index))
    return NotebookCode("\n".join(lines), where, magics)


@dataclass
class Line:
    number: int
    column: int
    text: str


@dataclass
class ScanContext:
    root: Path
    gate: Gate
    settings: Settings
    files: list[str]  # relative posix paths of regular files inside root selected for this gate
    environment_factory: object = Environment.current
    # Whether a weights file (relative path) is one of our own provenance-signed checkpoints; set by the guards.
    verify_provenance: Callable[[str], bool] | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # known file sizes (the selection already stat-ed them)
    _text: dict[str, str | None] = field(default_factory=dict, repr=False)

    @cached_property
    def environment(self) -> Environment:
        factory = self.environment_factory
        assert callable(factory)
        result = factory()
        assert isinstance(result, Environment)
        return result

    def path(self, relative: str) -> Path:
        return self.root / relative

    def size(self, relative: str) -> int:
        if relative not in self.sizes:
            self.sizes[relative] = os.stat(os.path.join(self._root_str, relative)).st_size
        return self.sizes[relative]

    def head(self, relative: str, n_bytes: int = 64) -> bytes:
        # os-level calls: this runs once per file of the tree, where pathlib's overhead shows
        fd = os.open(os.path.join(self._root_str, relative), os.O_RDONLY)
        try:
            return os.read(fd, n_bytes)
        finally:
            os.close(fd)

    @cached_property
    def _root_str(self) -> str:
        return str(self.root)

    def text(self, relative: str) -> str | None:
        """The file as text, or None for binary (NUL bytes) and files over the size limit."""
        if relative not in self._text:
            too_big = self.size(relative) > self.settings.scan.max_file_bytes
            data = None if too_big else self.path(relative).read_bytes()
            self._text[relative] = None if data is None or b"\0" in data[:8192] else data.decode("utf-8", "replace")
        return self._text[relative]

    def python_program(self, relative: str) -> PythonProgram | None:
        """A Python file, or a notebook's code cells as one program; None for a notebook that is not valid JSON."""
        if relative.endswith(".ipynb"):
            code = notebook_code(self.text(relative) or "")
            if code is None:
                return None
            return PythonProgram(code.source, _parse(code.source, relative), code.where, code.magics)
        return PythonProgram(self.text(relative) or "", self.python_ast(relative))

    def python_ast(self, relative: str) -> ast.Module | None:
        """Parsed Python source, or None when it does not parse (reported by the caller as skipped). Not cached:
        a thousand kept trees cost more in memory and garbage collection than the rare second parse."""
        source = self.text(relative)
        return None if source is None else _parse(source, relative)

    def prefetch(self, patterns: Iterable[str], job: RipgrepJob | None = None) -> None:
        """The one ripgrep pass for every policy's patterns (a job the runner may have started before selecting
        files, so the walk runs while Python works); grep() then filters its result."""
        patterns = list(dict.fromkeys(patterns))
        if job is None:
            job = RipgrepJob(self.root, patterns, self.settings.scan.max_file_bytes, self.files)
        self._prefetched = (frozenset(patterns), job)

    def grep(self, patterns: Iterable[str], files: Iterable[str] | None = None) -> dict[str, list[Line]]:
        """Lines matching any of the (Rust-regex, no look-around) patterns, by file, over the selection (or the given
        subset of it). Binary files are left out by ripgrep itself."""
        patterns = list(patterns)
        prefetched = getattr(self, "_prefetched", None)
        if prefetched is not None and files is None and set(patterns) <= prefetched[0]:
            wanted_lines = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
            found: dict[str, list[Line]] = {}
            for path, lines in prefetched[1].lines(set(self.files)).items():
                kept = [line for line in lines if wanted_lines.search(line.text)]
                if kept:
                    found[path] = kept
            return found
        subset = sorted(set(self.files if files is None else files))
        return RipgrepJob(self.root, patterns, self.settings.scan.max_file_bytes, subset).lines(set(subset))


class RipgrepJob:
    """One ripgrep pass, started at once and collected when first needed. With `files=None` ripgrep walks the root
    itself (respecting .gitignore; `also` adds files it would skip, such as tracked files that match .gitignore);
    otherwise it reads exactly the files given (or, past a few thousand, walks and the result is filtered)."""

    def __init__(
        self, root: Path, patterns: list[str], max_filesize: int, files: list[str] | None, also: Sequence[str] = ()
    ) -> None:
        args = [_ripgrep(), "--no-config", "--hidden", "--no-heading", "--with-filename", "--line-number"]
        args += ["--column", "--null", "--no-messages", "--color", "never", "--max-filesize", str(max_filesize)]
        for pattern in patterns:
            args += ["-e", pattern]
        walk = files is None or len(files) > _RG_ARGV_LIMIT
        # Only git's ignore rules may hide a file (they decide what is tracked); a committed .ignore/.rgignore must not.
        only_git = ["--no-require-git", "--no-ignore-dot", "--no-ignore-global", "--no-ignore-parent"]
        runs = [[*args, *only_git, "-g", "!.git", "--", "."]] if walk else []
        explicit = list(also) if walk else [*(files or []), *also]
        for start in range(0, len(explicit), _RG_ARGV_LIMIT):
            runs.append([*args, "--no-ignore", "--", *explicit[start : start + _RG_ARGV_LIMIT]])
        env = {key: value for key, value in os.environ.items() if key != "RIPGREP_CONFIG_PATH"}
        self._processes = [
            subprocess.Popen(run, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for run in runs
        ]
        self._lines: dict[str, list[Line]] | None = None

    def lines(self, selected: set[str]) -> dict[str, list[Line]]:
        if self._lines is None:
            self._lines = {}
            for process in self._processes:
                out, err = process.communicate()
                if process.returncode not in (0, 1):  # 1 means no match
                    raise ScanError(f"ripgrep failed ({process.returncode}): {err.decode(errors='replace')[:300]}")
                for raw_bytes in out.split(b"\n"):  # not splitlines(): \r, \x0c or U+2028 may be inside a line
                    if not raw_bytes:
                        continue
                    path, _, rest = raw_bytes.decode("utf-8", "replace").partition("\0")
                    number, column, text = rest.split(":", 2)
                    line = Line(int(number), int(column), text)
                    lines = self._lines.setdefault(path.removeprefix("./"), [])
                    if not lines or lines[-1].number != line.number:  # a file in both runs counts once
                        lines.append(line)
        return {path: lines for path, lines in self._lines.items() if path in selected}


def _ripgrep() -> str:
    beside = Path(sys.executable).parent / "rg"
    found = str(beside) if beside.exists() else shutil.which("rg")
    if not found:
        raise ScanError("ripgrep (rg) is not installed: it comes with the `ripgrep` wheel in requirements.lock")
    return found
