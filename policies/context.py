"""What a policy check sees: the root, the gate, the settings, the files selected for this gate, the running
environment, and shared, cached ways to read files and to find candidate lines with one ripgrep pass."""

from __future__ import annotations

import ast
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from oracle_base.errors import InternalError
from policies.bytecode import describe, stop_reading_bytecode
from policies.lockfile import normalise_name as normalise_name  # its home is the stdlib-only lockfile
from policies.rule import Gate
from policies.settings import Settings
from policies.venv_integrity import Kind, Problem, check_installation

_T = TypeVar("_T")

# When more files than this are selected, ripgrep walks the root itself (respecting .gitignore) and its matches are
# filtered to the selection, instead of receiving every path on its command line.
_RG_ARGV_LIMIT = 2000


class ScanError(InternalError):
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
        """What policies/venv_integrity.py finds in this environment's files (nothing for a described one).

        Bytecode: when this is the running interpreter's environment, the process stops reading caches and verifies
        those it has already run (policies.bytecode), which is what the result of this process depends on; another
        environment's caches are all verified (about 28 s for this project's venv on two cores)."""
        if self.import_path is None and self._distributions is not None:
            return []
        running = check_bytecode and self.prefix.resolve() == Path(sys.prefix).resolve()
        problems = check_installation(
            self.prefix,
            checkout,
            locked,
            allow_unlocked,
            self.import_path or [],
            check_bytecode and not running,
            lock_name,
        )
        if running:
            problems += [
                Problem(Kind.modified, cache, describe(source, cache, why))
                for source, cache, why in stop_reading_bytecode()
            ]
        return problems

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


# --- decoding: every text file is read whole, whatever its encoding ------------------------------------------------
_BOMS = (  # UTF-32 before UTF-16: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Bytes that plain text does not contain (C0 controls but tab, newlines, form feed, escape; DEL).
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 27), *range(28, 32), 127])
_TEXT_BYTES = bytes(sorted(set(range(256)) - set(_CONTROL_BYTES)))
_CONTROL_CHARS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f\ufffd]")
# A file is binary when more than this share of it is control bytes (random or compressed data: about 11 %; a text
# file with a stray NUL byte: a handful of bytes).
_BINARY_SHARE = 0.03
_SAMPLE = 4096  # bytes looked at to recognise UTF-16/32 without a byte-order mark
_HEAD = 1024  # bytes of every file kept once read (content sniffing, shebangs, encodings)
# Bytes read at the first look at a file (one system call either way): ripgrep's binary detection stops a file at a
# NUL byte, so which files have one in this probe (the whole of most files) is noted for the grep fallback.
_PROBE = 1 << 16


def wide_encoding(sample: bytes) -> str | None:
    """The UTF-16/32 codec of text that has no byte-order mark, recognised from where its NUL bytes fall (ASCII
    characters of UTF-16 LE are a letter and a NUL, and so on); None when the bytes do not show that pattern."""
    sample = sample[: len(sample) - len(sample) % 4]
    if len(sample) < 4 or b"\0" not in sample:
        return None
    quarter = len(sample) // 4
    by_position = [sample[offset::4].count(0) for offset in range(4)]
    if by_position[1] + by_position[2] + by_position[3] >= 2.7 * quarter and by_position[0] <= 0.1 * quarter:
        return "utf-32-le"
    if by_position[0] + by_position[1] + by_position[2] >= 2.7 * quarter and by_position[3] <= 0.1 * quarter:
        return "utf-32-be"
    half = len(sample) // 2
    even, odd = by_position[0] + by_position[2], by_position[1] + by_position[3]
    if odd >= 0.25 * half and even <= 0.02 * half:
        return "utf-16-le"
    if even >= 0.25 * half and odd <= 0.02 * half:
        return "utf-16-be"
    return None


def _mostly_text(decoded: str) -> bool:
    return len(_CONTROL_CHARS.findall(decoded)) <= _BINARY_SHARE * len(decoded)


def decode_text(data: bytes) -> str | None:
    """The whole of `data` as text, or None when it is binary. A byte-order mark (UTF-8, UTF-16, UTF-32) decides the
    codec; UTF-16/32 without one is recognised by its NUL pattern; anything else is UTF-8, invalid sequences
    replaced. A few NUL or control bytes in otherwise textual content do not make it binary."""
    for mark, codec in _BOMS:
        if data.startswith(mark):
            decoded = data[len(mark) :].decode(codec, "replace")
            return decoded if codec == "utf-8" or _mostly_text(decoded) else None
    wide = wide_encoding(data[:_SAMPLE])
    if wide is not None:
        decoded = data[: len(data) - len(data) % (4 if "32" in wide else 2)].decode(wide, "replace")
        if _mostly_text(decoded):
            return decoded
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls > max(2, _BINARY_SHARE * len(data)):
        return None
    return data.decode("utf-8", "replace")


