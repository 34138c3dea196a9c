"""The reading layer (policies/context.py): every file is decoded whatever its encoding, read whole, parsed as far as
it parses, and what cannot be analysed is recorded for COV001. Each fail-open case of issue 15 that belongs to
reading has a violation test and a near miss beside it."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import coverage
from policies.context import Line, RipgrepJob, ScanContext, decode_text, kind_of_shebang
from policies.rule import Gate
from policies.settings import Settings
from tests.policies.conftest import Scan, only, write_tree

LOADER = "hf_hub_download"
PATTERNS = [LOADER, "ALLOW_LOCAL_TRAIN"]


def context(root: Path, files: dict[str, str | bytes], max_file_bytes: int | None = None) -> ScanContext:
    write_tree(root, files)
    settings = Settings.model_validate({"scan": {"max_file_bytes": max_file_bytes}} if max_file_bytes else {})
    return ScanContext(root=root, gate=Gate.ci, settings=settings, files=sorted(files))


def grep_both_ways(root: Path, files: dict[str, str | bytes]) -> list[dict[str, list[int]]]:
    """The candidate lines (numbers) found when ripgrep walks the tree and when it is given the files."""
    found = []
    for walk in (True, False):
        ctx = context(root, files)
        if walk:
            ctx.prefetch(PATTERNS, RipgrepJob(root, PATTERNS, ctx.settings.scan.max_file_bytes, None))
            lines = ctx.grep(PATTERNS)
        else:
            lines = ctx.grep(PATTERNS, files=ctx.files)
        found.append({path: [line.number for line in hits] for path, hits in sorted(lines.items())})
    return found


def findings(ctx: ScanContext) -> dict[str, str]:
    return {finding.path: finding.message for finding in coverage.check(ctx).findings}


# --- encodings ---------------------------------------------------------------------------------------------------
POWERSHELL = '$env:ALLOW_LOCAL_TRAIN = "1"\r\nhf_hub_download("meta-llama/Llama-3.1-8B")\r\n'


@pytest.mark.parametrize(
    "encoded",
    [
        POWERSHELL.encode("utf-16-le"),  # PowerShell's "Unicode", no byte-order mark
        POWERSHELL.encode("utf-16-be"),
        POWERSHELL.encode("utf-16"),  # with a byte-order mark
        POWERSHELL.encode("utf-32"),
        POWERSHELL.encode("utf-32-le"),
        POWERSHELL.encode("utf-8-sig"),
    ],
)
def test_text_in_any_unicode_encoding_is_decoded_and_searched(tmp_path: Path, encoded: bytes) -> None:
    ctx = context(tmp_path, {"deploy/train.ps1": encoded})
    assert ctx.text("deploy/train.ps1") == POWERSHELL
    assert ctx.kind("deploy/train.ps1") == "powershell"
    assert grep_both_ways(tmp_path, {"deploy/train.ps1": encoded}) == [{"deploy/train.ps1": [1, 2]}] * 2


def test_binary_content_is_not_text_even_when_it_holds_the_words(tmp_path: Path) -> None:
    noise = random.Random(7).randbytes(20_000)
    files: dict[str, str | bytes] = {"assets/blob.dat": noise + b"\nhf_hub_download\n" + noise[:300]}
    ctx = context(tmp_path, files)
    assert ctx.text("assets/blob.dat") is None
    assert ctx.kind("assets/blob.dat") == "binary"
    assert grep_both_ways(tmp_path, files) == [{}, {}]
    assert findings(ctx) == {}  # binary content is sniffed (EXT005), not a coverage gap


def test_a_stray_nul_byte_does_not_make_text_binary(tmp_path: Path) -> None:
    filler = b"# " + b"x" * 97 + b"\n"
    files: dict[str, str | bytes] = {
        "early.py": b"import os\0\nhf_hub_download('a/b')\n",  # ripgrep stops at the NUL before any match
        "after_a_match.sh": b"hf_hub_download a/b\n\0\nALLOW_LOCAL_TRAIN=1 make\n",
        # past the first 64 KiB, with no match before it, and one after
        "late.yaml": filler * 1000 + b"\0\n" + filler * 10 + b"hf_hub_download: a/b\n",
    }
    ctx = context(tmp_path, files)
    for path in files:
        assert ctx.text(path) is not None, path
    expected = {"after_a_match.sh": [1, 3], "early.py": [2], "late.yaml": [1012]}
    assert grep_both_ways(tmp_path, files) == [expected, expected]


def test_invalid_utf8_is_decoded_with_replacement(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": b"caf\xe9 \xff\nhf_hub_download\n"})
    assert ctx.text("notes.txt") == "caf\ufffd \ufffd\nhf_hub_download\n"


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"\xef\xbb\xbfplain", "plain"),
        (b"\x00\x01\x02\x03\x04\x05\x06\x07", None),
        (b"PK\x03\x04" + bytes(range(256)) * 4, None),
    ],
)
def test_decode_text(data: bytes, text: str | None) -> None:
    assert decode_text(data) == text


# --- kinds -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "content", "kind"),
    [
        ("train", "#!/usr/bin/env python3\nimport os\n", "python"),
        ("tools/run", "#!/usr/bin/env -S python3.11 -u\n", "python"),
        ("tools/go", "#!/bin/bash -e\nmake\n", "shell"),
        ("tools/go2", "#!/usr/bin/env bash\n", "shell"),
        ("tools/ps", "#!/usr/bin/env pwsh\n", "powershell"),
        ("tools/f", "#!/usr/bin/fish\n", "fish"),
        ("tools/c", "#!/bin/tcsh -f\n", "csh"),
        ("tools/plain", "just words\n", "text"),
        ("Makefile", "all:\n", "make"),
        ("GNUmakefile", "all:\n", "make"),
        ("build/rules.mk", "all:\n", "make"),
        ("Dockerfile", "FROM x\n", "docker"),
        ("Dockerfile.gpu", "FROM x\n", "docker"),
        ("docker/train.dockerfile", "FROM x\n", "docker"),
        ("Containerfile", "FROM x\n", "docker"),
        (".envrc", "export A=1\n", "env"),
        (".env", "A=1\n", "env"),
        (".env.local", "A=1\n", "env"),
        ("config/prod.env", "A=1\n", "env"),
        ("config/x.env.local", "A=1\n", "env"),
        ("Modelfile", "FROM llama3\n", "text"),
        (".gitmodules", "[submodule]\n", "ini"),
        ("infra/main.tf", "variable x {}\n", "hcl"),
        ("infra/prod.tfvars", "x = 1\n", "hcl"),
        ("run.ps1", "Write-Host 1\n", "powershell"),
        ("setup.csh", "setenv A 1\n", "csh"),
        ("setup.tcsh", "setenv A 1\n", "csh"),
        ("conf.fish", "set -x A 1\n", "fish"),
        ("a.sh", "", "shell"),
        ("a.bash", "", "shell"),
        ("a.zsh", "", "shell"),
        ("job.sbatch", "#!/bin/bash\n", "shell"),
        ("nb.ipynb", "{}", "notebook"),
        ("m.py", "", "python"),
        ("m.pyw", "", "python"),
        ("m.pyi", "", "python"),
        ("doc.md", "# x\n", "markdown"),
        ("paired.Rmd", "# x\n", "markdown"),
        ("c.yaml", "a: 1\n", "yaml"),
        ("c.yml", "a: 1\n", "yaml"),
        ("c.json", "{}", "json"),
        ("c.toml", "", "toml"),
        ("c.ini", "", "ini"),
        ("c.cfg", "", "ini"),
        ("notes.txt", "hi\n", "text"),
        ("model.safetensors", "{}", "binary"),
        ("assets/encoder.txt", b"PK\x03\x04" + bytes(range(256)) * 4, "binary"),
    ],
)
def test_kind(tmp_path: Path, path: str, content: str | bytes, kind: str) -> None:
    assert context(tmp_path, {path: content}).kind(path) == kind


def test_kind_of_shebang_ignores_what_is_not_one() -> None:
    assert kind_of_shebang("# python3") is None
    assert kind_of_shebang("#!/usr/bin/env") is None
    assert kind_of_shebang("#!/usr/bin/perl") is None


def test_extensionless_python_script_is_analysed_as_python(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"bin/fetch": f"#!/usr/bin/env python3\nfrom huggingface_hub import {LOADER}\n"})
    program = ctx.python_program("bin/fetch")
    assert program is not None
    assert program.tree is not None
    assert isinstance(program.tree.body[0], ast.ImportFrom)
    assert findings(ctx) == {}


# --- Python that does not parse ------------------------------------------------------------------------------------
PY312 = (
    "import torch\n"
    "type Vector = list[float]\n"
    "\n"
    "@decorated\n"
    "def first[T](x: T) -> T:\n"
    "    return x\n"
    "\n"
    "HELP = '''\n"
    "usage: not code\n"
    "'''\n"
    "state = torch.load(f'{HELP}')\n"
    "if state:\n"
    "    pass\n"
    "else:\n"
    "    print(1)\n"
)


def test_python_that_does_not_parse_is_analysed_statement_by_statement(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"tools/new.py": PY312})
    program = ctx.python_program("tools/new.py")
    assert program is not None
    assert program.tree is not None
    kinds = [(type(node).__name__, node.lineno) for node in program.tree.body]
    assert kinds == [("Import", 1), ("Assign", 8), ("Assign", 11), ("If", 12)]
    [(line, text)] = program.unparsed  # neighbouring statements that do not parse are one region
    assert line == 2
    assert text.startswith("type Vector")
    assert "def first[T]" in text
    assert program.segment(program.tree.body[2]) == "state = torch.load(f'{HELP}')"
    message = findings(ctx)["tools/new.py"]
    assert "does not parse" in message
    assert "line 2" in message


def test_python_that_parses_is_one_tree_and_no_finding(tmp_path: Path) -> None:
    source = PY312.replace("type Vector = list[float]", "Vector = list[float]").replace("[T](x: T) -> T", "(x)")
    ctx = context(tmp_path, {"tools/new.py": source})
    program = ctx.python_program("tools/new.py")
    assert program is not None
    assert program.tree is not None
    assert program.unparsed == []
    assert len(program.tree.body) == 6
    assert findings(ctx) == {}


def test_python_two_is_reported_once_per_file_with_every_region(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"old.py": "import os\nprint 'a'\nprint 'b'\nx = 1\nexec 'y'\n"})
    program = ctx.python_program("old.py")
    assert program is not None
    assert [line for line, _ in program.unparsed] == [2, 5]  # neighbouring statements joined
    assert next(iter(coverage.check(ctx).findings)).line == 2


def test_the_gate_reports_python_that_does_not_parse(scan: Scan) -> None:
    result = scan({"tools/new.py": PY312})
    assert [f.path for f in only(result, "COV001")] == ["tools/new.py"]
    assert any(f.rule_id == "EXT006" and f.path == "tools/new.py" for f in result.findings)  # the rest analysed


def test_the_gate_passes_python_that_parses(scan: Scan) -> None:
    assert only(scan({"tools/ok.py": "import torch\nstate = torch.load('x', weights_only=True)\n"}), "COV001") == []


# --- notebooks ---------------------------------------------------------------------------------------------------
def notebook(*cells: str | list[str], nbformat: int = 4, language: str = "python") -> str:
    if nbformat == 3:
        entries = [{"cell_type": "code", "input": cell, "language": language} for cell in cells]
        return json.dumps({"nbformat": 3, "worksheets": [{"cells": entries}], "metadata": {}}, indent=1)
    code: list[dict[str, object]] = [
        {"cell_type": "code", "source": cell, "metadata": {}, "outputs": []} for cell in cells
    ]
    markdown: dict[str, object] = {"cell_type": "markdown", "source": "# title", "metadata": {}}
    kernel = {"kernelspec": {"language": language, "name": language}}
    return json.dumps({"nbformat": 4, "cells": [markdown, *code], "metadata": kernel}, indent=1)


def test_nbformat_3_notebook_is_analysed(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"nb.ipynb": notebook(["import torch\n", "x = 1\n"], "torch.load('w.pt')", nbformat=3)})
    program = ctx.python_program("nb.ipynb")
    assert program is not None
    assert program.tree is not None
    call = program.tree.body[-1]
    assert ast.unparse(call) == "torch.load('w.pt')"
    assert program.cells[call.lineno - 1] == (2, 1)
    assert findings(ctx) == {}


def test_notebook_that_is_not_json_is_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"nb.ipynb": '{"cells": [ truncated'})
    assert ctx.python_program("nb.ipynb") is None
    assert "not valid JSON" in findings(ctx)["nb.ipynb"]


BASH_CELL = "%%bash\npip install \\\n    transformers \\\n    peft\necho done\n"
SHELL_LINES = (
    "!pip install \\\n  accelerate\n"
    "%env ALLOW_LOCAL_TRAIN 1\n"
    "%pip install vllm\n"
    "import torch\n"
    "if torch.cuda.is_available():\n"
    "    !nvidia-smi\n"
    "files = !ls weights\n"
    "state = torch.load(files[0])\n"
)


def test_notebook_shell_cells_and_escapes_are_kept_apart_and_the_rest_parsed(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"nb.ipynb": notebook(BASH_CELL, SHELL_LINES, "broken = (\n", "after = 1")})
    program = ctx.python_program("nb.ipynb")
    assert program is not None
    assert program.tree is not None
    assert program.shell == [
        (2, 2, "pip install transformers peft"),
        (2, 5, "echo done"),
        (3, 1, "pip install accelerate"),
        (3, 3, "export ALLOW_LOCAL_TRAIN=1"),
        (3, 4, "pip install vllm"),
        (3, 7, "nvidia-smi"),
        (3, 8, "ls weights"),
    ]
    assert (3, 3, "%env ALLOW_LOCAL_TRAIN 1") in program.magics
    statements = [ast.unparse(node).split("\n")[0] for node in program.tree.body]
    assert "import torch" in statements
    assert "state = torch.load(files[0])" in statements
    assert "after = 1" in statements  # the cell after the one that does not parse
    assert [program.cells[line - 1] for line, _ in program.unparsed] == [(4, 1)]
    assert "cell 4, line 1" in findings(ctx)["nb.ipynb"]


def test_notebook_whose_cells_all_parse_has_no_finding(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"nb.ipynb": notebook(BASH_CELL, SHELL_LINES, "%%time\nx = (1 +\n 2)\n", "%%html\n<b>")})
    program = ctx.python_program("nb.ipynb")
    assert program is not None
    assert program.unparsed == []
    assert findings(ctx) == {}


def test_notebook_in_another_kernel_language_is_left_to_the_text_layer(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"nb.ipynb": notebook("library(ggplot2)\nx <- 1", language="R")})
    program = ctx.python_program("nb.ipynb")
    assert program is not None
    assert program.tree is not None
    assert program.tree.body == []
    assert findings(ctx) == {}


def test_large_notebook_is_analysed_whole(tmp_path: Path) -> None:
    cells = [f"value_{index} = {index}" for index in range(3000)] + ["hf_hub_download('meta-llama/x')"]
    text = notebook(*cells)
    limit = len(text) // 2  # the notebook is over scan.max_file_bytes
    ctx = context(tmp_path, {"big.ipynb": text}, max_file_bytes=limit)
    program = ctx.python_program("big.ipynb")
    assert program is not None
    assert program.tree is not None
    assert ast.unparse(program.tree.body[-1]) == "hf_hub_download('meta-llama/x')"
    assert program.cells[program.tree.body[-1].lineno - 1] == (3002, 1)
    lines = ctx.grep(PATTERNS, files=ctx.files)  # ripgrep skips it (over the limit): read here instead
    assert [line.text.strip() for line in lines["big.ipynb"]] == ['"source": "hf_hub_download(\'meta-llama/x\')",']
    assert ctx.text("big.ipynb") == text
    assert findings(ctx) == {}


# --- size and readability ----------------------------------------------------------------------------------------
def test_text_over_max_file_bytes_is_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"data/prompts.txt": "hf_hub_download('x/y')\n" * 100}, max_file_bytes=1000)
    assert ctx.text("data/prompts.txt") is None
    assert "larger than scan.max_file_bytes (1000 bytes)" in findings(ctx)["data/prompts.txt"]


def test_binary_over_max_file_bytes_is_left_to_content_sniffing(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"data/blob.bin": random.Random(3).randbytes(5000)}, max_file_bytes=1000)
    assert ctx.text("data/blob.bin") is None
    assert findings(ctx) == {}


def test_the_gate_reports_text_over_the_limit(scan: Scan) -> None:
    limit = Settings().scan.max_file_bytes
    result = scan({"data/huge.jsonl": '{"text": "hello"}\n' * (limit // 18 + 1)})
    assert [f.path for f in only(result, "COV001")] == ["data/huge.jsonl"]


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[None]:
    """`path` cannot be read while inside: mode 000, and, when running as root (who reads everything), the
    effective user switched to nobody, whose access the kernel checks like anyone's."""
    path.chmod(0)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(65534)
        if os.access(path, os.R_OK, effective_ids=True):
            pytest.skip("this user reads files of mode 000, and cannot become another user")
        yield
    finally:
        if as_root:
            os.seteuid(0)
        path.chmod(0o644)


