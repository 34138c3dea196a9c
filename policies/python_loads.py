"""Layer 3 of `external_weights`, code: what a Python program loads, resolved statically.

Calls are resolved through imports, `import ... as`, assignments of a callable to a name, `getattr(x, "name")` with a
constant name, dictionaries of callables indexed by a key (dispatch tables), `functools.partial` and instances of
hub clients (`fs = HfFileSystem(); fs.open(...)`), then matched against the loader vocabulary of
`policies/loaders.toml` (one table, as data). What is known to be safe is kept out: in-memory pickle round trips,
`weights_only=True`, a model saved and reloaded from a temporary folder of the same program, our own namespaces and
local paths, datasets, and the scanned repository's own package. Code that does not parse is read by a text fallback
that reports any loader or deserialiser it names (fail closed).

The module knows nothing of rules or files: it returns `Hit`s (rule id, place, message) for the caller to report.
"""

from __future__ import annotations

import ast
import functools
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from oracle_base.errors import ConfigurationError
from policies.text_references import PLACEHOLDER_ORGS

TABLE_FILE = Path(__file__).with_name("loaders.toml")

# Modules whose import is itself the use of a foreign model implementation (a model zoo or a model's code). Utility
# packages of the ecosystem (vllm, peft, optimum, diffusers' pipelines...) are judged by the loaders they call.
MODEL_IMPLEMENTATION_MODULES = (
    "transformers.models",
    "timm.models",
    "open_clip",
    "torchvision.models",
    "diffusers.models",
    "vllm.model_executor.models",
    "mlx_lm.models",
    "sentence_transformers.models",
    "megablocks",
    "tutel",
)
# Libraries whose classes named like models are foreign model classes.
MODEL_LIBRARIES = {"transformers", "peft", "optimum", "diffusers", "vllm", "timm", "open_clip", "mlx_lm"}
_MODEL_CLASS = re.compile(
    r"^\w*?(ForCausalLM|ForConditionalGeneration|ForSequenceClassification|ForMaskedLM|ForQuestionAnswering"
    r"|ForTokenClassification|LMHeadModel|ForImageClassification|SparseMoeBlock|MoeBlock|Model|DecoderLayer"
    r"|Attention|MLP)$"
)
_GENERIC_CLASS = re.compile(r"^(Auto\w*|PreTrained\w*|Peft\w*|TF\w*PreTrained\w*|Flax\w*PreTrained\w*)$")
# Attributes of foreign MoE configs: a module that reads several of them from its config is a foreign MoE block,
# whatever it is called.
FOREIGN_MOE_CONFIG_KEYS = frozenset(
    {
        "num_local_experts", "router_jitter_noise", "num_experts_per_tok", "moe_intermediate_size",
        "shared_expert_intermediate_size", "n_routed_experts", "n_shared_experts", "decoder_sparse_step",
        "norm_topk_prob", "router_aux_loss_coef", "output_router_logits", "moe_layer_freq", "first_k_dense_replace",
    }
)  # fmt: skip
# A model repository's folder in the Hugging Face cache: reading it reads a foreign model, whatever the reader.
HUB_CACHE_ENTRY = re.compile(r"models--(?P<org>[\w.-]+?)--(?P<name>[\w.-]+)")
_TEMPORARY_PARAMETERS = {"tmp_path", "tmpdir", "tmp_dir", "temp_dir", "tmpdirname", "tmp_path_factory", "tempdir"}
_OUTPUT_KEYWORDS = {"output_dir", "save_dir", "save_directory", "logging_dir", "checkpoint_dir", "out_dir"}
_SAVE_METHODS = {"save_pretrained", "save_model", "save_checkpoint", "save", "save_adapter", "save_state"}
_OFF = (False, None, "", "none", "None")


@dataclass(frozen=True)
class Loader:
    call: str
    mode: str  # id | flag | always | dataset
    keyword: str
    position: int
    modules: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    flag: str = ""
    also_flag: str = ""
    flag_default: bool = False
    dataset_kw: str = ""
    library: str = ""
    unless: tuple[str, object] | None = None  # a keyword and the value with which the call loads nothing


@dataclass(frozen=True)
class Deserialiser:
    calls: frozenset[str]
    safe_kw: str = ""
    safe_value: object = None
    safe_by_default: bool = False
    safe_position: int = -1  # the safe keyword's position when given positionally