_MARKS = tuple(mark for mark, _ in _BOMS)


def looks_binary(head: bytes) -> bool:
    """A cheap verdict from a file's first bytes (kind(), the grep fallback); text() decides on the whole file."""
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if controls <= max(2, _BINARY_SHARE * len(head)):
        return False
    return not (head.startswith(_MARKS) or wide_encoding(head[:_SAMPLE]) is not None)


# --- kinds of files -----------------------------------------------------------------------------------------------
KINDS = (
    "python", "notebook", "shell", "powershell", "csh", "fish", "make", "docker", "yaml", "json", "toml", "ini",
    "env", "hcl", "markdown", "text", "binary",
)  # fmt: skip
_KIND_BY_SUFFIX = {
    **dict.fromkeys((".py", ".pyw", ".pyi"), "python"),
    ".ipynb": "notebook",
    **dict.fromkeys((".sh", ".bash", ".zsh", ".ksh", ".dash", ".sbatch", ".slurm", ".pbs", ".lsf"), "shell"),
    **dict.fromkeys((".ps1", ".psm1", ".psd1"), "powershell"),
    **dict.fromkeys((".csh", ".tcsh"), "csh"),
    ".fish": "fish",
    **dict.fromkeys((".mk", ".mak", ".make"), "make"),
    **dict.fromkeys((".dockerfile", ".containerfile"), "docker"),
    **dict.fromkeys((".yaml", ".yml"), "yaml"),
    **dict.fromkeys((".json", ".jsonc", ".json5"), "json"),
    ".toml": "toml",
    **dict.fromkeys((".ini", ".cfg", ".service", ".desktop", ".gitmodules", ".gitconfig"), "ini"),
    ".env": "env",
    **dict.fromkeys((".tf", ".tfvars", ".hcl"), "hcl"),
    **dict.fromkeys((".md", ".markdown", ".rmd", ".qmd", ".mdx"), "markdown"),
    **dict.fromkeys((".txt", ".rst", ".jsonl", ".ndjson", ".csv", ".tsv", ".conf", ".xml", ".html"), "text"),
}
_BINARY_SUFFIXES = frozenset(
    (
        ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".onnx", ".h5", ".hdf5", ".keras", ".tflite",
        ".pb", ".npy", ".npz", ".pkl", ".pickle", ".joblib", ".msgpack", ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst",
        ".tar", ".7z", ".whl", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".ico", ".pdf", ".so", ".dylib", ".dll",
        ".exe", ".pyc", ".woff", ".woff2", ".ttf", ".otf", ".mp3", ".wav", ".flac", ".mp4", ".parquet", ".arrow",
    )
)  # fmt: skip
_KIND_BY_NAME = {
    **dict.fromkeys(("makefile", "gnumakefile", "bsdmakefile"), "make"),
    **dict.fromkeys(("dockerfile", "containerfile"), "docker"),
    ".envrc": "env",
    **dict.fromkeys((".bashrc", ".bash_profile", ".profile", ".zshrc", ".zprofile", ".zshenv", "pkgbuild"), "shell"),
    **dict.fromkeys((".cshrc", ".tcshrc", ".login"), "csh"),
    **dict.fromkeys((".gitmodules", ".gitconfig", ".editorconfig", "setup.cfg", ".flake8", "tox.ini"), "ini"),
    **dict.fromkeys(("pipfile", "poetry.lock", "uv.lock", "cargo.lock"), "toml"),
    **dict.fromkeys(("modelfile", "jenkinsfile", "vagrantfile", "procfile"), "text"),
}
_KIND_BY_INTERPRETER = {
    **dict.fromkeys(("python", "pythonw", "ipython", "pypy", "uv", "python2"), "python"),
    **dict.fromkeys(("sh", "bash", "zsh", "ksh", "dash", "ash", "mksh"), "shell"),
    **dict.fromkeys(("pwsh", "powershell"), "powershell"),
    "fish": "fish",
    **dict.fromkeys(("csh", "tcsh"), "csh"),
    **dict.fromkeys(("make", "gmake"), "make"),
}


def kind_of_name(relative: str) -> str | None:
    """The kind a file's name alone says (None: look at its content)."""
    return _kind_of_name(relative)


@functools.lru_cache(maxsize=1 << 16)
def _kind_of_name(relative: str) -> str | None:
    name = relative.rsplit("/", 1)[-1].lower()
    if name in _KIND_BY_NAME:
        return _KIND_BY_NAME[name]
    if name.startswith(("dockerfile.", "containerfile.")) or name.endswith((".dockerfile", ".containerfile")):
        return "docker"
    if name.startswith("makefile."):
        return "make"
    suffix = os.path.splitext(name)[1]
    if suffix in _KIND_BY_SUFFIX:
        return _KIND_BY_SUFFIX[suffix]
    if suffix in _BINARY_SUFFIXES:
        return "binary"
    if name == ".env" or name.startswith(".env.") or ".env." in name or name.endswith((".env", "-env", "_env")):
        return "env"
    if name.startswith("requirements") or name in {"license", "readme", "authors", "notice", "changelog"}:
        return "text"
    return None


