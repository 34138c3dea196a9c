"""Benchmark: the ci and commit policy gates (`oracle guards run`) on a generated repository, against ripgrep alone.

A seeded generator writes a git repository of 20,000 files (about 110 MB; `--files N` scales both) into a temporary
directory: Python modules of realistic look (imports, classes, functions, docstrings, a few long ones; about one in
eight uses a loader or a serialiser legitimately, the rate of this repository's own code), YAML and JSON configs,
Markdown docs, shell scripts, text notes, a .gitignore, a few binaries (random bytes, PNG-like headers), and six
planted violations that the gate must find (EXT001, EXT002, EXT003, EXT005, EXT006, LTR001); a run that does not find
them all fails, because a benchmark of a gate that finds nothing means nothing.

ci case: `oracle guards run --gate ci --root TREE --format json --output /dev/null`, wall time including interpreter
start, against one bare `rg` pass over the same tree with the patterns of the gate's own pass (every policy's
`patterns(settings)`: the external_weights candidates and `ALLOW_LOCAL_TRAIN`), output to /dev/null; the ratio
gate/rg has a target of <= 2x.
commit case: five modified files staged, `oracle guards run --gate commit --root TREE` (the staged files come from
git), against the target of 0.5 s and against `python -c pass` with the same interpreter.
many-findings case: a second repository of `--many-files` Python modules (default 1,000), each with several candidate
lines that are all findings (a foreign `from_pretrained`, an unsafe `pickle.load`, a hub URL per block), generated
twice: with `--many-blocks` blocks per file and with twice as many (files twice as long, twice the findings). The gate
against `rg` on each, and the growth of each from 1x to 2x: a gate whose cost grows with findings x file size (the
old `ast.get_source_segment` per finding) shows a growth near 4x where rg shows 2x.
Both cases interleave their two commands, after one warm-up run each, and report medians.

Usage: python bench/guards_scan.py [--files N] [--many-files N] [--many-blocks N] [--repeats N] [--seed N] [--keep]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from policies import ALL_POLICIES
from policies.context import _ripgrep
from policies.local_train import VARIABLE
from policies.settings import Settings

REFERENCE_FILES = 20_000
REFERENCE_BYTES = 110_000_000
EXPECTED_RULES = ("EXT001", "EXT002", "EXT003", "EXT005", "EXT006", "LTR001")
CI_TARGET_RATIO = 2.0
COMMIT_TARGET_SECONDS = 0.5
STAGED_FILES = 5
GIT_IDENTITY = ("-c", "user.email=b@b", "-c", "user.name=b", "-c", "commit.gpgsign=false")

# --- the generated tree -------------------------------------------------------------------------------------------
WORDS = (
    "batch", "token", "layer", "score", "cache", "buffer", "index", "shard", "expert", "router", "metric", "loss",
    "grad", "step", "config", "record", "sample", "window", "offset", "weight", "bias", "state", "queue", "result",
    "value", "item", "path", "stream", "chunk", "block", "frame", "span", "mask", "rank", "epoch", "schedule",
    "checkpoint", "dataset", "reader", "writer", "worker", "event", "request", "response", "session", "table",
    "column", "row", "vector", "matrix", "norm", "scale", "limit", "budget", "tracker", "summary", "report",
)  # fmt: skip
PROSE = (
    "the", "a", "of", "to", "and", "in", "is", "for", "with", "that", "on", "this", "by", "each", "when", "from",
    "every", "run", "data", "training", "job", "cluster", "node", "file", "tree", "policy", "gate", "check", "rule",
    "config", "model", "expert", "router", "batch", "step", "loss", "metric", "shard", "reader", "queue", "important",
    "note", "see", "also", "must", "should", "never", "always", "only", "once", "twice", "faster", "slower", "safely",
)  # fmt: skip
STDLIB = (
    "import os", "import sys", "import json", "import math", "import time", "import logging", "import hashlib",
    "import itertools", "import functools", "import re", "from pathlib import Path",
    "from collections import defaultdict, OrderedDict",
    "from collections.abc import Iterable, Iterator, Sequence",
    "from concurrent.futures import ThreadPoolExecutor",
)  # fmt: skip
THIRD_PARTY = (
    "import numpy as np",
    "import torch",
    "import torch.nn.functional as F",
    "import yaml",
    "import pydantic",
)
TEXT_KINDS = {  # kind: (share of the files, median bytes before scaling, lognormal sigma)
    "py": (0.70, 3500, 1.0),
    "yaml": (0.08, 1200, 0.7),
    "json": (0.06, 1600, 0.8),
    "md": (0.08, 2800, 0.8),
    "sh": (0.04, 900, 0.6),
    "txt": (0.04, 1500, 0.8),
}
MAX_TEXT_BYTES = 600_000
IGNORED_FILES = 3
PLANTED = {  # rule: where its violation is planted
    "EXT001": "src/{first}/integrations/hf_loader.py",
    "EXT002": "docs/models.md",
    "EXT003": "configs/finetune.yaml",
    "EXT005": "assets/notes/encoder.txt",
    "EXT006": "src/{second}/checkpoint_io.py",
    "LTR001": "scripts/train_local.sh",
}


def name(rng: random.Random, parts: int = 2) -> str:
    return "_".join(rng.choice(WORDS) for _ in range(parts))


def camel(rng: random.Random) -> str:
    return "".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(2, 3)))


def sentence(rng: random.Random, low: int = 6, high: int = 18) -> str:
    words = [rng.choice(PROSE) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def python_function(rng: random.Random, indent: str = "") -> str:
    args = [name(rng) + f"_{i}" for i in range(rng.randint(1, 4))]
    sig = ", ".join(f"{arg}: {rng.choice(('int', 'float', 'str', 'list[int]', 'dict[str, Any]'))}" for arg in args)
    body = [f"{indent}def {name(rng, 3)}({'self, ' if indent else ''}{sig}) -> dict[str, Any]:"]
    inner = indent + "    "
    body.append(f'{inner}"""{sentence(rng)}')
    if rng.random() < 0.7:
        body += ["", f"{inner}{sentence(rng, 10, 16)}", f"{inner}{sentence(rng, 8, 16)}"]
    if rng.random() < 0.3:
        body.append(f"{inner}See https://github.com/oracle-ai/{name(rng)}/issues.")
    if rng.random() < 0.6:
        body += ["", f"{inner}Args:"] + [f"{inner}    {arg}: {sentence(rng, 4, 12)}" for arg in args]
    body.append(f'{inner}"""')
    result = name(rng)
    body.append(f"{inner}{result}: dict[str, Any] = {{}}")
    for _ in range(rng.randint(2, 9)):
        roll, target, source = rng.random(), name(rng), rng.choice(args)
        if rng.random() < 0.3:
            body.append(f"{inner}# {sentence(rng, 5, 14)}")
        if roll < 0.25:
            counter = name(rng, 1) + "_i"
            body += [
                f"{inner}for {counter}, {target} in enumerate({source} if isinstance({source}, list) else []):",
                f'{inner}    {result}[f"{target}_{{{counter}}}"] = {target}',
            ]
        elif roll < 0.45:
            body += [
                f"{inner}if {source} is not None and len(str({source})) > {rng.randint(1, 99)}:",
                f"{inner}    {result}[{target!r}] = str({source}).strip()",
                f"{inner}else:",
                f"{inner}    {result}.setdefault({target!r}, {rng.randint(0, 1000)})",
            ]
        elif roll < 0.6:
            body.append(f"{inner}{target} = [x * {rng.randint(2, 9)} for x in range({rng.randint(2, 64)}) if x % 3]")
            body.append(f"{inner}{result}[{target!r}] = sum({target}) / max(len({target}), 1)")
        elif roll < 0.605:  # rare: `json.load(` is a candidate line for the unsafe-load check
            body += [
                f"{inner}with open({source!s} if isinstance({source}, str) else 'x.json', encoding='utf-8') as fh:",
                f"{inner}    {result}[{target!r}] = json.load(fh)",
            ]
        elif roll < 0.8:
            thing = rng.choice(("order", "shape", "cache", "layout"))
            body.append(f"{inner}# keep the {rng.choice(WORDS)} {thing} stable: {sentence(rng, 4, 10).lower()}")
            body.append(f"{inner}{result}[{target!r}] = {{k: v for k, v in {result}.items() if k != {source!r}}}")
        elif roll < 0.88:
            body.append(f'{inner}logging.getLogger(__name__).debug("{target} %s", {source})')
        else:
            body.append(f"{inner}{result}[{target!r}] = math.sqrt(abs(hash({source})) % {rng.randint(7, 997)})")
    body.append(f"{inner}return {result}")
    return "\n".join(body) + "\n"