@dataclass(frozen=True)
class LoaderTable:
    loaders: tuple[Loader, ...]
    clients: dict[str, tuple[tuple[str, ...], str, int, tuple[str, ...]]]  # class → (methods, keyword, pos, modules)
    deserialisers: tuple[Deserialiser, ...]

    @functools.cached_property
    def _by_name(self) -> tuple[dict[str, tuple[Loader, ...]], tuple[Loader, ...]]:
        """The loaders a call may match, by the call's last name: those whose own call ends in that name, and the
        `*` entries (which match by module), in table order; then what any other name may match (the `*` entries)."""
        always = [index for index, loader in enumerate(self.loaders) if loader.call == "*" or not _last(loader.call)]
        named: dict[str, list[int]] = {}
        for index, loader in enumerate(self.loaders):
            if index not in always:
                named.setdefault(_last(loader.call), []).append(index)
        by_name = {name: tuple(self.loaders[i] for i in sorted([*indices, *always])) for name, indices in named.items()}
        return by_name, tuple(self.loaders[i] for i in always)

    def match(self, qualified: str) -> Loader | None:
        by_name, others = self._by_name
        for loader in by_name.get(_last(qualified), others):  # qualified ends with ".call": its last name is call's
            if loader.call == "*":
                if qualified.rsplit(".", 1)[0] in loader.modules:
                    return loader
                continue
            if qualified != loader.call and not qualified.endswith("." + loader.call):
                continue
            if loader.modules and not any(qualified.startswith(m + ".") for m in loader.modules):
                continue
            return loader
        return None

    def client_call(self, qualified: str) -> Loader | None:
        owner, _, method = qualified.rpartition(".")
        cls = owner.rsplit(".", 1)[-1]
        entry = self.clients.get(cls)
        if entry is None or method not in entry[0]:
            return None
        if entry[3] and not any(owner.startswith(m + ".") for m in entry[3]):
            return None
        return Loader(call=method, mode="id", keyword=entry[1], position=entry[2], library=cls)

    def deserialiser(self, qualified: str) -> Deserialiser | None:
        for entry in self.deserialisers:
            if qualified in entry.calls:
                return entry
        return None

    def words(self) -> list[str]:
        """Names whose presence in a file makes it worth parsing (ripgrep candidate words; the deserialisers have
        their own, narrower words in external_weights)."""
        words: set[str] = set()
        for loader in self.loaders:
            if loader.mode == "dataset":
                continue
            if loader.modules:
                words.update(module.split(".")[0] for module in loader.modules)
            else:
                words.add(loader.call)
        for cls, (_, _, _, modules) in self.clients.items():
            words.update([module.split(".")[0] for module in modules] or [cls])
        words.update(module.split(".")[0] for module in MODEL_IMPLEMENTATION_MODULES)
        words.update(MODEL_LIBRARIES)
        words.update({"for_model", "methodcaller", "models--", *FOREIGN_MOE_CONFIG_KEYS})
        return sorted(words)


class TableError(ConfigurationError, ValueError):
    """policies/loaders.toml is malformed (a defect of this repository, reported as an error of the run)."""


@functools.cache
def table() -> LoaderTable:
    try:
        data = tomllib.loads(TABLE_FILE.read_text(encoding="utf-8"))
        loaders = tuple(
            Loader(
                call=call,
                mode=entry["mode"],
                keyword=entry["model"][0],
                position=int(entry["model"][1]),
                modules=tuple(entry.get("modules", ())),
                keywords=tuple(entry.get("keywords", ())),
                flag=entry.get("flag", ""),
                also_flag=entry.get("also_flag", ""),
                flag_default=bool(entry.get("flag_default", False)),
                dataset_kw=entry.get("dataset_kw", ""),
                unless=tuple(entry["unless"]) if "unless" in entry else None,
                library=entry.get("library", ""),
            )
            for entry in data["loader"]
            for call in ([entry["call"]] if isinstance(entry["call"], str) else entry["call"])
        )
        clients = {
            entry["class"]: (
                tuple(entry["methods"]),
                entry["model"][0],
                int(entry["model"][1]),
                tuple(entry.get("modules", ())),
            )
            for entry in data.get("client", [])
        }
        deserialisers = tuple(
            Deserialiser(
                calls=frozenset(entry["call"]),
                safe_kw=entry.get("safe_kw", ["", None])[0],
                safe_value=entry.get("safe_kw", ["", None])[1],
                safe_by_default=bool(entry.get("safe_by_default", False)),
                safe_position=int(entry.get("safe_position", -1)),
            )
            for entry in data.get("deserialiser", [])
        )
    except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise TableError(f"{TABLE_FILE}: the loader table cannot be read: {type(exc).__name__}: {exc}") from exc
    bad = [loader.call for loader in loaders if loader.mode not in {"id", "flag", "always", "dataset"}]
    if bad:
        raise TableError(f"{TABLE_FILE}: unknown mode for {bad}: use id, flag, always or dataset")
    return LoaderTable(loaders, clients, deserialisers)


@dataclass(frozen=True)
class Hit:
    rule_id: str  # EXT001 loader, EXT004 foreign implementation, EXT006 unsafe deserialisation
    line: int
    column: int
    end_line: int
    end_column: int
    message: str


@dataclass
class Judge:
    """What the caller knows about the scanned tree."""

    namespace_ok: Callable[[str], bool]  # our namespace or a local path
    family_of: Callable[[str], str | None]  # the foreign model family a value names
    load_config: Callable[[str], object | None] = lambda path: None  # a JSON/YAML file of the tree, parsed
    own_packages: frozenset[str] = frozenset()  # top-level packages of the scanned repository
    extra_loaders: frozenset[str] = frozenset()  # settings: more functions that fetch weights
    fail_closed: bool = True  # False for code examples in documentation: an unresolved id there loads nothing
    package: str = ""  # the dotted package of the file (`whisper` for whisper/transcribe.py): relative imports
    hits: list[Hit] = field(default_factory=list)