def kind_of_shebang(first_line: str) -> str | None:
    """The kind of script a `#!` line runs (`#!/usr/bin/env -S python3 -u`, `#!/bin/bash -e`, ...)."""
    if not first_line.startswith("#!"):
        return None
    words = first_line[2:].split()
    if words and os.path.basename(words[0]) == "env":
        words = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
    if not words:
        return None
    interpreter = re.sub(r"[\d.]+$", "", os.path.basename(words[0]).lower())
    return _KIND_BY_INTERPRETER.get(interpreter)


# --- Python programs: whole files, statement by statement, notebooks cell by cell --------------------------------
@dataclass(frozen=True)
class PythonProgram:
    """Python code to analyse. `tree` holds every top-level statement that parses (for code that does not parse as a
    whole, it is parsed statement by statement); `unparsed` lists (first program line, text) of the parts that do
    not, which the reading layer has reported as not analysed. For a notebook, `source` is its code cells as one
    program (magics and shell escapes replaced by `pass`, so blocks stay valid), `cells[line - 1]` the (cell number,
    line in cell) of program line `line`, `magics` the (cell, line, text) of `%...` and `!...` lines and `shell` the
    (cell, line, command) of the shell commands a notebook runs: `!cmd`, `%pip`/`%conda`/`%sx`/`%system` line
    magics (as `pip ...`, `conda ...`, the command), `%env NAME value` (as `export NAME=value`) and every command of
    `%%bash`/`%%sh`/`%%script` cells, continuation lines joined."""

    source: str
    tree: ast.Module | None  # a Module whenever the program could be read
    cells: Sequence[tuple[int, int]] = ()
    magics: Sequence[tuple[int, int, str]] = ()
    unparsed: list[tuple[int, str]] = field(default_factory=list)
    shell: list[tuple[int, int, str]] = field(default_factory=list)

    @cached_property
    def _lines(self) -> list[str]:
        return _split_lines(self.source)

    def segment(self, node: ast.AST) -> str:
        """ast.get_source_segment without re-splitting the source at every call."""
        first, last = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        start, end = getattr(node, "col_offset", None), getattr(node, "end_col_offset", None)
        if first is None or last is None or start is None or end is None or last > len(self._lines):
            return ""
        lines = self._lines[first - 1 : last]
        if first == last:
            return lines[0].encode()[start:end].decode("utf-8", "replace")
        lines[0] = lines[0].encode()[start:].decode("utf-8", "replace")
        lines[-1] = lines[-1].encode()[:end].decode("utf-8", "replace")
        return "".join(lines)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def _split_lines(source: str) -> list[str]:
    """Lines as Python counts them (\\n, \\r\\n, \\r), ends kept."""
    return _LINE.findall(source)


_CONTINUES = frozenset(("else", "elif", "except", "finally"))


def _statement_starts(source: str, lines: list[str]) -> list[int]:
    """0-based indices of the lines where top-level statements begin (a decorator and its definition are one)."""
    starts = [0]
    level, new_line, decorated = 0, True, False
    failed_at = len(lines)
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            kind = token.type
            if kind == tokenize.INDENT:
                level += 1
            elif kind == tokenize.DEDENT:
                level -= 1
            elif kind == tokenize.NEWLINE:
                new_line = True
            elif kind in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER):
                continue
            elif new_line:
                new_line = False
                row = token.start[0] - 1
                if level == 0 and token.start[1] == 0 and token.string not in _CONTINUES and not decorated:
                    starts.append(row)
                decorated = token.string == "@"
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        failed_at = starts[-1] + 1
    # where tokenizing failed: a line at column 0 that opens a statement begins one (a guess the parse confirms)
    for row in range(failed_at, len(lines)):
        line = lines[row]
        opens = line[:1].isalpha() or line[:1] in ("_", "@")
        if opens and line.split(None, 1)[0].rstrip(":") not in _CONTINUES and not lines[row - 1].startswith("@"):
            starts.append(row)
    return sorted(set(starts))