def python_class(rng: random.Random) -> str:
    cls = camel(rng)
    fields = [name(rng, 1) + f"_{i}" for i in range(rng.randint(2, 6))]
    lines = ["@dataclass", f"class {cls}:", f'    """{sentence(rng)}"""', ""]
    for attribute in fields:
        kind, default = rng.choice((("int", "0"), ("float", "1.0"), ("str", '""'), ("bool", "False")))
        lines.append(f"    {attribute}: {kind} = {default}")
    lines.append("")
    text = "\n".join(lines) + "\n"
    for _ in range(rng.randint(1, 4)):
        text += python_function(rng, indent="    ") + "\n"
    return text


def python_blocks(rng: random.Random, count: int) -> list[str]:
    return [python_class(rng) if rng.random() < 0.3 else python_function(rng) for _ in range(count)]


def python_file(rng: random.Random, size: int, blocks: list[str]) -> str:
    head = [f'"""{sentence(rng)}', "", sentence(rng, 12, 30), '"""', "", "from __future__ import annotations", ""]
    head += sorted({*rng.sample(STDLIB, rng.randint(3, 7)), "import json", "import logging", "import math"})
    head += ["from dataclasses import dataclass", "from typing import Any"]
    if rng.random() < 0.5:
        head += ["", *sorted(rng.sample(THIRD_PARTY, rng.randint(1, 3)))]
    head += ["", f"{name(rng).upper()} = {rng.randint(1, 4096)}", f'{name(rng).upper()} = "{name(rng, 3)}"', "", ""]
    parts = ["\n".join(head) + "\n"]
    total = len(parts[0])
    # About one module in eight uses a loader or a serialiser legitimately (the rate of this repository's own code):
    # lines the gate's candidate patterns select and then the gate must confirm or dismiss.
    roll = rng.random()
    if roll < 0.04:
        parts.append(
            "def load_weights(path: str) -> object:\n    import torch\n\n"
            '    return torch.load(path, map_location="cpu", weights_only=True)\n\n\n'
        )
    elif roll < 0.08:
        parts.append(
            "def save_state(state: dict[str, Any], path: str) -> None:\n    import pickle\n\n"
            '    with open(path, "wb") as handle:\n        pickle.dump(state, handle)\n\n\n'
        )
    elif roll < 0.12:
        parts.append(
            "def tokenizer() -> object:\n    from transformers import AutoTokenizer\n\n"
            '    return AutoTokenizer.from_pretrained("oracle-ai/tokenizer-64k")\n\n\n'
        )
    while True:
        block = rng.choice(blocks)
        if total + len(block) // 2 > size:  # round to the nearer block boundary, so sizes come out unbiased
            return "".join(parts)
        parts.append(block + "\n\n")
        total += len(block) + 2