# --- static values ------------------------------------------------------------------------------------------------
def _last(dotted_name: str) -> str:
    return dotted_name.rsplit(".", 1)[-1]


def walk(tree: ast.AST) -> list[ast.AST]:
    """ast.walk's nodes, in its order (breadth first, children in field order), as a list and without a generator
    per node."""
    nodes = [tree]
    for node in nodes:  # grows while it is read
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                nodes.append(value)
            elif isinstance(value, list):
                nodes.extend(item for item in value if isinstance(item, ast.AST))
    return nodes


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    if isinstance(node, ast.Call):  # `HfFileSystem().open`: the instance's class stands for it
        return dotted(node.func)
    return ""


# The nodes _Program reads bindings from.
_BINDING_NODES = (
    ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.With, ast.AsyncWith, ast.arg, ast.For, ast.AsyncFor,
    ast.comprehension, ast.NamedExpr, ast.AugAssign, ast.Global, ast.Nonlocal,
)  # fmt: skip


class _Program:
    """Bindings of one module (flow-insensitive): import aliases, single assignments, callables bound to names,
    temporary folders and what was saved to them."""

    def __init__(self, nodes: list[ast.AST], judge: Judge) -> None:
        self.judge = judge
        self.imports: dict[str, str] = {}
        self.star_modules: list[str] = []  # `from fastai.vision.all import *`: where a bare name may come from
        self.assignments: dict[str, list[ast.AST]] = {}
        self.unresolvable: set[str] = set()
        self.temporary: set[str] = set(_TEMPORARY_PARAMETERS)
        self.saved: set[str] = set()  # ast.dump of expressions passed to save_pretrained & co
        self.dumped: set[str] = set()  # names bound to pickle.dumps(...) & co (in-memory bytes)
        self.saved_values: set[str] = set()  # resolved strings a run writes to (output_dir=...)
        self.in_memory: set[str] = set()  # names bound to an empty io.BytesIO() (written, then read back)
        for node in nodes:
            if not isinstance(node, _BINDING_NODES):
                continue  # most nodes bind nothing
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.imports[local] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level and judge.package:  # `from . import load_model` inside the package `whisper`
                    parts = judge.package.split(".")
                    base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                    module = ".".join([*base, *([module] if module else [])])
                if any(alias.name == "*" for alias in node.names) and module:
                    self.star_modules.append(module)
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{module}.{alias.name}" if module else alias.name
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assignments.setdefault(target.id, []).append(node.value)
                    else:
                        self.unresolvable |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.assignments.setdefault(node.target.id, []).append(node.value)
            elif isinstance(node, ast.With | ast.AsyncWith):
                for item in node.items:
                    if isinstance(item.optional_vars, ast.Name):
                        self.assignments.setdefault(item.optional_vars.id, []).append(item.context_expr)
            elif isinstance(node, ast.arg):
                self.unresolvable.add(node.arg)
            elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                self.unresolvable |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
            elif isinstance(node, ast.NamedExpr | ast.AugAssign) and isinstance(node.target, ast.Name):
                self.unresolvable.add(node.target.id)
            elif isinstance(node, ast.Global | ast.Nonlocal):
                self.unresolvable |= set(node.names)
        for name, values in self.assignments.items():
            if any(self._is_temporary_source(value) for value in values):
                self.temporary.add(name)
            if any(isinstance(v, ast.Call) and dotted(v.func).endswith("dumps") for v in values):
                self.dumped.add(name)
            if len(values) == 1 and _in_memory_buffer(values[0]):
                self.in_memory.add(name)
        for node in nodes:
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SAVE_METHODS:
                for argument in node.args[:2]:
                    self.saved.add(ast.dump(argument))
            if isinstance(node, ast.Call):
                for keyword in node.keywords:  # where a run writes: TrainingArguments(output_dir=...) and the like
                    if keyword.arg in _OUTPUT_KEYWORDS:
                        self.saved.add(ast.dump(keyword.value))
                        written = self.value(keyword.value)
                        if isinstance(written, str):
                            self.saved_values.add(written)
                if dotted(node.func) in {"os.path.exists", "os.path.isdir", "os.path.isfile"} and node.args:
                    self.saved.add(ast.dump(node.args[0]))  # a path the program checks on disk before loading it
        for name, values in self.assignments.items():
            if len(values) == 1 and name not in self.unresolvable and self.is_local_folder(values[0]):
                self.temporary.add(name)

    def _is_temporary_source(self, value: ast.AST) -> bool:
        qualified = self.qualified(value.func) if isinstance(value, ast.Call) else ""
        if qualified.startswith("tempfile.") or qualified.endswith(("mktemp", "mkdtemp", "TemporaryDirectory")):
            return True
        return qualified.endswith("get_auto_remove_tmp_folder")

    # -- names of callables
    def qualified(self, node: ast.AST, depth: int = 0) -> str:
        """The dotted name a callable expression stands for, through imports, aliases and constant getattr."""
        if depth > 6:
            return ""
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Call)
            and dotted(node.func.func).rsplit(".", 1)[-1] == "attrgetter"
            and node.func.args
            and node.args
        ):  # operator.attrgetter("from_pretrained")(AutoModel): the attribute of the object it is applied to
            name = self.value(node.func.args[0])
            base = self.qualified(node.args[0], depth + 1)
            return f"{base}.{name}" if isinstance(name, str) and base else ""
        if isinstance(node, ast.Call) and dotted(node.func) == "getattr" and len(node.args) >= 2:
            name = self.value(node.args[1])
            base = self.qualified(node.args[0], depth + 1)
            return f"{base}.{name}" if isinstance(name, str) and base else ""
        if isinstance(node, ast.Attribute):
            base = self.qualified(node.value, depth + 1)
            return f"{base}.{node.attr}" if base else node.attr
        if isinstance(node, ast.Call):
            return self.qualified(node.func, depth + 1)
        if isinstance(node, ast.Name):
            values = self.assignments.get(node.id, [])
            if node.id not in self.unresolvable and len(values) == 1 and node.id not in self.imports:
                value = values[0]
                if isinstance(value, ast.Name | ast.Attribute) or (
                    isinstance(value, ast.Call)
                    and (dotted(value.func) in {"getattr"} or isinstance(value.func, ast.Call))
                ):  # an alias, a constant getattr, or `operator.attrgetter("x")(obj)` bound to a name
                    resolved = self.qualified(value, depth + 1)
                    if resolved:
                        return resolved
                if isinstance(value, ast.Call) and dotted(value.func) not in {"getattr"}:
                    cls = self.qualified(value.func, depth + 1)  # an instance: `fs = HfFileSystem()`
                    if cls.rsplit(".", 1)[-1] in table().clients:
                        return cls
            return self.imports.get(node.id, node.id)
        return ""

    def callees(self, node: ast.Call) -> list[str]:
        """What a call may invoke: one name, or every value of a dispatch dictionary it indexes."""
        func = node.func
        if isinstance(func, ast.Subscript):
            container: ast.AST = func.value
            if isinstance(container, ast.Name):
                values = self.assignments.get(container.id, [])
                container = values[0] if len(values) == 1 else container
            if isinstance(container, ast.Dict):
                key = self.value(func.slice)
                pairs = list(zip(container.keys, container.values, strict=True))
                chosen = [v for k, v in pairs if k is not None and self.value(k) == key] if key is not None else []
                return [self.qualified(value) for value in (chosen or [v for _, v in pairs])]
            return []
        return [self.qualified(func)]

    # -- values
    def value(self, node: ast.AST | None, depth: int = 0) -> object | None:
        if node is None or depth > 8:
            return None
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.JoinedStr):
            parts = [self.value(v.value if isinstance(v, ast.FormattedValue) else v, depth + 1) for v in node.values]
            return "".join(str(p) for p in parts) if all(isinstance(p, str) for p in parts) else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Div):
            left, right = self.value(node.left, depth + 1), self.value(node.right, depth + 1)
            if isinstance(left, str) and isinstance(right, str):
                return left + right if isinstance(node.op, ast.Add) else f"{left}/{right}"
            return None
        if isinstance(node, ast.Name):
            if node.id in self.unresolvable:
                return None
            values = self.assignments.get(node.id, [])
            resolved = {repr(self.value(v, depth + 1)) for v in values}
            return self.value(values[0], depth + 1) if values and len(resolved) == 1 else None
        if isinstance(node, ast.Subscript):
            container, key = self.value(node.value, depth + 1), self.value(node.slice, depth + 1)
            if isinstance(container, dict) and isinstance(key, str):
                return container.get(key)
            return None
        if isinstance(node, ast.Dict):
            keys = [self.value(k, depth + 1) if k is not None else None for k in node.keys]
            return {k: self.value(v, depth + 1) for k, v in zip(keys, node.values, strict=True) if isinstance(k, str)}
        if isinstance(node, ast.Call):
            name = self.qualified(node.func)
            short = name.rsplit(".", 1)[-1]
            if short in {"Path", "PurePath", "PosixPath", "str", "join", "expanduser", "abspath", "resolve"} and (
                node.args or isinstance(node.func, ast.Attribute)
            ):
                parts = [self.value(a, depth + 1) for a in node.args]
                if short == "resolve" and isinstance(node.func, ast.Attribute):
                    return self.value(node.func.value, depth + 1)
                if parts and all(isinstance(p, str) for p in parts):
                    return "/".join(str(p) for p in parts)
                return None
            if name in {"json.load", "yaml.safe_load", "yaml.load"} and node.args:
                opened: ast.AST = node.args[0]
                if isinstance(opened, ast.Name):
                    values = self.assignments.get(opened.id, [])
                    opened = values[0] if len(values) == 1 else opened
                if isinstance(opened, ast.Call) and dotted(opened.func) == "open" and opened.args:
                    path = self.value(opened.args[0], depth + 1)
                    return self.judge.load_config(path) if isinstance(path, str) else None
            if name in {"os.environ.get", "os.getenv"} and len(node.args) >= 2:
                return None  # whatever the environment says: not static
        return None

    def prefix(self, node: ast.AST, depth: int = 0) -> str:
        """The constant start of a string expression (`f"runs/{name}"` → "runs/"), or ""."""
        if depth > 8:
            return ""
        full = self.value(node, depth + 1)
        if isinstance(full, str):
            return full
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            return str(node.values[0].value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Div):
            left = self.prefix(node.left, depth + 1)
            return left + ("/" if isinstance(node.op, ast.Div) and left else "")
        if isinstance(node, ast.Call) and node.args:
            short = self.qualified(node.func).rsplit(".", 1)[-1]
            if short in {"Path", "PurePath", "join", "str"}:
                inner = self.prefix(node.args[0], depth + 1)
                return inner + ("/" if inner and short in {"Path", "join"} and not inner.endswith("/") else "")
        if isinstance(node, ast.Name) and node.id not in self.unresolvable:
            values = self.assignments.get(node.id, [])
            return self.prefix(values[0], depth + 1) if len(values) == 1 else ""
        return ""

    def is_model_object(self, node: ast.AST) -> bool:
        """A name bound once to what a loader or a model class returned: an object, not an id."""
        if not isinstance(node, ast.Name) or node.id in self.unresolvable:
            return False
        values = self.assignments.get(node.id, [])
        if len(values) != 1 or not isinstance(values[0], ast.Call):
            return False
        called = self.qualified(values[0].func)
        short = called.rsplit(".", 1)[-1]
        return (
            table().match(called) is not None
            or short in {"get_peft_model", "prepare_model_for_kbit_training", "from_config", "PeftModel"}
            or bool(
                re.match(r"^[A-Z]\w*(Model|ForCausalLM|ForConditionalGeneration|LMHeadModel|WithValueHead)$", short)
            )
        )

    def is_path_expression(self, node: ast.AST) -> bool:
        """A file-system path by construction (`Path(...)`, `base / "x"`, `os.path.join(...)`): never a hub id."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return True
        if isinstance(node, ast.Call):
            name = self.qualified(node.func)
            return name in {"os.path.join", "os.path.abspath", "os.path.expanduser"} or name.rsplit(".", 1)[-1] in {
                "Path", "PurePath", "PosixPath",
            }  # fmt: skip
        if isinstance(node, ast.Name) and node.id not in self.unresolvable:
            values = self.assignments.get(node.id, [])
            return len(values) == 1 and self.is_path_expression(values[0])
        return False

    def is_local_folder(self, node: ast.AST) -> bool:
        """A temporary folder of this program (tmp_path, tempfile...), or a value saved to with save_pretrained & co
        earlier: a model reloaded from there is the program's own."""
        if ast.dump(node) in self.saved:
            return True
        root = node
        while True:
            if isinstance(root, ast.BinOp):
                root = root.left
            elif isinstance(root, ast.Call) and root.args and dotted(root.func).rsplit(".", 1)[-1] in {
                "join", "Path", "str", "PurePath", "fspath",
            }:  # fmt: skip
                root = root.args[0]
            elif isinstance(root, ast.JoinedStr) and root.values and isinstance(root.values[0], ast.FormattedValue):
                root = root.values[0].value
            elif isinstance(root, ast.Attribute) and re.search(r"(?i)te?mp", root.attr):
                return True
            else:
                break
        return isinstance(root, ast.Name) and (root.id in self.temporary or ast.dump(root) in self.saved)