def parse_partial(source: str, filename: str) -> tuple[ast.Module, list[tuple[int, str]]]:
    """The whole module when it parses; otherwise every top-level statement that parses on its own (line numbers
    those of the file) and the (first line, text) of the parts that do not, neighbouring ones joined."""
    try:
        return ast.parse(source, filename=filename), []
    except (SyntaxError, ValueError):
        pass
    lines = _split_lines(source)
    starts = [*_statement_starts(source, lines), len(lines)]
    body: list[ast.stmt] = []
    failed: list[tuple[int, int]] = []  # [first, end) line indices

    def parse(first: int, end: int) -> ast.Module | None:
        try:
            tree = ast.parse("".join(lines[first:end]), filename=filename)
        except (SyntaxError, ValueError):
            return None
        ast.increment_lineno(tree, first)
        return tree

    def attempt(low: int, high: int) -> None:  # statements starts[low] .. starts[high]
        tree = parse(starts[low], starts[high])
        if tree is not None:
            body.extend(tree.body)
        elif high - low == 1:
            if failed and failed[-1][1] == starts[low]:
                failed[-1] = (failed[-1][0], starts[high])
            else:
                failed.append((starts[low], starts[high]))
        else:
            middle = (low + high) // 2
            attempt(low, middle)
            attempt(middle, high)

    attempt(0, len(starts) - 1)
    unparsed: list[tuple[int, str]] = []
    for first, end in failed:  # a statement split where a guess was wrong parses once joined again
        joined = parse(first, end)
        if joined is not None:
            body.extend(joined.body)
        elif "".join(lines[first:end]).strip():
            unparsed.append((first + 1, "".join(lines[first:end])))
    body.sort(key=lambda node: node.lineno)
    return ast.Module(body=body, type_ignores=[]), unparsed


# Cell magics whose body is Python, or shell commands; any other cell magic (html, latex, writefile to a non-Python
# file, ...) holds text that only the text layer reads.
_PYTHON_CELL_MAGICS = frozenset(
    ("time", "timeit", "capture", "prun", "debug", "python", "python3", "pypy", "ipython", "px", "cache")
)
_SHELL_CELL_MAGICS = frozenset(("bash", "sh", "zsh", "ksh", "script", "system", "!", "sx"))
_SHELL_LINE_MAGICS = frozenset(("pip", "conda", "mamba", "micromamba", "uv"))
_COMMAND_LINE_MAGICS = frozenset(("sx", "system", "sh", "bash"))
_ENV_LINE_MAGICS = frozenset(("env", "set_env"))
_CAPTURED = re.compile(r"^(\s*)([\w.,\s\[\]()*]+?)\s*=\s*(!|%)(.*)$", re.S)


@dataclass
class _NotebookBuilder:
    lines: list[str] = field(default_factory=list)
    where: list[tuple[int, int]] = field(default_factory=list)
    magics: list[tuple[int, int, str]] = field(default_factory=list)
    shell: list[tuple[int, int, str]] = field(default_factory=list)
    body: list[ast.stmt] = field(default_factory=list)
    unparsed: list[tuple[int, str]] = field(default_factory=list)

    def add_cell(self, number: int, source: str, python: bool, filename: str) -> None:
        raw = source.split("\n")
        code: list[str] = []
        start = 0
        if raw[0].lstrip().startswith("%%"):  # a cell magic: its body is Python, shell commands, or other text
            self.magics.append((number, 1, raw[0]))
            words = raw[0].strip()[2:].split()
            name, argument = [*words, "", ""][:2]
            runs_python = (
                name in _PYTHON_CELL_MAGICS
                or (name == "script" and kind_of_shebang(f"#!{argument}") == "python")
                or (name in {"writefile", "file"} and argument.endswith((".py", ".pyw")))
            )
            code.append("pass")
            start = 1
            if name in _SHELL_CELL_MAGICS and not runs_python:
                self._commands(number, raw, 1, code)
            elif not runs_python:
                code.extend("" for _ in raw[1:])
            python = python and runs_python
        if python:
            self._python_lines(number, raw, start, code)
        elif not code:  # a cell of another kernel language: the text layer reads it
            code.extend("" for _ in raw)
        offset = len(self.lines)
        self.lines.extend(code)
        self.where.extend((number, index) for index in range(1, len(code) + 1))
        if python:
            tree, unparsed = parse_partial("\n".join(code), filename)
            ast.increment_lineno(tree, offset)
            self.body.extend(tree.body)
            self.unparsed.extend((line + offset, text) for line, text in unparsed)

    @staticmethod
    def _pass_for(line: str) -> str:
        return line[: len(line) - len(line.lstrip())] + "pass" if line.strip() else ""

    def _commands(self, number: int, raw: list[str], start: int, code: list[str]) -> None:
        """Every command of a shell cell (from raw[start]), continuation lines joined; all blanked in the program."""
        index = start
        while index < len(raw):
            first = index
            command, index = _joined(raw, index)
            if command.strip() and not command.lstrip().startswith("#"):
                self.shell.append((number, first + 1, command.strip()))
            code.extend([""] * (index - first))

    def _python_lines(self, number: int, raw: list[str], start: int, code: list[str]) -> None:
        index = start
        while index < len(raw):
            line = raw[index]
            stripped = line.lstrip()
            captured = _CAPTURED.match(line) if "=" in line and ("!" in line or "%" in line) else None
            if captured and not captured[2].strip().startswith(("#", '"', "'")) and _is_magic_value(captured):
                command, after = _joined(raw, index)
                self.magics.append((number, index + 1, command))
                self._shell_of(number, index + 1, command[captured.start(3) :])
                code.append(f"{captured[1]}{captured[2]} = None")
                code.extend([""] * (after - index - 1))
                index = after
            elif stripped.startswith(("!", "%")) and not stripped.startswith("%%"):
                command, after = _joined(raw, index)
                self.magics.append((number, index + 1, command))
                self._shell_of(number, index + 1, command.lstrip())
                code.append(self._pass_for(line))
                code.extend([""] * (after - index - 1))
                index = after
            elif stripped.endswith("?") and not stripped.startswith("#") and _HELP.match(stripped):
                self.magics.append((number, index + 1, line))
                code.append(self._pass_for(line))
                index += 1
            else:
                code.append(line)
                index += 1

    def _shell_of(self, number: int, line: int, escaped: str) -> None:
        """A `!cmd` or `%magic ...` line: the shell command it runs, if any."""
        if escaped.startswith("!"):
            command = escaped.lstrip("!").strip()
            if command:
                self.shell.append((number, line, command))
            return
        name, _, rest = escaped[1:].partition(" ")
        rest = rest.strip()
        if name in _SHELL_LINE_MAGICS:
            self.shell.append((number, line, f"{name} {rest}".strip()))
        elif name in _COMMAND_LINE_MAGICS and rest:
            self.shell.append((number, line, rest))
        elif name in _ENV_LINE_MAGICS and rest:
            variable, _, value = rest.partition("=") if "=" in rest.split()[0] else rest.partition(" ")
            self.shell.append((number, line, f"export {variable.strip()}={value.strip()}"))