def yaml_file(rng: random.Random, size: int) -> str:
    lines = [f"# {sentence(rng)}", f"name: {name(rng)}", "model:", "  model_type: moe"]
    lines += [
        f"  model_name: oracle-ai/oracle-{rng.choice((8, 64, 850))}b",
        f"  hidden_size: {rng.choice((512, 2048))}",
    ]
    while sum(len(line) + 1 for line in lines) < size:
        lines.append(f"{name(rng)}:")
        for _ in range(rng.randint(2, 8)):
            value = rng.choice((str(rng.randint(0, 10_000)), f"{rng.random():.4f}", name(rng, 1), "true", "false"))
            lines.append(f"  {name(rng)}: {value}")
        if rng.random() < 0.3:
            lines.append(f"  {name(rng, 1)}s:")
            lines += [f"    - {name(rng)}" for _ in range(rng.randint(2, 5))]
    return "\n".join(lines) + "\n"


def json_file(rng: random.Random, size: int) -> str:
    document: dict[str, object] = {"model_type": "moe", "tokenizer_name": "oracle-ai/tokenizer-64k"}
    length = 0
    while length < size:
        section = {
            name(rng): rng.choice((rng.randint(0, 99999), rng.random(), name(rng), [1, 2, 3], None))
            for _ in range(rng.randint(3, 12))
        }
        document[name(rng, 3)] = section
        length += sum(len(key) + 20 for key in section) + 10
    return json.dumps(document, indent=2) + "\n"