# --- the checks ---------------------------------------------------------------------------------------------------
_ANALYSED_NODES = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.Call, ast.Constant)


def analyse(tree: ast.Module, judge: Judge) -> list[Hit]:
    nodes = walk(tree)
    program = _Program(nodes, judge)
    seen: set[tuple[str, int, int]] = set()
    flagged_modules: list[str] = []  # a foreign module imported once is one finding, not one more per use

    def add(rule_id: str, node: ast.AST, message: str) -> None:
        line, column = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        if (rule_id, line, column) in seen:
            return
        seen.add((rule_id, line, column))
        end_line = getattr(node, "end_lineno", None) or line
        end_column = getattr(node, "end_col_offset", None) or column
        judge.hits.append(Hit(rule_id, line, column + 1, end_line, end_column, message))

    for node in nodes:
        if not isinstance(node, _ANALYSED_NODES):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            flagged = _check_import(node, judge, add)
            if flagged:
                flagged_modules.append(flagged)
        elif isinstance(node, ast.ClassDef):
            _check_class(node, program, judge, add)
        elif isinstance(node, ast.Call):
            _check_call(node, program, judge, add, tuple(flagged_modules))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "models--" in node.value:
            for match in HUB_CACHE_ENTRY.finditer(node.value):
                repo = f"{match['org']}/{match['name']}"
                if not judge.namespace_ok(repo):
                    add("EXT001", node, f"names {repo!r} in the Hugging Face cache layout ({match.group(0)})")
    return judge.hits