_HELP = re.compile(r"^\??[\w.]+\?{1,2}$|^\?\??[\w.]+$")


def _is_magic_value(captured: re.Match[str]) -> bool:
    """`files = !ls` or `out = %sx cmd`, not `a = b != c` or `x = 10 % 3`: the value starts with the escape."""
    return captured[3] == "!" or bool(re.match(r"\w", captured[4]))


def _joined(raw: list[str], index: int) -> tuple[str, int]:
    """The command at raw[index] with its backslash-continued lines, and the index after it."""
    parts = [raw[index]]
    while parts[-1].rstrip().endswith("\\") and index + 1 < len(raw):
        parts[-1] = parts[-1].rstrip()[:-1]
        index += 1
        parts.append(raw[index])
    return " ".join(part.strip() if n else part.rstrip() for n, part in enumerate(parts)), index + 1


def notebook_program(text: str, filename: str) -> PythonProgram | None:
    """A Jupyter notebook (nbformat 4, or 3 with its worksheets) as one program; None when the text is not a
    notebook (not JSON, or no cell list). Cells in a kernel language other than Python are left to the text layer."""
    import json

    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    cells = document.get("cells")
    if cells is None and isinstance(document.get("worksheets"), list):  # nbformat 3
        cells = [cell for sheet in document["worksheets"] if isinstance(sheet, dict) for cell in sheet.get("cells", [])]
    if not isinstance(cells, list):
        return None
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    language = str(
        (metadata.get("kernelspec") or {}).get("language")
        or (metadata.get("language_info") or {}).get("name")
        or metadata.get("language")
        or "python"
    ).lower()
    builder = _NotebookBuilder()
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        raw = cell.get("source", cell.get("input", ""))
        source = "".join(str(part) for part in raw) if isinstance(raw, list) else str(raw)
        cell_language = str(cell.get("language") or language).lower()
        builder.add_cell(number, source, cell_language.startswith("python"), filename)
    builder.body.sort(key=lambda node: node.lineno)
    return PythonProgram(
        "\n".join(builder.lines),
        ast.Module(body=builder.body, type_ignores=[]),
        builder.where,
        builder.magics,
        builder.unparsed,
        builder.shell,
    )


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
    # Paths the selection left out, with why (the runner's `skipped`); the coverage policy reports unreadable ones.
    left_out: dict[str, str] = field(default_factory=dict)
    _text: dict[str, str | None] = field(default_factory=dict, repr=False)
    _heads: dict[str, bytes] = field(default_factory=dict, repr=False)
    _probed: dict[str, str] = field(default_factory=dict, repr=False)  # see head
    _kinds: dict[str, str] = field(default_factory=dict, repr=False)
    _cut: list[str] | None = field(default=None, repr=False)  # files the prefetched ripgrep pass cut short
    _not_analysed: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)

    @cached_property
    def environment(self) -> Environment:
        factory = self.environment_factory
        assert callable(factory)
        result = factory()
        assert isinstance(result, Environment)
        return result

    def path(self, relative: str) -> Path:
        return self.root / relative

    # --- what could not be analysed --------------------------------------------------------------------------------
    def not_analysed(self, relative: str, why: str, line: int = 0) -> None:
        """Record that a file (or a part of it, from `line`) was not fully analysed; the coverage policy, which runs
        last, reports every record as a COV001 finding. The same reason is recorded once per file."""
        reasons = self._not_analysed.setdefault(relative, {})
        reasons[why] = min(reasons.get(why, line), line) if why in reasons else line

    @property
    def not_analysed_records(self) -> dict[str, dict[str, int]]:
        """path → {why: first line (0 for the whole file)} of everything recorded by not_analysed."""
        return self._not_analysed

    # --- bytes -----------------------------------------------------------------------------------------------------
    def size(self, relative: str) -> int:
        if relative not in self.sizes:
            try:
                self.sizes[relative] = os.stat(os.path.join(self._root_str, relative)).st_size
            except OSError as exc:
                self.not_analysed(relative, f"cannot be read ({exc.strerror or exc})")
                self.sizes[relative] = 0
        return self.sizes[relative]

    def head(self, relative: str, n_bytes: int = 64) -> bytes:
        """The file's first bytes (the first KiB of every file is kept once read). A file that cannot be read gives
        b"" and is recorded as not analysed."""
        cached = self._heads.get(relative)
        if cached is not None and (len(cached) >= n_bytes or len(cached) < _HEAD):  # or the cache is the whole file
            return cached[:n_bytes]
        data = self._read(relative, max(n_bytes, _PROBE))
        if data is None:
            self._heads[relative], self._probed[relative] = b"", "whole"
            return b""
        if cached is None:
            self._keep_head(relative, data)
        return data[:n_bytes]

    def _keep_head(self, relative: str, data: bytes) -> None:
        """What head() keeps of a file's first `_PROBE` bytes (or all of it)."""
        self._heads[relative] = data[:_HEAD]
        if b"\0" in data[:_PROBE]:
            self._probed[relative] = "binary" if looks_binary(data[:_PROBE]) else "nul"
        else:
            self._probed[relative] = "whole" if len(data) < _PROBE else "more"

    def sniff(self, relative: str, judge: Callable[[int, int, bytes, str], _T]) -> _T:
        """`judge(fd, size, start, relative)` on the file opened once, `start` its first `_PROBE` bytes (or all of
        it): the same read fills head(), so content sniffing and the reading layer read each file once. Raises
        OSError when the file cannot be opened or read (the caller records why; head() is then left to try again)."""
        size = self.sizes.get(relative)
        if size is None:
            size = self.size(relative)
        fd = os.open(os.path.join(self._root_str, relative), os.O_RDONLY | os.O_NONBLOCK)  # a FIFO never blocks
        try:
            start = os.read(fd, _PROBE)
            if relative not in self._heads:
                self._keep_head(relative, start)
            return judge(fd, size, start, relative)
        finally:
            os.close(fd)

    def _read(self, relative: str, n_bytes: int | None) -> bytes | None:
        # os-level calls: this runs once per file of the tree, where pathlib's overhead shows
        try:
            fd = os.open(os.path.join(self._root_str, relative), os.O_RDONLY)
            try:
                if n_bytes is not None:
                    return os.read(fd, n_bytes)
                chunks = []
                while chunk := os.read(fd, 1 << 22):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            self.not_analysed(relative, f"cannot be read ({exc.strerror or exc})")
            return None

    @cached_property
    def _root_str(self) -> str:
        return str(self.root)

    # --- text ------------------------------------------------------------------------------------------------------
    def kind(self, relative: str) -> str:
        """One of KINDS: from the file's name (extension, well-known names such as Makefile or Dockerfile.gpu, env
        files), else from its `#!` line, else "binary" or "text" from its first bytes. A file whose name says text
        but whose first bytes are binary is "binary"."""
        if relative not in self._kinds:
            self._kinds[relative] = self._kind(relative)
        return self._kinds[relative]

    def _kind(self, relative: str) -> str:
        named = _kind_of_name(relative)
        if named == "binary":
            return named
        head = self.head(relative, _HEAD)
        if looks_binary(head):
            return "binary"
        if named is not None:
            return named
        first_line = (decode_text(head[:256]) or "").lstrip("\ufeff").split("\n", 1)[0].strip()
        return kind_of_shebang(first_line) or "text"

    def text(self, relative: str) -> str | None:
        """The whole file as text, whatever its encoding (see decode_text); None for binary content and for text
        larger than scan.max_file_bytes (recorded as not analysed), and for a file that cannot be read (recorded).
        A notebook is read whatever its size (its outputs are the bulk): its text, code included, is analysed."""
        if relative not in self._text:
            self._text[relative] = self._decoded(relative)
        return self._text[relative]

    def _decoded(self, relative: str) -> str | None:
        limit = self.settings.scan.max_file_bytes
        if self.size(relative) > limit and _kind_of_name(relative) != "notebook":
            if not looks_binary(self.head(relative, _HEAD)):
                self.not_analysed(
                    relative,
                    f"text larger than scan.max_file_bytes ({limit} bytes): its text was not searched "
                    "(only its first bytes were sniffed)",
                )
            return None
        data = self._read(relative, None)
        return None if data is None else decode_text(data)

    def python_program(self, relative: str) -> PythonProgram | None:
        """A Python file (by name or `#!` line), or a notebook's code cells as one program (see PythonProgram); None
        when the file cannot be read as text or is a notebook that is not valid JSON (both recorded as not
        analysed). Parts that do not parse are recorded as not analysed and listed in `unparsed`."""
        text = self.text(relative)
        if text is None:
            if relative not in self._not_analysed:
                self.not_analysed(relative, "binary content where Python was expected: not analysed as code")
            return None
        if _kind_of_name(relative) == "notebook":
            program = notebook_program(text, relative)
            if program is None:
                self.not_analysed(relative, "notebook that is not valid JSON: its code was not analysed as Python")
                return None
        else:
            tree, unparsed = parse_partial(text, relative)
            program = PythonProgram(text, tree, unparsed=unparsed)
        for line, chunk in program.unparsed:
            where = f"line {line}"
            if program.cells:
                cell, cell_line = program.cells[line - 1]
                where = f"cell {cell}, line {cell_line}"
            self.not_analysed(
                relative,
                f"Python that does not parse on this interpreter at {where} ({_first_words(chunk)}): "
                "that part was read as text only",
                0 if program.cells else line,  # a notebook's own line numbers mean nothing to a reader
            )
        return program

    def python_ast(self, relative: str) -> ast.Module | None:
        """Parsed Python source: every top-level statement that parses (see python_program); None when the file
        cannot be read as text. Not cached: a thousand kept trees cost more in memory and garbage collection than
        the rare second parse."""
        program = self.python_program(relative)
        return None if program is None else program.tree

    # --- the one ripgrep pass --------------------------------------------------------------------------------------
    def prefetch(self, patterns: Iterable[str], job: RipgrepJob | None = None) -> None:
        """The one ripgrep pass for every policy's patterns (a job the runner may have started before selecting
        files, so the walk runs while Python works); grep() then filters its result."""
        patterns = list(dict.fromkeys(patterns))
        if job is None:
            job = RipgrepJob(self.root, patterns, self.settings.scan.max_file_bytes, self.files)
        self._prefetched = (frozenset(patterns), job)

    def grep(self, patterns: Iterable[str], files: Iterable[str] | None = None) -> dict[str, list[Line]]:
        """Lines matching any of the (Rust-regex, no look-around) patterns, by file, over the selection (or the given
        subset of it). ripgrep stops reading a file at a NUL byte; every file it may have cut short that is text
        (a stray NUL, UTF-16/32 without a byte-order mark), and notebooks over the size limit, are decoded here and
        searched with the same patterns. Binary files are left out (content sniffing judges them)."""
        patterns = list(patterns)
        wanted_lines = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
        prefetched = getattr(self, "_prefetched", None)
        if prefetched is not None and files is None and set(patterns) <= prefetched[0]:
            subset: Sequence[str] = self.files
            job = prefetched[1]
            found: dict[str, list[Line]] = {}
            keep = _line_filter(wanted_lines, patterns, prefetched[0] - set(patterns))
            for path, lines in job.lines(set(self.files)).items():
                kept = lines if keep is None else [line for line in lines if keep(line.text)]
                if kept:
                    found[path] = kept
        else:
            subset = sorted(set(self.files if files is None else files))
            job = RipgrepJob(self.root, patterns, self.settings.scan.max_file_bytes, subset)
            found = job.lines(set(subset))
        if prefetched is not None and job is prefetched[1]:  # what it cut short does not depend on the patterns
            if self._cut is None:
                self._cut = self._cut_short(subset, job.lines(set(subset)), job.binary)
            cut = self._cut
        else:
            cut = self._cut_short(subset, found, job.binary)
        for path in cut:
            text = self.text(path)
            lines = [] if text is None else _search(text, wanted_lines)
            if lines:
                found[path] = lines
            else:
                found.pop(path, None)
        return found

    def _cut_short(self, files: Sequence[str], reported: dict[str, list[Line]], binary: set[str]) -> list[str]:
        """Files of `files` that ripgrep may not have searched to the end: those it said it stopped at a NUL byte,
        those with a NUL byte in their first 64 KiB that are not plainly binary there (it stops before its first
        match), larger ones with a NUL further on, and notebooks over the size limit (it skips them)."""
        limit = self.settings.scan.max_file_bytes
        found = []
        for path in files:
            if path in binary:
                found.append(path)
                continue
            if path in reported:
                continue
            if self.size(path) > limit:  # ripgrep skips it; only a notebook is read whatever its size
                if _kind_of_name(path) == "notebook":
                    found.append(path)
                continue
            if path not in self._probed:
                self.head(path, 1)
            probed = self._probed[path]
            if probed == "nul" or (probed == "more" and _nul_after(self.path(path), _PROBE, limit)):
                found.append(path)
        return found


