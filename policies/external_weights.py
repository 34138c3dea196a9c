"""Policy `external_weights`: no pretrained weights or model references from outside our own namespace.

EXT001 loader calls (`from_pretrained`, `hf_hub_download`, `torch.hub.load`, `pipeline(model=...)`, ...) whose repo id
resolves, statically, outside our namespace — or cannot be resolved at all (fail closed). EXT002 URLs to model hubs
or weight files. EXT003 foreign model identifiers in configs and model cards. EXT004 imports of foreign model
architectures. EXT005 weight files in the tree, recognised by content whatever their extension, unless they are our
own provenance-signed checkpoints. EXT006 unsafe deserialisation (pickle, `torch.load` without `weights_only=True`).

Candidate lines come from one ripgrep pass; Python confirms them in context (the AST for code, including the code
cells of Jupyter notebooks; key/value structure for configs), so words such as `Optional`, `optimizer` or
`graphics` never match a model family.
"""

from __future__ import annotations

import ast
import functools
import os
import re

from policies import python_loads, text_references
from policies.context import Line, ScanContext
from policies.rule import ALL_GATES, Policy, PolicyResult, Rule, Severity
from policies.settings import Settings
from policies.weight_formats import executes_code, weights_kind_open

NAME = "external_weights"

FOREIGN_LOADER = Rule(
    id="EXT001",
    policy=NAME,
    title="Model or weights loaded from outside our namespace",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Weights fetched from a hub at run time are external pretrained weights: their licence, training data "
    "and content are not ours, and nothing proves what was loaded.",
    fix="Load our own checkpoints (oracle.moe850b.weights.load_checkpoint) or a repo id in an allowed namespace "
    "(policies.toml: external_weights.allowed_namespaces).",
    example='model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B")',
    example_fix='model = load_checkpoint("runs/oracle850b/step-1000")',
)
HUB_URL = Rule(
    id="EXT002",
    policy=NAME,
    title="URL of a foreign model or weight file",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="A link to a model repository or a weights file is a foreign model reference and an invitation to "
    "download it.",
    fix="Remove the URL, or point to our own namespace on the Hub.",
    example="wget https://huggingface.co/mistralai/Mistral-7B-v0.1/resolve/main/model.safetensors",
    example_fix="# weights come only from our own training runs (provenance.json beside them)",
)
FOREIGN_IDENTIFIER = Rule(
    id="EXT003",
    policy=NAME,
    title="Foreign model identifier in a config or model card",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Keys such as base_model or model_name_or_path declare (and make tools fetch) a model that is not ours.",
    fix="Use our own model id (an allowed namespace) or remove the key.",
    example="base_model: meta-llama/Llama-2-7b-hf",
    example_fix="base_model: oracle-ai/oracle850b-moe",
)
FOREIGN_ARCHITECTURE = Rule(
    id="EXT004",
    policy=NAME,
    title="Import of a foreign model architecture",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Foreign architecture classes exist to load foreign checkpoints; our model is defined in oracle/moe850b.",
    fix="Use oracle.moe850b.OracleMoE.",
    example="from transformers import LlamaForCausalLM",
    example_fix="from oracle.moe850b import OracleMoE",
)
WEIGHT_FILE = Rule(
    id="EXT005",
    policy=NAME,
    title="Weight file in the tree without our provenance",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="A weights file (safetensors, pickle, PyTorch zip, GGUF, ONNX, HDF5, TFLite) that our training did not "
    "sign may be foreign, and pickle-based ones execute code when loaded.",
    fix="Remove it from the tree; checkpoints of our own carry a signed provenance.json beside them.",
    example="assets/encoder.txt   # really a PyTorch zip archive",
    example_fix="runs/ (ignored by git), or a checkpoint directory with a verifying provenance.json",
)
UNSAFE_DESERIALISATION = Rule(
    id="EXT006",
    policy=NAME,
    title="Unsafe deserialisation of model data",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="pickle (and torch.load without weights_only=True) runs arbitrary code from the file being loaded.",
    fix="Use safetensors (oracle.moe850b.weights) or torch.load(..., weights_only=True).",
    example='state = torch.load("model.pt")',
    example_fix='state = torch.load("model.pt", weights_only=True)  # better: safetensors.torch.load_file',
)
RULES = (FOREIGN_LOADER, HUB_URL, FOREIGN_IDENTIFIER, FOREIGN_ARCHITECTURE, WEIGHT_FILE, UNSAFE_DESERIALISATION)