def _own(module: str, judge: Judge) -> bool:
    return module.split(".")[0] in judge.own_packages


def _check_import(
    node: ast.Import | ast.ImportFrom, judge: Judge, add: Callable[[str, ast.AST, str], None]
) -> str | None:
    """EXT004 for an import of a foreign model implementation; returns the module it reported."""
    if isinstance(node, ast.ImportFrom) and node.level:
        return None  # a relative import: the scanned package's own code
    modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    for module in modules:
        if (
            _own(module, judge)
            or module == "transformers.models.auto"
            or module.startswith("transformers.models.auto.")
        ):
            continue  # the generic Auto* factories: judged by what is loaded with them
        if any(module == m or module.startswith(m + ".") for m in MODEL_IMPLEMENTATION_MODULES):
            if _no_architecture(module, node):
                continue
            add("EXT004", node, f"imports {module}, a foreign model implementation")
            return module
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in MODEL_LIBRARIES:
        if _own(node.module or "", judge):
            return None
        for alias in node.names:
            if _foreign_class(alias.name, judge):
                add("EXT004", node, f"imports {alias.name} from {node.module}, a foreign model class")
                return f"{node.module}.{alias.name}"
    return None


# Modules of a model package that hold no architecture: its configuration, generation settings and pre-processing.
_NO_ARCHITECTURE_MODULE = re.compile(
    r"\.(?:configuration|generation|tokenization|processing|image_processing|video_processing|feature_extraction)"
    r"_\w+$"
)