def _line_filter(
    wanted: re.Pattern[str], patterns: Sequence[str], others: Iterable[str]
) -> Callable[[str], bool] | None:
    """Which lines of the prefetched pass (each matches `patterns` or `others`) match `patterns`: None for all of
    them (no other pattern was searched); else the cheaper test, by the length of the patterns: `wanted` itself, or
    `wanted` only where one of the others matches too (a line no other pattern matches matched `patterns`)."""
    others = list(others)
    if not others:
        return None
    if sum(map(len, others)) >= sum(map(len, patterns)):
        return lambda text: wanted.search(text) is not None
    other = re.compile("|".join(f"(?:{pattern})" for pattern in others))
    return lambda text: other.search(text) is None or wanted.search(text) is not None


def _nul_after(path: Path, offset: int, limit: int) -> bool:
    """Whether a NUL byte follows `offset` (up to `limit`: ripgrep skips larger files); unreadable reads as none
    here (the reading layer records it when the file is read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while offset < limit and (chunk := handle.read(1 << 20)):
                if b"\0" in chunk:
                    return True
                offset += len(chunk)
    except OSError:
        return False
    return False


def _search(text: str, pattern: re.Pattern[str]) -> list[Line]:
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        match = pattern.search(line)
        if match:
            lines.append(Line(number, match.start() + 1, line.rstrip("\r")))
    return lines


def _first_words(chunk: str) -> str:
    words = " ".join(chunk.split())
    return repr(words[:60] + ("…" if len(words) > 60 else ""))


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
        self._args, self._root = args, root
        self._env = {key: value for key, value in os.environ.items() if key != "RIPGREP_CONFIG_PATH"}
        self._processes: list[subprocess.Popen[bytes]] = []
        self._lines: dict[str, list[Line]] | None = None
        self._binary: set[str] = set()
        walk = files is None or len(files) > _RG_ARGV_LIMIT
        if walk:
            # Only git's ignore rules may hide a file (they decide what is tracked); a committed .ignore/.rgignore
            # must not.
            only_git = ["--no-require-git", "--no-ignore-dot", "--no-ignore-global", "--no-ignore-parent"]
            self._start([*args, *only_git, "-g", "!.git", "--", "."])
        self.add(list(also) if walk else [*(files or []), *also])

    def add(self, files: Sequence[str]) -> None:
        """Search these files too, whatever the ignore rules say (a walk's job: the tracked files it skips, which
        may be known only once the walk has started)."""
        if self._lines is not None:
            raise ScanError("ripgrep's pass was collected before files were added to it")
        for start in range(0, len(files), _RG_ARGV_LIMIT):
            self._start([*self._args, "--no-ignore", "--", *files[start : start + _RG_ARGV_LIMIT]])

    def _start(self, argv: list[str]) -> None:
        self._processes.append(
            subprocess.Popen(argv, cwd=self._root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env)
        )

    def stop(self) -> None:
        """End the searches of a pass that will not be collected."""
        for process in self._processes:
            process.kill()
            process.communicate()

    @property
    def binary(self) -> set[str]:
        """Files ripgrep stopped reading at a NUL byte after a match (it says so in its output)."""
        self.lines(set())
        return self._binary

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
                    path, nul, rest = raw_bytes.decode("utf-8", "replace").partition("\0")
                    if not nul:  # ripgrep's own line: it stopped reading a file at a NUL byte
                        stopped = _STOPPED_AT_NUL.match(path)
                        if stopped is None:
                            raise ScanError(f"ripgrep printed a line the scan cannot read: {path[:200]!r}")
                        self._binary.add(stopped[1].removeprefix("./"))
                        continue
                    number, column, text = rest.split(":", 2)
                    line = Line(int(number), int(column), text)
                    lines = self._lines.setdefault(path.removeprefix("./"), [])
                    if not lines or lines[-1].number != line.number:  # a file in both runs counts once
                        lines.append(line)
        return {path: lines for path, lines in self._lines.items() if path in selected}


_STOPPED_AT_NUL = re.compile(
    r'(.*): (?:WARNING: stopped searching binary file after match|binary file matches) \(found "\\0" byte around'
)


def _ripgrep() -> str:
    beside = Path(sys.executable).parent / "rg"
    found = str(beside) if beside.exists() else shutil.which("rg")
    if not found:
        raise ScanError("ripgrep (rg) is not installed: it comes with the `ripgrep` wheel in requirements.lock")
    return found