# --- what counts as foreign -------------------------------------------------------------------------------------
FOREIGN_FAMILIES = (
    "llama", "codellama", "mistral", "mixtral", "gpt", "gptj", "gpt-j", "gpt-neo", "gpt-neox", "falcon", "bloom", "opt",
    "phi", "gemma", "qwen", "baichuan", "deepseek", "bert", "roberta", "deberta", "t5", "bart", "whisper",
    "clip", "stablelm", "starcoder", "vicuna", "dbrx", "olmo", "pythia", "mpt", "jamba", "grok", "internlm",
    "chatglm", "yi", "command-r", "granite", "smollm", "nemotron", "exaone", "minicpm", "tinyllama", "llava",
    "zephyr", "openchat", "codegen", "santacoder", "openelm", "internvl", "idefics", "moondream", "rwkv",
    "cohere", "glm", "lfm", "smolvlm", "ministral", "olmoe", "gptneox",
)  # fmt: skip
# Candidate lines for the Python checks: the loader table's names and libraries, foreign modules, deserialisers
# (the AST confirms them). Generic names (`load(`, `pipeline(`) matter only in files that name their library, which
# these words already select.
_DESERIALISER_WORDS = (
    r"pickle|torch\.load|serialization\.load|from torch import|import torch as|getattr\(\s*torch\b|joblib|\bdill\b"
    r"|read_pickle|allow_pickle|Unpickler|Copied from transformers|\bshelve\b|\b(?:np|numpy)\.load\([^)]*,[^)]*,"
    r"|\b(?:model|model_id|model_name|model_name_or_path|pretrained_model_name_or_path|base_model)\s*=\s*[rbf]?[\"'][\w.-]+/"
)
_CODE_WORDS = "|".join(rf"\b{re.escape(word)}\b" for word in python_loads.table().words()) + "|" + _DESERIALISER_WORDS
# Spans that are safe on their own line, so a file whose candidate lines hold nothing else needs no parse: a complete
# `torch.load(..., weights_only=True)`, `pickle.dump(s)(`, a plain `import pickle|torch`, and (built per settings) a
# one-line `from_pretrained("<allowed namespace or local path>")`.
_ARGS = r"(?:[^()]|\([^()]*\))*"
_SAFE_SPANS = re.compile(
    rf"torch\.load\({_ARGS}\bweights_only\s*=\s*True\b{_ARGS}\)"
    r"|\bpickle\.dumps?\(|^\s*import (?:pickle|torch)\s*(?:#.*)?$"
)
_FROM_IMPORT = re.compile(r"^\s*from\s+(transformers|peft|optimum)\s+import\s+\(?([\w\s,]+)\)?\s*(?:#.*)?$")


def family_of(value: str, extra: tuple[str, ...] = ()) -> str | None:
    """The foreign model family a value names as a whole word, with an optional version ("phi-2", "Llama-3.1-8B",
    "qwen2.5"); never a family hidden inside another word ("graphics", "Optional", "optimizer", "prompt")."""
    pattern = _family_pattern(extra)
    match = pattern.search(value.lower())
    if match is None and value != value.lower():  # a class name glued to the family: "tiny-GemmaForCausalLM"
        match = pattern.search(_CAMEL_ACRONYM.sub(r"\1 \2", _CAMEL.sub(r"\1 \2", value)).lower())
    return match.group(1) if match else None


_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")  # "OPTForCausalLM": "OPT For…"


@functools.lru_cache(maxsize=8)
def _family_pattern(extra: tuple[str, ...]) -> re.Pattern[str]:
    families = "|".join(re.escape(name.lower()) for name in (*FOREIGN_FAMILIES, *extra))
    return re.compile(rf"(?<![a-z0-9])({families})(?:[-_.]?\d[\d.]*)?(?![a-z])")


# Folders runs write to: `outputs/final` is a path, not the model "final" of a Hub organisation called "outputs".
# (the reference layer's table; `data/` is a folder of data there, never one a model is loaded from here)
LOCAL_ROOTS = text_references.LOCAL_ROOTS - {"data"}


_PATH_SUFFIX = re.compile(
    r"\.(pt|pth|bin|safetensors|ckpt|gguf|onnx|h5|pkl|npz|npy|json|ya?ml|toml|txt|model|msgpack|tar|gz|zip)$", re.I
)