def _no_architecture(module: str, node: ast.Import | ast.ImportFrom) -> bool:
    """An import that brings in no model architecture: a configuration, generation or pre-processing module of a
    model package, or only its config classes. Anything from a modeling module is architecture code, its functions
    too (`apply_rotary_pos_emb`, `rotate_half` are pieces of the foreign model)."""
    if _NO_ARCHITECTURE_MODULE.search(module):
        return True
    return isinstance(node, ast.ImportFrom) and all(alias.name.endswith("Config") for alias in node.names)


def _foreign_class(name: str, judge: Judge) -> bool:
    """A class named after a foreign model family (`LlamaForCausalLM`, `Qwen2MoeSparseMoeBlock`); the generic
    factories (`AutoModel*`, `PreTrainedModel`, `PeftModel`) are judged by what is done with them."""
    if _GENERIC_CLASS.match(name) or not _MODEL_CLASS.match(name):
        return False
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name))
    return judge.family_of(words) is not None


def _check_class(node: ast.ClassDef, program: _Program, judge: Judge, add: Callable[[str, ast.AST, str], None]) -> None:
    for base in node.bases:
        qualified = program.qualified(base)
        if qualified.split(".")[0] in MODEL_LIBRARIES and _foreign_class(qualified.rsplit(".", 1)[-1], judge):
            add("EXT004", node, f"class {node.name} extends {qualified}, a foreign model class")
            return
    read = {
        sub.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Load) and sub.attr in FOREIGN_MOE_CONFIG_KEYS
    }
    has_forward = any(isinstance(item, ast.FunctionDef) and item.name == "forward" for item in node.body)
    if len(read) >= 2 and has_forward:
        keys = ", ".join(sorted(read))
        add("EXT004", node, f"class {node.name} reads a foreign MoE config ({keys}): a vendored foreign MoE block")