def test_a_file_that_cannot_be_read_is_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"secret.py": "import os\n", "open.py": "import os\n"})
    with unreadable(tmp_path / "secret.py"):
        assert ctx.head("secret.py", 64) == b""
        assert ctx.text("secret.py") is None
        assert ctx.python_program("secret.py") is None
    assert ctx.text("open.py") == "import os\n"  # reading the others goes on
    reported = findings(ctx)
    assert list(reported) == ["secret.py"]
    assert "cannot be read" in reported["secret.py"]


def test_a_file_that_vanished_after_selection_is_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"gone.sh": "echo\n"})
    (tmp_path / "gone.sh").unlink()
    (tmp_path / "gone.sh").mkdir()  # now a folder: reading it fails like any unreadable file
    assert ctx.text("gone.sh") is None
    assert "cannot be read" in findings(ctx)["gone.sh"]


def test_files_the_selection_left_out_as_unreadable_are_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"ok.py": "x = 1\n"})
    ctx.left_out.update({"locked.py": "unreadable (permission denied)", "link": "symlink (its target is scanned)"})
    assert list(findings(ctx)) == ["locked.py"]


def test_grep_lines_are_the_files_own(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"a.sh": "ALLOW_LOCAL_TRAIN=1 make\n"})
    assert ctx.grep(PATTERNS, files=ctx.files) == {"a.sh": [Line(1, 1, "ALLOW_LOCAL_TRAIN=1 make")]}