def _namespace_ok(value: str, ctx: ScanContext) -> bool:
    """A local path or a repo id whose org is one of ours. A repo id is exactly `org/name`: a value of three or more
    segments, or with a file suffix, is a path (foreign only when it names a foreign model: `checkpoints/meta-llama/
    Llama-2-7b` is a local copy of one)."""
    value = value.strip()
    if value.startswith(("/", "./", "../", "~")) or value.endswith("/"):
        return True
    first = value.split("/", 1)[0]
    if "/" in value and first and (ctx.root / first).is_dir():  # "checkpoints/step-1000": a folder of this tree
        return True
    foreign_family = family_of(value, tuple(ctx.settings.external_weights.extra_forbidden_names)) is not None
    if "/" in value and (first in LOCAL_ROOTS or value.count("/") >= 2 or _PATH_SUFFIX.search(value)):
        return not foreign_family
    org = value.split("/", 1)[0] if "/" in value else ""
    return org in ctx.settings.external_weights.allowed_namespaces


def candidate_patterns(extra_loader_calls: list[str] | None = None, extra_forbidden: tuple[str, ...] = ()) -> list[str]:
    """The ripgrep patterns of this policy's one pass (code words first, then the reference layer's)."""
    extra = "|".join(re.escape(name) for name in extra_loader_calls or [])
    references = text_references.candidate_patterns((*FOREIGN_FAMILIES, *extra_forbidden))
    return [_CODE_WORDS + (f"|{extra}" if extra else ""), *references]


def _patterns(settings: Settings) -> list[str]:
    weights = settings.external_weights
    return candidate_patterns(weights.extra_loader_calls, tuple(weights.extra_forbidden_names))


def check(ctx: ScanContext) -> PolicyResult:
    result = PolicyResult()
    patterns = _patterns(ctx.settings)
    code_words = re.compile(patterns[0])
    for path in ctx.files:  # content sniffing first: it overlaps the ripgrep pass the runner started
        result.examined.append(path)
        _check_weight_file(ctx, path, result)
        ctx.kind(path)  # while its first bytes are at hand and ripgrep still runs (every policy asks for it)
    candidates = ctx.grep(patterns)
    judge = _reference_judge(ctx)
    code_lines: dict[str, set[int]] = {}  # lines of each path's EXT001/EXT004 findings
    for path in ctx.files:
        if path not in candidates:
            continue
        lines = candidates[path]
        kind = ctx.kind(path)  # by name, extension and shebang: an extensionless script is Python too
        spans: set[int] = set()
        before = len(result.findings)
        if (kind == "python" and _needs_parse(lines, code_words, ctx)) or (
            kind == "notebook" and any(code_words.search(line.text) for line in lines)
        ):
            spans = _check_python(ctx, path, result)
        elif (
            kind == "markdown"
            and _python_fence_in(ctx.text(path) or "")  # else there is no code to read: cheaper than the words
            and any(code_words.search(line.text) for line in lines)
        ):
            spans = _check_markdown_code(ctx, path, result)
        elif path.endswith(_CYTHON) and any(code_words.search(line.text) for line in lines):
            ctx.not_analysed(path, "Cython source: read as text only (loaders it names are reported)")
            for fallback in python_loads.text_fallback([(line.number, line.text) for line in lines]):
                rule = _RULES_BY_ID[fallback.rule_id]
                result.findings.append(
                    rule.finding(path, fallback.line, fallback.column, fallback.message, fallback.message)
                )
        reported = code_lines.setdefault(path, set())
        reported.update(f.line for f in result.findings[before:] if f.path == path and f.rule_id in _CODE_RULES)
        if kind == "binary":
            continue
        numbered = [(line.number, line.text) for line in lines]
        # a line the code layer already reported (a loader called with this id) is not reported again as a name
        loaded = spans | reported
        for hit in text_references.check_text(path, kind, ctx.text(path) or "", numbered, judge):
            if hit.rule_id == "EXT003" and hit.line in loaded:
                continue
            rule = HUB_URL if hit.rule_id == "EXT002" else FOREIGN_IDENTIFIER
            result.findings.append(rule.finding(path, hit.line, hit.column, hit.message, hit.matched))
    return result


def _reference_judge(ctx: ScanContext) -> text_references.Judge:
    extra = tuple(ctx.settings.external_weights.extra_forbidden_names)
    root = ctx.root
    local_dirs: dict[str, bool] = {}

    def is_local_dir(first: str) -> bool:
        if first not in local_dirs:
            local_dirs[first] = bool(first) and first not in {".", ".."} and (root / first).is_dir()
        return local_dirs[first]

    return text_references.Judge(
        allowed_namespaces=tuple(ctx.settings.external_weights.allowed_namespaces),
        is_local_dir=is_local_dir,
        family_of=lambda value: family_of(value, extra),
    )