def markdown_file(rng: random.Random, size: int) -> str:
    parts = []
    if rng.random() < 0.2:
        parts.append(f"---\ntitle: {camel(rng)}\nbase_model: oracle-ai/oracle850b-moe\nlicense: proprietary\n---\n")
    parts.append(f"# {camel(rng)}\n\n")
    links = (
        "https://docs.python.org/3/library/ast.html",
        "https://github.com/BurntSushi/ripgrep",
        "https://huggingface.co/docs/safetensors/index",  # not a model repository
        "https://huggingface.co/oracle-ai/oracle850b-moe",  # our own namespace
    )
    total = 0
    while total < size:
        roll = rng.random()
        if roll < 0.5:
            chunk = " ".join(sentence(rng) for _ in range(rng.randint(2, 6))) + "\n\n"
        elif roll < 0.65:
            chunk = f"## {camel(rng)}\n\n"
        elif roll < 0.8:
            chunk = "".join(f"- {sentence(rng, 3, 9)}\n" for _ in range(rng.randint(2, 6))) + "\n"
        elif roll < 0.9:
            chunk = f"See [{name(rng, 1)}]({rng.choice(links)}) for details.\n\n"
        else:
            chunk = f"```bash\noracle guards run --gate ci --format {rng.choice(('text', 'json', 'sarif'))}\n```\n\n"
        parts.append(chunk)
        total += len(chunk)
    return "".join(parts)


def shell_file(rng: random.Random, size: int) -> str:
    lines = ["#!/usr/bin/env bash", f"# {sentence(rng)}", "set -euo pipefail", ""]
    if rng.random() < 0.2:
        lines.append(f"export {VARIABLE}=false")
    while sum(len(line) + 1 for line in lines) < size:
        roll = rng.random()
        if roll < 0.3:
            lines.append(f'export {name(rng).upper()}="${{{name(rng).upper()}:-{rng.randint(1, 64)}}}"')
        elif roll < 0.55:
            lines += [
                f"for {name(rng, 1)} in {' '.join(name(rng, 1) for _ in range(3))}; do",
                f'  echo "{sentence(rng, 3, 8)}"',
                "done",
            ]
        elif roll < 0.75:
            lines.append(f"oracle submit --target {rng.choice(('slurm', 'k8s'))} --config configs/{name(rng)}.yaml")
        else:
            lines.append(f'python -m tools.{name(rng)} --out "runs/{name(rng)}" "$@"')
    return "\n".join(lines) + "\n"


