"""What a policy check sees: the root, the gate, the settings, the files selected for this gate, the running
environment, and shared, cached ways to read files and to find candidate lines with one ripgrep pass."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path

from policies.rule import Gate
from policies.settings import Settings

# When more files than this are selected, ripgrep walks the root itself (respecting .gitignore) and its matches are
# filtered to the selection, instead of receiving every path on its command line.
_RG_ARGV_LIMIT = 2000


class ScanError(RuntimeError):
    """A check could not run (missing tool, unexpected failure): an error of the run, never a pass."""


class Environment:
    """The Python environment the gate runs in (the venv policy's subject); tests build their own. The installed
    distributions are read only when a rule asks for them (the commit gate never does)."""

    def __init__(self, prefix: Path, base_prefix: Path, distributions: dict[str, str] | None = None) -> None:
        self.prefix, self.base_prefix = prefix, base_prefix
        self._distributions = distributions

    @classmethod
    def current(cls) -> Environment:
        return cls(Path(sys.prefix), Path(sys.base_prefix))

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


def normalise_name(name: str) -> str:
    """PEP 503 normalisation: `Typing_Extensions` and `typing-extensions` are the same distribution."""
    return "-".join(part for part in name.lower().replace("_", "-").replace(".", "-").split("-") if part)


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
    _text: dict[str, str | None] = field(default_factory=dict, repr=False)
    _ast: dict[str, ast.Module | None] = field(default_factory=dict, repr=False)

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
        return self.path(relative).stat().st_size

    def head(self, relative: str, n_bytes: int = 64) -> bytes:
        with self.path(relative).open("rb") as handle:
            return handle.read(n_bytes)

    def text(self, relative: str) -> str | None:
        """The file as text, or None for binary (NUL bytes) and files over the size limit."""
        if relative not in self._text:
            data = (
                self.path(relative).read_bytes() if self.size(relative) <= self.settings.scan.max_file_bytes else None
            )
            self._text[relative] = None if data is None or b"\0" in data[:8192] else data.decode("utf-8", "replace")
        return self._text[relative]

    def python_ast(self, relative: str) -> ast.Module | None:
        """Parsed Python source, or None when it does not parse (reported by the caller as skipped)."""
        if relative not in self._ast:
            source = self.text(relative)
            try:
                self._ast[relative] = ast.parse(source, filename=relative) if source is not None else None
            except SyntaxError:
                self._ast[relative] = None
        return self._ast[relative]

    def prefetch(self, patterns: Iterable[str]) -> None:
        """Run the one ripgrep pass for every policy's patterns up front; grep() then filters its result."""
        patterns = list(dict.fromkeys(patterns))
        self._prefetched = (frozenset(patterns), self._run_grep(patterns, None))

    def grep(self, patterns: Iterable[str], files: Iterable[str] | None = None) -> dict[str, list[Line]]:
        """Lines matching any of the (Rust-regex, no look-around) patterns, by file, from one ripgrep pass over the
        selection (or the given subset of it). Binary files are left out by ripgrep itself."""
        patterns = list(patterns)
        prefetched = getattr(self, "_prefetched", None)
        if prefetched is not None and files is None and set(patterns) <= prefetched[0]:
            wanted_lines = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
            found: dict[str, list[Line]] = {}
            for path, lines in prefetched[1].items():
                kept = [line for line in lines if wanted_lines.search(line.text)]
                if kept:
                    found[path] = kept
            return found
        return self._run_grep(patterns, files)

    def _run_grep(self, patterns: list[str], files: Iterable[str] | None) -> dict[str, list[Line]]:
        wanted = sorted(set(self.files if files is None else files))
        if not wanted:
            return {}
        rg = _ripgrep()
        args = [rg, "--no-config", "--hidden", "--no-heading", "--with-filename", "--line-number", "--column"]
        args += [
            "--null",
            "--no-messages",
            "--color",
            "never",
            "--max-filesize",
            str(self.settings.scan.max_file_bytes),
        ]
        for pattern in patterns:
            args += ["-e", pattern]
        if len(wanted) <= _RG_ARGV_LIMIT:
            outputs = [_run_rg([*args, "--no-ignore", "--", *wanted], self.root)]
        else:
            outputs = [_run_rg([*args, "--no-require-git", "-g", "!.git", "--", "."], self.root)]
        selected = set(wanted)
        result: dict[str, list[Line]] = {}
        for output in outputs:
            for raw in output.splitlines():
                path, _, rest = raw.partition("\0")
                path = path.removeprefix("./")
                if path not in selected:
                    continue
                number, column, text = rest.split(":", 2)
                result.setdefault(path, []).append(Line(int(number), int(column), text))
        return result


def _ripgrep() -> str:
    beside = Path(sys.executable).parent / "rg"
    found = str(beside) if beside.exists() else shutil.which("rg")
    if not found:
        raise ScanError("ripgrep (rg) is not installed: it comes with the `ripgrep` wheel in requirements.lock")
    return found


def _run_rg(args: list[str], cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "RIPGREP_CONFIG_PATH"}
    completed = subprocess.run(args, cwd=cwd, capture_output=True, env=env, check=False)
    if completed.returncode not in (0, 1):  # 1 means no match
        raise ScanError(f"ripgrep failed ({completed.returncode}): {completed.stderr.decode(errors='replace')[:300]}")
    return completed.stdout.decode("utf-8", "replace")