# --- EXT001, EXT004, EXT006: Python in context ------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _safe_loader(allowed: tuple[str, ...]) -> re.Pattern[str]:
    prefixes = "|".join([*(re.escape(ns) + "/" for ns in allowed), r"\./", r"\.\./", "/"])
    return re.compile(rf"""\.from_pretrained\(\s*(["'])(?:{prefixes})[^"'{{}}]*\1\s*[,)]""")


def _needs_parse(lines: list[Line], code_words: re.Pattern[str], ctx: ScanContext) -> bool:
    """Whether any candidate line still names a loader, foreign module or deserialiser once the spans that are
    safe on their own are taken out (a multi-line or aliased use always leaves something behind)."""
    safe_loader = _safe_loader(tuple(ctx.settings.external_weights.allowed_namespaces))
    for line in lines:
        text = safe_loader.sub("", _SAFE_SPANS.sub("", line.text))
        imported = _FROM_IMPORT.match(text)
        names = [part.split()[0] for part in imported[2].split(",") if part.split()] if imported else []
        if imported and names and all(not python_loads.looks_like_model_class(name) for name in names):
            continue  # e.g. `from transformers import AutoTokenizer`: no architecture, no loader by itself
        if code_words.search(text):
            return True
    return False


def _check_python(ctx: ScanContext, path: str, result: PolicyResult) -> set[int]:
    """A Python file or a notebook's code cells (findings in a notebook name the cell and its line); what does not
    parse is read by the text fallback (fail closed). Returns the lines the loader and architecture findings span."""
    program = ctx.python_program(path)
    if program is None:
        return set()  # binary, unreadable or not a notebook: the reading layer recorded it as not analysed
    source, cells = program.source, program.cells
    judge = _judge(ctx, path)
    hits: list[python_loads.Hit] = []
    if program.tree is not None:
        hits = python_loads.analyse(program.tree, judge)
    unparsed = list(program.unparsed)
    if program.tree is None and not unparsed:
        unparsed = [(1, source)]
    for first, chunk in unparsed:
        numbered = [(first + offset, text) for offset, text in enumerate(chunk.split("\n"))]
        hits += python_loads.text_fallback(numbered)
    if not hits:
        return set()
    source_lines = source.split("\n")
    spans = {n for hit in hits if hit.rule_id in {"EXT001", "EXT004"} for n in range(hit.line, hit.end_line + 1)}
    for hit in hits:
        matched = _segment(source_lines, hit)
        line, message = hit.line, hit.message
        if cells and 0 < line <= len(cells):  # a notebook: the file's own line numbers mean nothing to a reader
            cell, cell_line = cells[line - 1]
            message, line = f"cell {cell}, line {cell_line}: {message}", 0
        rule = _RULES_BY_ID[hit.rule_id]
        result.findings.append(rule.finding(path, line, hit.column, message, matched or message))
    return set() if cells else spans


_CYTHON = (".pyx", ".pxd", ".pxi")
# A fenced code block of Python in Markdown, MyST, Quarto or R Markdown: ```python, ```{python}, ```{code-cell} ipython3
_PYTHON_FENCE = re.compile(r"^\s*(```|~~~)\s*\{?\s*(python3?|py|ipython3?|code-cell\s+(python3?|ipython3?))\b", re.I)


_FENCE_LANGUAGE = re.compile(r"\s*\{?\s*(?i:py|ipython|code-cell)")  # what follows a fence that _PYTHON_FENCE opens


def _python_fence_in(text: str) -> bool:
    """Whether `text` may hold a block _PYTHON_FENCE opens (a fence, then a language that starts like a Python one)."""
    for fence in ("```", "~~~"):
        start = text.find(fence)
        while start != -1:
            if _FENCE_LANGUAGE.match(text, start + 3):
                return True
            start = text.find(fence, start + 1)
    return False


def _check_markdown_code(ctx: ScanContext, path: str, result: PolicyResult) -> set[int]:
    """Python code blocks of a document, analysed as code (line numbers kept). Examples in documentation load
    nothing by themselves: what they name is judged, an id they leave unresolved is not a finding."""
    text = ctx.text(path) or ""
    program: list[str] = []
    inside = False
    for line in text.split("\n"):
        if not inside and _PYTHON_FENCE.match(line):
            inside = True
            program.append("")
        elif inside and line.strip().startswith(("```", "~~~")):
            inside = False
            program.append("")
        else:
            program.append(line if inside and not line.lstrip().startswith(("%", "!", ">>>")) else "")
    source = "\n".join(program)
    if not source.strip():
        return set()
    tree = _parse_example(source)
    if tree is None:
        return set()  # an example that does not parse is prose to the reader; the reference layer still reads it
    judge = _judge(ctx)
    judge.fail_closed = False
    source_lines = source.split("\n")
    spans: set[int] = set()
    for hit in python_loads.analyse(tree, judge):
        if hit.rule_id == "EXT004":
            continue  # an example importing a class explains, it does not implement
        rule = _RULES_BY_ID[hit.rule_id]
        result.findings.append(rule.finding(path, hit.line, hit.column, hit.message, _segment(source_lines, hit)))
        spans.update(range(hit.line, hit.end_line + 1))
    return spans