def text_file(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    while text_size(lines) < size:
        lines += [f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} {sentence(rng, 5, 20)}" for _ in range(20)]
    return "\n".join(lines) + "\n"


def text_size(lines: list[str]) -> int:
    return sum(map(len, lines)) + len(lines)


def binary_file(rng: random.Random, size: int, png: bool) -> bytes:
    data = bytearray(rng.randbytes(size))
    data[:4] = b"BIN\x00"  # never the first bytes of a weights format (pickle, safetensors, GGUF, ...)
    if png:
        data[:16] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    return bytes(data)


def fake_safetensors(rng: random.Random, size: int) -> bytes:
    header = b'{"__metadata__":{}}'
    header += b" " * (-(len(header) + 8) % 8)
    return len(header).to_bytes(8, "little") + header + rng.randbytes(size)


PLANTED_PY_LOADER = """

def load_base_model() -> object:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
"""
PLANTED_PY_UNSAFE = """

def restore_state() -> object:
    import torch

    return torch.load("x.pt")
"""


def generate_tree(root: Path, n_files: int, seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Write the tree; return what it holds (counts and bytes by kind) and where each violation was planted."""
    rng = random.Random(seed)
    target_bytes = REFERENCE_BYTES * n_files // REFERENCE_FILES
    n_binary = max(3, n_files // 1000)
    binary_sizes = [rng.randint(50_000, 700_000) for _ in range(n_binary)]
    n_text = n_files - n_binary - len(PLANTED) - 2 - IGNORED_FILES  # the rest: planted, .gitignore, pyproject, ignored
    kinds: list[str] = []
    for kind, (share, _, _) in TEXT_KINDS.items():
        kinds += [kind] * int(share * n_text)
    kinds += ["py"] * (n_text - len(kinds))
    rng.shuffle(kinds)
    raw = [min(MAX_TEXT_BYTES, rng.lognormvariate(0, TEXT_KINDS[k][2]) * TEXT_KINDS[k][1]) for k in kinds]
    scale = (target_bytes - sum(binary_sizes)) / sum(raw)
    sizes = [max(200, int(s * scale)) for s in raw]

    packages = [f"{name(rng, 1)}_{i}" for i in range(12)]
    directories = {
        "py": [f"src/{p}/{name(rng, 1)}_{j}" for p in packages for j in range(25)] + ["tests/unit", "tests/e2e"],
        "yaml": ["configs", "configs/experiments", "deploy/k8s"],
        "json": ["configs/json", "data/schemas", "deploy/dashboards"],
        "md": ["docs", "docs/guides", "docs/adr", "notes"],
        "sh": ["scripts", "deploy/scripts"],
        "txt": ["notes", "logs/examples", "assets/notes"],
    }
    blocks = python_blocks(rng, 3000)
    writers = {"yaml": yaml_file, "json": json_file, "md": markdown_file, "sh": shell_file, "txt": text_file}
    suffix = {"py": ".py", "yaml": ".yaml", "json": ".json", "md": ".md", "sh": ".sh", "txt": ".txt"}
    files: dict[str, bytes | str] = {}
    for index, (kind, size) in enumerate(zip(kinds, sizes, strict=True)):
        path = f"{rng.choice(directories[kind])}/{name(rng)}_{index}{suffix[kind]}"
        files[path] = python_file(rng, size, blocks) if kind == "py" else writers[kind](rng, size)
    for index, size in enumerate(binary_sizes):
        png = index % 2 == 0
        files[f"assets/{'images' if png else 'blobs'}/{name(rng)}_{index}.{'png' if png else 'dat'}"] = binary_file(
            rng, size, png
        )

    # The planted violations, each in an otherwise ordinary file.
    planted = {rule: path.format(first=packages[0], second=packages[1]) for rule, path in PLANTED.items()}
    files[planted["EXT001"]] = python_file(rng, 3000, blocks) + PLANTED_PY_LOADER
    files[planted["EXT006"]] = python_file(rng, 3000, blocks) + PLANTED_PY_UNSAFE
    files[planted["EXT002"]] = (
        markdown_file(rng, 2000) + "The base weights: https://huggingface.co/meta-llama/Llama-2-7b-hf\n"
    )
    files[planted["EXT003"]] = yaml_file(rng, 800).replace(
        "model:\n", "model:\n  base_model: mistralai/Mistral-7B-v0.1\n", 1
    )
    files[planted["LTR001"]] = shell_file(rng, 600) + f"export {VARIABLE}=true\npython -m tools.train_local\n"
    files[planted["EXT005"]] = fake_safetensors(rng, 4096)
    files[".gitignore"] = "__pycache__/\n*.pyc\n.venv/\n.oracle/\nruns/\n*.log\n"
    # the tree is a repository of its own (not an Oracle checkout): it declares the Hub namespace its code uses
    files["pyproject.toml"] = (
        '[project]\nname = "benchtree"\nversion = "0"\n\n'
        '[tool.oracle.external_weights]\nallowed_namespaces = ["oracle-ai"]\n'
    )
    for index in range(IGNORED_FILES):  # ignored by git, so neither the gate nor rg should read them
        files[f"runs/ignored_{index}.log"] = text_file(rng, 5000)

    by_kind: Counter[str] = Counter()
    bytes_by_kind: Counter[str] = Counter()
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
        kind = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else "other"
        by_kind[kind] += 1
        bytes_by_kind[kind] += len(data)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, *GIT_IDENTITY, "commit", "-q", "--no-verify", "-m", "generated tree")
    shape = {
        "files": sum(by_kind.values()),
        "bytes": sum(bytes_by_kind.values()),
        "files_by_kind": dict(sorted(by_kind.items())),
        "bytes_by_kind": dict(sorted(bytes_by_kind.items())),
    }
    return shape, planted


def many_findings_tree(root: Path, n_files: int, blocks: int, seed: int) -> int:
    """A repository whose every Python module holds `blocks` violating blocks among filler code; returns how many
    findings the gate must report (three per block)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for index in range(n_files):
        parts = ["import pickle\n\nfrom transformers import AutoModelForCausalLM\n"]
        for block in range(blocks):
            parts.append(python_function(rng))
            parts.append(
                f'\n\ndef load_{block}(path):\n    """Weights from https://huggingface.co/org{index}/model-{block}."""\n'
                f'    model = AutoModelForCausalLM.from_pretrained("org{index}/model-{block}")\n'
                "    with open(path, 'rb') as handle:\n        return model, pickle.load(handle)\n"
            )
        target = root / "pkg" / f"mod{index // 100}" / f"m{index}.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(parts))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@oracle.invalid", "commit", "-q", "-m", "tree")
    return n_files * blocks * 3


def many_findings_case(oracle: str, rg: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Gate and rg on the many-findings tree at 1x and 2x blocks per file; fails unless every finding is found."""
    rg_argv = [rg, "--no-config", "--hidden", "-g", "!.git", "--line-number", "--column", "--with-filename"]
    rg_argv += ["--no-heading", *[arg for pattern in gate_patterns() for arg in ("-e", pattern)], "--", "."]
    out: dict[str, Any] = {}
    for scale in (1, 2):
        tree = workdir / f"many-{scale}x"
        expected = many_findings_tree(tree, args.many_files, args.many_blocks * scale, args.seed)
        _, report = gate_report(oracle, tree, "ci", workdir / f"many-{scale}x.json")
        found = len(report["findings"])
        if found < expected:
            raise SystemExit(f"guards_scan[many] {scale}x: the gate found {found} of {expected} planted findings")
        gate_argv = [oracle, "guards", "run", "--gate", "ci", "--root", str(tree), "--format", "json"]
        gate_argv += ["--output", os.devnull]
        times = interleaved({"gate": (gate_argv, None, (1,)), "rg": (rg_argv, tree, (0,))}, args.repeats)
        medians = {key: statistics.median(values) for key, values in times.items()}
        out[f"{scale}x"] = {
            "findings": found,
            "seconds_median": medians,
            "ratio_gate_over_rg": medians["gate"] / medians["rg"],
        }
        print(
            f"guards_scan[many] {args.many_files} files x {args.many_blocks * scale} blocks: {found} findings, "
            f"gate {medians['gate']:.3f} s, rg {medians['rg']:.3f} s, ratio {medians['gate'] / medians['rg']:.2f}x"
        )
    growth_gate = out["2x"]["seconds_median"]["gate"] / out["1x"]["seconds_median"]["gate"]
    growth_rg = out["2x"]["seconds_median"]["rg"] / out["1x"]["seconds_median"]["rg"]
    out["growth"] = {"gate": growth_gate, "rg": growth_rg}
    print(f"guards_scan[many] 1x -> 2x findings: gate grows {growth_gate:.2f}x, rg {growth_rg:.2f}x (linear: ~2x)")
    return out


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


# --- measuring ----------------------------------------------------------------------------------------------------
def timed(argv: list[str], cwd: Path | None = None, *, allowed: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of one command (interpreter start included), its stdout on /dev/null."""
    start = time.perf_counter()
    completed = subprocess.run(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if completed.returncode not in allowed:
        stderr = completed.stderr.decode(errors="replace").strip()[-2000:]
        raise SystemExit(f"guards_scan: {' '.join(argv[:6])} ... exited {completed.returncode}:\n{stderr}")
    return elapsed


Command = tuple[list[str], Path | None, tuple[int, ...]]  # argv, cwd, the exit codes that are not failures


def interleaved(commands: dict[str, Command], repeats: int, *, warm_up: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each command, `repeats` times, interleaved, after one warm-up run of each."""
    for argv, cwd, allowed in commands.values() if warm_up else ():  # page cache, .pyc files
        timed(argv, cwd, allowed=allowed)
    times: dict[str, list[float]] = {key: [] for key in commands}
    for _ in range(repeats):
        for key, (argv, cwd, allowed) in commands.items():
            times[key].append(timed(argv, cwd, allowed=allowed))
    return times


def gate_report(oracle: str, tree: Path, gate: str, report: Path) -> tuple[float, dict[str, Any]]:
    """One run of a gate with its JSON report kept (it doubles as the warm-up); errors of the run are fatal."""
    argv = [oracle, "guards", "run", "--gate", gate, "--root", str(tree), "--format", "json", "--output", str(report)]
    seconds = timed(argv, allowed=(0, 1))
    result: dict[str, Any] = json.loads(report.read_text())
    if result["errors"]:
        raise SystemExit(f"guards_scan: the {gate} gate reported errors: {result['errors']}")
    return seconds, result


def gate_patterns() -> list[str]:
    """The patterns of the gate's one ripgrep pass with default settings (the tree has no policies.toml)."""
    settings = Settings()
    patterns = [pattern for policy in ALL_POLICIES if policy.patterns for pattern in policy.patterns(settings)]
    if VARIABLE not in patterns:
        raise SystemExit(f"guards_scan: the policies' patterns {patterns} lack {VARIABLE}")
    return list(dict.fromkeys(patterns))


def check_findings(result: dict[str, Any], planted: dict[str, str]) -> dict[str, int]:
    """Fail loudly unless the ci gate found every planted violation where it was planted."""
    found = Counter(str(finding["rule_id"]) for finding in result["findings"])
    places = {(str(finding["rule_id"]), str(finding["path"])) for finding in result["findings"]}
    missing = [rule for rule in EXPECTED_RULES if (rule, planted[rule]) not in places]
    if missing:
        raise SystemExit(
            f"guards_scan: the ci gate did not find the planted {', '.join(missing)} "
            f"(found: {dict(found) or 'nothing'}); timing a gate that finds nothing is meaningless"
        )
    unexpected = sorted(places - {(rule, planted[rule]) for rule in EXPECTED_RULES})
    if unexpected:
        print(f"guards_scan: warning: findings beyond the planted ones (false positives?): {unexpected[:10]}")
    return dict(sorted(found.items()))


def stage_changes(tree: Path, count: int, planted: dict[str, str]) -> list[str]:
    """Modify `count` tracked Python files and stage them: what a commit gate sees for a small change."""
    tracked = sorted(
        path
        for path in git(tree, "ls-files").splitlines()
        if path.endswith(".py") and path.startswith("src/") and path not in planted.values()
    )
    chosen = random.Random(1).sample(tracked, count)
    for path in chosen:
        with (tree / path).open("a", encoding="utf-8") as handle:
            handle.write(
                '\n\ndef added_in_this_change(value: int) -> int:\n    """One more helper."""\n    return value * 2\n'
            )
    git(tree, "add", "--", *chosen)
    staged = git(tree, "diff", "--cached", "--name-only").split()
    if sorted(staged) != sorted(chosen):
        raise SystemExit(f"guards_scan: staged {staged}, expected {chosen}")
    return chosen


def check_commit_scope(result: dict[str, Any], staged: list[str]) -> None:
    """Fail loudly unless the commit gate examined exactly the staged files and found nothing in them."""
    examined = set(result["examined"].get("external_weights", {}).get("files", []))
    if examined != set(staged) or result["findings"]:
        raise SystemExit(
            f"guards_scan: the commit gate examined {sorted(examined)} and found {len(result['findings'])} "
            f"findings; expected exactly the staged {staged} and none"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=REFERENCE_FILES, help="files in the generated tree")
    parser.add_argument("--many-files", type=int, default=1000, help="files of the many-findings tree (0: skip)")
    parser.add_argument("--many-blocks", type=int, default=4, help="violating blocks per file at 1x")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated tree (its path is printed)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()
    if args.files < 100 or args.repeats < 1:
        parser.error("--files must be at least 100 and --repeats at least 1")

    oracle = str(Path(sys.executable).parent / "oracle")
    if not Path(oracle).exists():
        raise SystemExit(f"guards_scan: no console script at {oracle}; install the project into this environment")
    rg = _ripgrep()
    workdir = Path(tempfile.mkdtemp(prefix="guards_scan."))
    tree = workdir / "repo"
    tree.mkdir()
    try:
        start = time.perf_counter()
        shape, planted = generate_tree(tree, args.files, args.seed)
        print(
            f"guards_scan: generated {shape['files']} files, {shape['bytes'] / 1e6:.1f} MB in {tree} "
            f"({time.perf_counter() - start:.1f} s, seed {args.seed})"
        )
        first_ci, report = gate_report(oracle, tree, "ci", workdir / "ci-report.json")
        found = check_findings(report, planted)

        gate_argv = [oracle, "guards", "run", "--gate", "ci", "--root", str(tree), "--format", "json"]
        gate_argv += ["--output", os.devnull]
        rg_argv = [rg, "--no-config", "--hidden", "-g", "!.git", "--line-number", "--column", "--with-filename"]
        rg_argv += ["--no-heading"]
        for pattern in gate_patterns():
            rg_argv += ["-e", pattern]
        rg_argv += ["--", "."]
        rg_run = subprocess.run(rg_argv, cwd=tree, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        rg_lines = rg_run.stdout.count(b"\n")  # this run and the report run above are the warm-ups
        ci_commands: dict[str, Command] = {"gate": (gate_argv, None, (0, 1)), "rg": (rg_argv, tree, (0, 1))}
        ci_times = interleaved(ci_commands, args.repeats, warm_up=False)
        ci = {key: statistics.median(values) for key, values in ci_times.items()}
        ci_ratio = ci["gate"] / ci["rg"]

        staged = stage_changes(tree, STAGED_FILES, planted)
        check_commit_scope(gate_report(oracle, tree, "commit", workdir / "commit-report.json")[1], staged)
        commit_argv = [oracle, "guards", "run", "--gate", "commit", "--root", str(tree)]
        commit_times = interleaved(
            {"gate": (commit_argv, None, (0, 1)), "python": ([sys.executable, "-c", "pass"], None, (0,))},
            args.repeats,
        )
        commit = {key: statistics.median(values) for key, values in commit_times.items()}
        commit_ratio = commit["gate"] / commit["python"]

        many = many_findings_case(oracle, rg, workdir, args) if args.many_files else None

        size = f"{shape['files']} files, {shape['bytes'] / 1e6:.0f} MB"
        print(
            f"guards_scan[ci] the first run found {found} ({first_ci:.1f} s); "
            f"rg alone prints {rg_lines} candidate lines"
        )
        print(
            f"guards_scan[ci] {size}: gate {ci['gate']:.3f} s, rg {ci['rg']:.3f} s, "
            f"ratio {ci_ratio:.2f}x (target <= {CI_TARGET_RATIO:.0f}x)"
        )
        print(
            f"guards_scan[commit] {STAGED_FILES} staged files: gate {commit['gate']:.3f} s "
            f"(target <= {COMMIT_TARGET_SECONDS} s), python -c pass {commit['python']:.3f} s, "
            f"ratio {commit_ratio:.1f}x"
        )
        if args.keep:
            print(f"guards_scan: kept the tree at {tree}")
        results = {
            "tree": {**shape, "planted": planted, "path": str(tree) if args.keep else None, "seed": args.seed},
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "ci": {
                "seconds_median": ci,
                "seconds_all": ci_times,
                "ratio_gate_over_rg": ci_ratio,
                "target_ratio": CI_TARGET_RATIO,
                "findings": found,
                "first_run_seconds": first_ci,
                "rg_matching_lines": rg_lines,
            },
            "many_findings": many,
            "commit": {
                "staged": staged,
                "seconds_median": commit,
                "seconds_all": commit_times,
                "target_seconds": COMMIT_TARGET_SECONDS,
                "ratio_gate_over_python": commit_ratio,
            },
        }
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