def _keyword(node: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _has_star_kwargs(node: ast.Call) -> bool:
    return any(k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args)


def _check_call(
    node: ast.Call,
    program: _Program,
    judge: Judge,
    add: Callable[[str, ast.AST, str], None],
    flagged_modules: tuple[str, ...] = (),
) -> None:
    callees = program.callees(node)
    args, keywords = node.args, node
    for name in callees:
        if name.rsplit(".", 1)[-1] == "partial" and name.startswith(("functools", "partial")) and node.args:
            inner = program.qualified(node.args[0])  # partial(loader, "id"): the loader with its first arguments
            shifted = ast.Call(func=node.args[0], args=node.args[1:], keywords=node.keywords)
            ast.copy_location(shifted, node)
            _check_loader(shifted, inner, program, judge, add, report_at=node)
            _check_deserialiser(shifted, inner, program, add)
            continue
        if name in {"operator.methodcaller", "methodcaller"} and node.args:
            method = program.value(node.args[0])  # methodcaller("from_pretrained", "org/x"): a method with arguments
            if isinstance(method, str):
                shifted = ast.Call(func=ast.Name(id=method, ctx=ast.Load()), args=node.args[1:], keywords=node.keywords)
                ast.copy_location(shifted, node)
                _check_loader(shifted, method, program, judge, add, report_at=node)
            continue
        _check_deserialiser(node, name, program, add)
        _check_loader(node, name, program, judge, add, report_at=node)
        _check_model_keyword(node, name, program, judge, add)
        short = name.rsplit(".", 1)[-1]
        if name.split(".")[0] in MODEL_LIBRARIES and not _own(name, judge):
            if _foreign_class(short, judge) and not any(name.startswith(m) for m in flagged_modules):
                add("EXT004", node, f"uses {name}, a foreign model class")
            elif short == "for_model" and args:
                model_type = program.value(args[0])
                family = judge.family_of(model_type) if isinstance(model_type, str) else None
                if family or not isinstance(model_type, str):
                    add("EXT004", node, f"{name}({model_type!r}) builds a foreign ({family or 'unknown'}) architecture")
    del keywords


# Keywords through which libraries take the model they load (`base_model=` and `model_name=` also label metadata).
_MODEL_KEYWORDS = ("model", "model_id", "model_name_or_path", "pretrained_model_name_or_path")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _check_model_keyword(
    node: ast.Call, name: str, program: _Program, judge: Judge, add: Callable[[str, ast.AST, str], None]
) -> None:
    """Any call handed a hub id as its model (`SFTTrainer(model="org/x")`, `TransformersModel(model_id="org/x")`):
    libraries that take an id load it, whatever the call is named."""
    if table().match(name) or table().client_call(name):
        return  # the loader check judged it
    for item in node.keywords:
        if item.arg not in _MODEL_KEYWORDS:
            continue
        value = program.value(item.value)
        if not isinstance(value, str) or not _REPO_ID.match(value) or judge.namespace_ok(value):
            continue
        if value.split("/", 1)[0].lower() in PLACEHOLDER_ORGS:
            continue
        if re.search(r"\.(py|json|ya?ml|txt|md|csv|jsonl)$", value) or value in program.saved_values:
            continue
        add(
            "EXT001",
            node,
            f"{name or 'a call'}() is given {value!r} as its {item.arg}: a model outside the allowed namespaces",
        )
        return


def _safe_through_star_kwargs(node: ast.Call, entry: Deserialiser, program: _Program) -> bool:
    """`torch.load(f, **kwargs)` with `kwargs = {"weights_only": True} if new_torch else {}`: every dict that sets
    the keyword sets the safe value (the other branch is for a library too old to have the keyword)."""
    for item in node.keywords:
        if item.arg is not None or not isinstance(item.value, ast.Name):
            continue
        values = program.assignments.get(item.value.id, [])
        if len(values) != 1:
            continue
        branches = [values[0].body, values[0].orelse] if isinstance(values[0], ast.IfExp) else [values[0]]
        if not all(isinstance(branch, ast.Dict) for branch in branches):
            continue
        setting = [program.value(branch) for branch in branches]
        with_key = [d for d in setting if isinstance(d, dict) and entry.safe_kw in d]
        if with_key and all(d[entry.safe_kw] == entry.safe_value for d in with_key):
            return True
    return False


def _in_memory_buffer(value: ast.AST) -> bool:
    """`io.BytesIO()` with nothing, or with pickled bytes of this program, in it: a round trip in memory."""
    if not (isinstance(value, ast.Call) and dotted(value.func).rsplit(".", 1)[-1] == "BytesIO"):
        return False
    return not value.args or (isinstance(value.args[0], ast.Call) and dotted(value.args[0].func).endswith("dumps"))


def _check_deserialiser(node: ast.Call, name: str, program: _Program, add: Callable[[str, ast.AST, str], None]) -> None:
    entry = table().deserialiser(name)
    if entry is None:
        return
    if entry.safe_kw and _safe_through_star_kwargs(node, entry, program):
        return
    if entry.safe_kw:
        given = _keyword(node, entry.safe_kw)
        if given is None and 0 <= entry.safe_position < len(node.args):
            given = node.args[entry.safe_position]
        if given is None and entry.safe_by_default:
            return
        if given is not None and program.value(given) == entry.safe_value and isinstance(given, ast.Constant):
            return
    if node.args:  # an in-memory round trip: pickle.loads(pickle.dumps(obj))
        first = node.args[0]
        if isinstance(first, ast.Call) and dotted(first.func).endswith("dumps"):
            return
        if isinstance(first, ast.Name) and (first.id in program.dumped or first.id in program.in_memory):
            return
    what = f"{name}() without {entry.safe_kw}={entry.safe_value!r}" if entry.safe_kw else f"{name}()"
    add("EXT006", node, f"{what} deserialises with pickle, which runs code from the file")


def _check_loader(
    node: ast.Call,
    name: str,
    program: _Program,
    judge: Judge,
    add: Callable[[str, ast.AST, str], None],
    report_at: ast.AST,
) -> None:
    loader = table().match(name) or table().client_call(name)
    if loader is None and "." not in name:  # a bare name may come from a star import
        for module in program.star_modules:
            loader = table().match(f"{module}.{name}")
            if loader is not None:
                name = f"{module}.{name}"
                break
    if loader is None and name.rsplit(".", 1)[-1] in judge.extra_loaders:
        loader = Loader(call=name, mode="id", keyword="repo_id", position=0, library="settings")
    if loader is None or loader.mode == "dataset":
        return
    if loader.dataset_kw and program.value(_keyword(node, loader.dataset_kw)) == "dataset":
        return
    if loader.unless is not None and program.value(_keyword(node, loader.unless[0])) == loader.unless[1]:
        return  # e.g. litgpt's LLM.load(..., init="random"): the architecture only, no weights
    if loader.call == "hub.load" and program.value(_keyword(node, "source")) == "local":
        return
    if loader.mode == "always":
        add("EXT001", report_at, f"{name}() downloads a foreign pretrained model ({loader.library})")
        return
    if loader.mode == "flag":
        for flag in filter(None, (loader.flag, loader.also_flag)):
            given = _keyword(node, flag)
            if given is None:
                on = loader.flag_default and flag == loader.flag and not _has_star_kwargs(node)
            else:
                value = program.value(given)
                on = value not in _OFF if isinstance(given, ast.Constant | ast.Name | ast.JoinedStr) else True
                on = on and not (isinstance(value, str) and judge.namespace_ok(value) and "/" in value)
            if on:
                add("EXT001", report_at, f"{name}(..., {flag}=...) downloads foreign pretrained weights")
                return
        return
    argument = _keyword(node, loader.keyword)
    for other in loader.keywords:
        argument = argument if argument is not None else _keyword(node, other)
    if (
        argument is None
        and len(node.args) > loader.position
        and not isinstance(node.args[loader.position], ast.Starred)
    ):
        argument = node.args[loader.position]
    if argument is None:
        if loader.call == "pipeline" and not _has_star_kwargs(node):
            add("EXT001", report_at, f"{name}() without model= downloads the library's default (foreign) model")
        elif _has_star_kwargs(node) and judge.fail_closed:
            add("EXT001", report_at, f"{name}() loads a model whose id cannot be resolved statically (fail closed)")
        return
    value = program.value(argument)
    if isinstance(value, str) and value in program.saved_values:
        return  # the folder the same program trains into
    if program.is_model_object(argument):
        return  # a model built earlier (from_pretrained, get_peft_model...) passed on, not an id
    if isinstance(value, str):
        if judge.namespace_ok(value) and not value.startswith(("http://", "https://", "hf://")):
            return
        add("EXT001", report_at, f"{name}() loads {value!r}, outside the allowed namespaces")
        return
    if program.is_local_folder(argument):
        return
    if program.value(_keyword(node, "local_files_only")) is True:
        return  # an unresolved folder that may not be fetched: a local load (a resolved foreign id is still reported)
    prefix = program.prefix(argument)
    if prefix and ("/" in prefix or prefix.startswith(".")) and judge.namespace_ok(prefix + "x"):
        return
    # a path built with Path(...) / os.path.join from a constant start that names no foreign model ("runs/..."):
    # a local folder; `Path(args.model)` has no constant start and stays a finding
    if prefix.strip("/") and program.is_path_expression(argument) and judge.family_of(prefix) is None:
        return
    if judge.fail_closed:  # documentation examples: only what they name is judged
        add("EXT001", report_at, f"{name}() loads a model whose id cannot be resolved statically (fail closed)")


# --- text fallback for code that does not parse ----------------------------------------------------------------
@functools.cache
def _fallback_pattern() -> re.Pattern[str]:
    names = set()
    for loader in table().loaders:
        if loader.mode != "dataset" and loader.call != "*":
            names.add(re.escape(loader.call.rsplit(".", 1)[-1]))
    names |= {re.escape(c.rsplit(".", 1)[-1]) for d in table().deserialisers for c in d.calls}
    modules = "|".join(re.escape(m) for m in MODEL_IMPLEMENTATION_MODULES)
    return re.compile(rf"\b(?:{modules})\b|(?<![\w.])(?:[\w.]+\.)?(?:{'|'.join(sorted(names))})\s*\(")


_GENERIC_FALLBACK = {"load", "chat", "generate", "pull", "LLM", "get_model", "YOLO", "open"}


def text_fallback(lines: Iterable[tuple[int, str]], words: Iterable[str] = ()) -> list[Hit]:
    """Loader, deserialiser and model-module names in code that could not be parsed: each one is a finding, since
    what it loads cannot be known (fail closed). Generic names (`load(`) count only when qualified by a library
    this table knows (`whisper.load_model(`, `timm.create_model(`)."""
    pattern = _fallback_pattern()
    known = set(words) | set(table().words())
    hits = []
    for number, text in lines:
        code = text.split("#", 1)[0]
        for match in pattern.finditer(code):
            found = match.group(0).rstrip("( \t")
            head, _, short = found.rpartition(".")
            if short in _GENERIC_FALLBACK and head.split(".")[0] not in known:
                continue
            rule = "EXT006" if table().deserialiser(found) else "EXT001"
            message = f"names {found} in code that does not parse: what it loads cannot be checked (fail closed)"
            hits.append(Hit(rule, number, match.start() + 1, number, match.end(), message))
    return hits


def looks_like_model_class(name: str) -> bool:
    """Whether an imported name might be a foreign model class or a loader (the fast path parses the file then)."""
    return name == "pipeline" or bool(_MODEL_CLASS.match(name) and not _GENERIC_CLASS.match(name))