def _parse_example(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _segment(source_lines: list[str], hit: python_loads.Hit) -> str:
    """The source text of a hit, from the file's lines split once (not ast.get_source_segment, which splits the
    whole file again for every finding)."""
    if not 0 < hit.line <= len(source_lines):
        return ""
    if hit.end_line == hit.line:
        return source_lines[hit.line - 1][hit.column - 1 : hit.end_column]
    last = min(hit.end_line, len(source_lines))
    parts = [source_lines[hit.line - 1][hit.column - 1 :], *source_lines[hit.line : last - 1]]
    parts.append(source_lines[last - 1][: hit.end_column])
    return "\n".join(parts)


def _judge(ctx: ScanContext, path: str = "") -> python_loads.Judge:
    return python_loads.Judge(
        package=".".join(path.split("/")[:-1]),
        namespace_ok=lambda value: _namespace_ok(value, ctx),
        family_of=lambda value: family_of(value, tuple(ctx.settings.external_weights.extra_forbidden_names)),
        load_config=lambda relative: _load_config(ctx, relative),
        own_packages=_own_packages(ctx),
        extra_loaders=frozenset(ctx.settings.external_weights.extra_loader_calls),
    )


def _load_config(ctx: ScanContext, relative: str) -> object | None:
    """A JSON or YAML file of the tree a program opens with a literal path, parsed (None when it is not one)."""
    import json

    import yaml

    target = (ctx.root / relative).resolve()
    if not target.is_relative_to(ctx.root.resolve()) or not target.is_file():
        return None
    text = target.read_text(encoding="utf-8", errors="replace")
    try:
        loaded: object = json.loads(text) if target.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        return None
    return loaded


def _own_packages(ctx: ScanContext) -> frozenset[str]:
    """The scanned repository's own top-level packages (folders with __init__.py at the root or under src/):
    importing them is never a foreign model implementation, whatever they are called."""
    cached = getattr(ctx, "_own_packages", None)
    if cached is None:
        found = set()
        for base in (ctx.root, ctx.root / "src"):
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(entry.path, "__init__.py")):
                    found.add(entry.name)
        cached = frozenset(found)
        object.__setattr__(ctx, "_own_packages", cached)
    return cached


def _compiled_python(ctx: ScanContext, path: str) -> bool:
    """A .pyc/.pyo file, or any file that starts like one (a CPython 3 magic number and \\r\\n)."""
    if path.endswith((".pyc", ".pyo")):
        return True
    head = ctx.head(path, 4)
    return len(head) == 4 and head[2:4] == b"\r\n" and 3000 <= int.from_bytes(head[:2], "little") < 4000


# --- EXT005: weight files by content (policies.weight_formats) -------------------------------------------------
def _check_weight_file(ctx: ScanContext, path: str, result: PolicyResult) -> None:
    """Every selected file, whatever its size: its structure (archives, pointers included) says whether it is
    weights. A file that cannot be read is reported as not analysed (never a pass)."""
    try:
        kind = ctx.sniff(path, weights_kind_open)
    except OSError as exc:
        ctx.not_analysed(path, f"unreadable ({exc.strerror or exc})")
        return
    if kind is None:
        if _compiled_python(ctx, path):
            ctx.not_analysed(path, "compiled Python bytecode: the code it runs cannot be checked; commit its source")
        return
    verify = ctx.verify_provenance
    if verify is not None and verify(path):
        return
    runs_code = "; loading it runs code from the file" if executes_code(kind) else ""
    message = f"{path} holds weights ({kind}) without a verifying provenance.json{runs_code}"
    result.findings.append(WEIGHT_FILE.finding(path, 0, 0, message, kind))


_RULES_BY_ID = {rule.id: rule for rule in RULES}
_CODE_RULES = frozenset({FOREIGN_LOADER.id, FOREIGN_ARCHITECTURE.id})

POLICY = Policy(NAME, RULES, check, _patterns)
