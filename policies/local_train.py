"""Policy `local_train`: training runs only on a cluster.

LTR001 finds `ALLOW_LOCAL_TRAIN` set to anything but a false value in tracked files of every kind: env files under
any name, CI and compose YAML, Kubernetes env lists, Makefiles, sh/csh/fish/PowerShell scripts (UTF-16 too), sbatch
`--export` lists and `#SBATCH` lines, Dockerfiles, JSON/TOML specs, notebook `%env` magics and shell cells, and Python
code that writes the environment. LTR002 finds training entry points that do not call the runtime check
(`guards.runtime.require_training_allowed`), which lets training start only inside a job submitted by `oracle submit`.
LTR003 finds code outside the training package that calls the trainer's own functions (`run_training`, `Trainer`,
`initialise_engine`) instead of the CLI, without the runtime check before it.
"""

from __future__ import annotations

import ast
import os
import re

from policies.context import ScanContext
from policies.rule import ALL_GATES, Gate, Policy, PolicyResult, Rule, Severity
from policies.venv import file_kind, not_analysed, notebook_shell

NAME = "local_train"
VARIABLE = "ALLOW_LOCAL_TRAIN"
_DOC_SUFFIXES = {".md", ".rst", ".txt", ".html", ".adoc", ".markdown"}
# Values that leave the override off (the runtime honours only "true"); anything else is reported.
FALSE_VALUES = {"false", "0", "no", "off"}
# The trainer's functions that train (oracle/train/trainer.py); the CLI's `oracle train` calls them after the check.
TRAINER_ENTRIES = {"run_training", "Trainer", "initialise_engine"}

LOCAL_TRAIN_ENABLED = Rule(
    id="LTR001",
    policy=NAME,
    title="ALLOW_LOCAL_TRAIN set to something other than false",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Training outside a submitted cluster job escapes the submit gate: no attested commit, no submission "
    "record, no audit entry, and weights whose provenance cannot be proven.",
    fix="Set ALLOW_LOCAL_TRAIN=false (or remove it) and train through `oracle submit --target slurm|k8s`.",
    example="export ALLOW_LOCAL_TRAIN=true",
    example_fix="export ALLOW_LOCAL_TRAIN=false",
)
UNGUARDED_ENTRY_POINT = Rule(
    id="LTR002",
    policy=NAME,
    title="Training entry point without the runtime check",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="The runtime check is what refuses training outside a submitted cluster job; an entry point that "
    "skips it trains anywhere.",
    fix="Call guards.runtime.require_training_allowed() first thing in the entry point.",
    example="def main() -> None:\n    train(load_config(args.config))",
    example_fix="def main() -> None:\n    require_training_allowed()\n    train(load_config(args.config))",
)
TRAINER_CALLED_DIRECTLY = Rule(
    id="LTR003",
    policy=NAME,
    title="The trainer called directly instead of through `oracle train`",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="`oracle train` runs the runtime check before it builds anything; code that imports the trainer's own "
    "functions and calls them trains wherever it runs, with no submission, attestation or audit entry.",
    fix="Train through `oracle submit --target slurm|k8s` (the job runs `oracle train`), or call "
    "guards.runtime.require_training_allowed() first in the function that calls the trainer.",
    example="from oracle.train.trainer import run_training\nrun_training(config, resume=None, ...)",
    example_fix="$ oracle submit --target slurm --config oracle850b",
)
RULES = (LOCAL_TRAIN_ENABLED, UNGUARDED_ENTRY_POINT, TRAINER_CALLED_DIRECTLY)

# An assignment of the variable: `X=v`, `export X=v`, `X := v`, `X ?= v`, `X: v`, `"X": "v"`, `{X = v}`; not `$X`.
_ASSIGNMENT = re.compile(rf"""(?<![$\w])(?<!\$\{{)["']?{VARIABLE}["']?\s*(?::=|\?=|=|:)\s*(?P<value>.*)$""")
_DOCKER_ENV = re.compile(rf"""^\s*ENV\s+{VARIABLE}\s+(?P<value>.*)$""")  # Dockerfile `ENV X v`
# One table of the other ways of setting a variable: csh/tcsh `setenv X v`, Windows `setx X v`, fish
# `set -x/-gx/--export X v`, IPython `%env X v`, PowerShell `[Environment]::SetEnvironmentVariable("X", v)` and
# `Set-Item env:X v`; the value is what follows the name.
_OTHER_SYNTAXES = (
    re.compile(rf"""(?i)\b(?:setenv|setx)\s+["']?{VARIABLE}["']?(?:\s+(?P<value>.*))?$"""),
    re.compile(
        rf"""\bset\s+(?:-[a-zA-Z]*[xgU][a-zA-Z]*\s+|--(?:export|global|universal)\s+)+{VARIABLE}(?:\s+(?P<value>.*))?$"""
    ),
    re.compile(rf"""%(?:set_)?env\s+{VARIABLE}(?:\s*=\s*|\s+)(?P<value>.*)$"""),
    re.compile(rf"""(?i)SetEnvironmentVariable\(\s*["']{VARIABLE}["']\s*,\s*(?P<value>[^,)]*)"""),
    re.compile(rf"""(?i)\b(?:Set-Item|New-Item|si|ni)\b.*\benv:[\\/]?{VARIABLE}["']?(?:\s+-Value)?\s+(?P<value>\S+)"""),
)
# Lines that start with `#` but are read by a scheduler, not comments: `#SBATCH --export=...`, PBS, LSF, SGE.
_DIRECTIVE = re.compile(r"^#(?:SBATCH|PBS|BSUB|\$|FLUX:)\s")
_SHELL_DEFAULT = re.compile(rf"""\$\{{{VARIABLE}:?[=-](?P<value>[^}}]*)\}}""")  # ${X:=v} / ${X:-v}
# A name/value pair (Kubernetes env lists, in YAML or JSON): on one line, or value within three lines of the name.
_PAIR_NAME = re.compile(rf"""["']?\bname["']?\s*:\s*["']{VARIABLE}["']|^\s*-?\s*name:\s*{VARIABLE}\b""")
_PAIR_VALUE = re.compile(r"""["']?value["']?\s*:\s*(?P<value>"[^"]*"|'[^']*'|[^,}\s]+)""")
_VALUE_FROM = re.compile(r"""["']?valueFrom["']?\s*:""")


def _erases(code: str) -> bool:
    """`set -e X` / `set --erase X` (fish), `unsetenv X` (csh), `Remove-Item env:X`: removing it is not setting it."""
    return _ERASE.search(code) is not None


_ERASE = re.compile(rf"(?i)\b(?:set\s+(?:-[a-zA-Z]*e[a-zA-Z]*|--erase)|unsetenv|unset|Remove-Item)\b.*{VARIABLE}")


def _normalise(value: str) -> str:
    value = value.strip().rstrip(",;").strip()
    for quote in ('"', "'"):
        if value.startswith(quote) and quote in value[1:]:
            return value[1 : value.index(quote, 1)]
    # the value ends where the word does, or at a list separator (`--export=X=1,Y=2`) or a closing bracket
    return re.split(r"[\s,;#)}\]]", value, maxsplit=1)[0] if value else ""


def _is_false(value: str) -> bool:
    return value.lower() in FALSE_VALUES


def check(ctx: ScanContext) -> PolicyResult:
    result = PolicyResult()
    candidates = ctx.grep([VARIABLE])
    for path in ctx.files:
        kind = file_kind(ctx, path)
        if os.path.splitext(path)[1].lower() in _DOC_SUFFIXES or kind in {"markdown", "binary"}:
            continue
        result.examined.append(path)
        if path not in candidates:
            continue
        if kind in {"python", "notebook"}:
            _check_python(ctx, path, result)
        else:
            _check_text(ctx, path, result)
    _check_entry_points(ctx, result)
    _check_trainer_calls(ctx, result)
    return result


def _line_value(line: str) -> tuple[int, str] | None:
    """(column, value) where one line of shell, config or magic text sets the variable; None where it does not."""
    code = line if _DIRECTIVE.match(line.strip()) else line.split(" #", 1)[0]  # a trailing comment is prose
    if VARIABLE not in code or _erases(code):
        return None
    for pattern in (*_OTHER_SYNTAXES, _SHELL_DEFAULT, _DOCKER_ENV, _ASSIGNMENT):
        if match := pattern.search(code):
            return match.start() + 1, _normalise(match["value"] or "")
    return None


def _check_text(ctx: ScanContext, path: str, result: PolicyResult) -> None:
    text = ctx.text(path)
    if text is None:
        not_analysed(ctx, result, path, "a file that names ALLOW_LOCAL_TRAIN could not be read as text")
        return
    lines = text.splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if VARIABLE not in line or (stripped.startswith(("#", "//", "REM ", "::")) and not _DIRECTIVE.match(stripped)):
            continue
        if _PAIR_NAME.search(line):
            for candidate in lines[index : index + 4]:  # the value on the same line or one of the next three
                if value := _PAIR_VALUE.search(candidate.split(VARIABLE, 1)[-1] if candidate is line else candidate):
                    _report_value(path, index + 1, line.index(VARIABLE) + 1, _normalise(value["value"]), line, result)
                    break
                if _VALUE_FROM.search(candidate):  # from a ConfigMap or Secret: not the constant false
                    _report_value(path, index + 1, line.index(VARIABLE) + 1, "valueFrom", line, result)
                    break
            continue
        if _PAIR_VALUE.search(line) and any(
            _PAIR_NAME.search(previous) for previous in lines[max(0, index - 3) : index]
        ):
            continue  # reported with its name
        if found := _line_value(line):
            _report_value(path, index + 1, found[0], found[1], line, result)
    # `value:` written before `name:` in a YAML env entry
    for index, line in enumerate(lines[:-1]):
        following = lines[index + 1]
        if VARIABLE not in following:
            continue
        value = _PAIR_VALUE.search(line)
        if value is None or not _PAIR_NAME.search(following) or _PAIR_VALUE.search(following):
            continue
        if not any(_PAIR_VALUE.search(later) for later in lines[index + 2 : index + 4]):
            _report_value(path, index + 2, 1, _normalise(value["value"]), following, result)


def _report_value(path: str, line: int, column: int, value: str, source: str, result: PolicyResult) -> None:
    if not _is_false(value):
        shown = value if value else "(empty)"
        message = f"{VARIABLE} is set to {shown!r}; only a false value ({', '.join(sorted(FALSE_VALUES))}) is allowed"
        result.findings.append(LOCAL_TRAIN_ENABLED.finding(path, line, column, message, source))


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _check_python(ctx: ScanContext, path: str, result: PolicyResult) -> None:
    """A Python file or a notebook: code as Python, `%env X=v` and `!X=v cmd` lines as shell text. Findings in a
    notebook name the cell and its line."""
    program = ctx.python_program(path)
    if program is None or program.tree is None:
        why = "notebook that is not valid JSON" if program is None else "Python that does not parse"
        not_analysed(ctx, result, path, why)
        return
    tree, source, cells = program.tree, program.source, program.cells
    lines = {(c, n): t for c, n, t in program.magics if t.lstrip().startswith("%")}
    lines.update({(c, n): t for c, n, t in (notebook_shell(ctx, path) if cells else [])})
    for (cell, line), text in sorted(lines.items()):
        found = _line_value(text)
        if found and not _is_false(found[1]):
            message = f"cell {cell}, line {line}: {VARIABLE} is set to {found[1]!r}; only a false value is allowed"
            result.findings.append(LOCAL_TRAIN_ENABLED.finding(path, 0, 0, message, f"{cell}:{line}:{VARIABLE}"))

    def report(node: ast.AST, value_node: ast.AST | None) -> None:
        value = _constant(value_node)
        if value is not None and _is_false(value):
            return
        shown = repr(value) if value is not None else "a value that is not the constant 'false'"
        segment = (
            program.segment(node) if hasattr(program, "segment") else ast.get_source_segment(source, node)
        ) or VARIABLE
        line = getattr(node, "lineno", 0)
        if cells:
            cell, cell_line = cells[line - 1]
            result.findings.append(
                LOCAL_TRAIN_ENABLED.finding(
                    path, 0, 0, f"cell {cell}, line {cell_line}: {VARIABLE} is set to {shown}", segment
                )
            )
            return
        result.findings.append(
            LOCAL_TRAIN_ENABLED.finding(
                path,
                getattr(node, "lineno", 0),
                getattr(node, "col_offset", 0) + 1,
                f"{VARIABLE} is set to {shown}",
                segment,
            )
        )

    # Names bound to the variable's name (`VAR = "ALLOW_LOCAL_TRAIN"; os.environ[VAR] = "1"`)
    aliases = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _constant(node.value) == VARIABLE
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def name_of(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Name) and node.id in aliases:
            return VARIABLE
        return _constant(node)

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign):  # os.environ["ALLOW_LOCAL_TRAIN"] = ...
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and name_of(target.slice) == VARIABLE:
                    report(node, node.value)
        elif isinstance(node, ast.Dict):  # {"ALLOW_LOCAL_TRAIN": ...} as an environment mapping
            for key, value in zip(node.keys, node.values, strict=True):
                if name_of(key) == VARIABLE:
                    report(node, value)
        elif isinstance(node, ast.Call):
            # setdefault / putenv / setenv("ALLOW_LOCAL_TRAIN", value), and f(ALLOW_LOCAL_TRAIN=value); not reads
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            reads = called in {"get", "getenv", "pop", "getboolean", "environ_get"}
            if len(node.args) >= 2 and name_of(node.args[0]) == VARIABLE and not reads:
                report(node, node.args[1])
            for keyword in node.keywords:
                if keyword.arg == VARIABLE:
                    report(node, keyword.value)


def _calls(node: ast.AST, name: str) -> bool:
    for inner in ast.walk(node):
        if isinstance(inner, ast.Call):
            func = inner.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == name:
                return True
    return False


def _check_entry_points(ctx: ScanContext, result: PolicyResult) -> None:
    settings = ctx.settings.local_train
    check_name = settings.runtime_check
    explicit: dict[str, set[str]] = {}
    for spec in settings.entry_points:
        path, _, function = spec.partition(":")
        explicit.setdefault(path, set()).add(function)
    if ctx.gate is not Gate.commit:  # a declared entry point whose file is gone guards nothing (moved or deleted)
        for path in sorted(explicit):
            if not (ctx.root / path).exists():
                names = ", ".join(f"{function}()" for function in sorted(explicit[path]))
                message = f"declared training entry point {names} is in {path}, which is not in the tree; "
                message += "update policies.toml"
                result.findings.append(UNGUARDED_ENTRY_POINT.finding(path, 0, 0, message, f"missing file {path}"))
    packages = tuple(f"{package.rstrip('/')}/" for package in settings.train_packages)
    relevant = [path for path in ctx.files if path.endswith(".py") and (path in explicit or path.startswith(packages))]
    if ctx.gate is Gate.commit and not relevant:
        return
    for path in relevant:
        tree = ctx.python_ast(path)
        if tree is None:
            result.skipped[path] = "Python that does not parse"
            continue
        entry_nodes: list[tuple[str, ast.AST]] = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                node.name in explicit.get(path, set()) or (path not in explicit and node.name == "main")
            ):
                entry_nodes.append((f"{node.name}()", node))
            elif (
                isinstance(node, ast.If)
                and "__name__" in ast.unparse(node.test)
                and "__main__" in ast.unparse(node.test)
            ):
                entry_nodes.append(("the __main__ block", node))
        # A __main__ block that calls a guarded main() goes through the check too.
        guarded = {label.removesuffix("()") for label, entry in entry_nodes if _calls(entry, check_name)}
        defined = {label.removesuffix("()") for label, _ in entry_nodes}
        for missing in sorted(explicit.get(path, set()) - defined):  # renamed away: the declaration guards nothing
            message = f"declared training entry point {missing}() is not defined in {path}; update policies.toml"
            result.findings.append(UNGUARDED_ENTRY_POINT.finding(path, 0, 0, message, f"missing {missing}"))
        for label, entry in entry_nodes:
            if not _calls(entry, check_name) and not any(_calls(entry, name) for name in guarded):
                result.findings.append(
                    UNGUARDED_ENTRY_POINT.finding(
                        path,
                        getattr(entry, "lineno", 0),
                        getattr(entry, "col_offset", 0) + 1,
                        f"training entry point {label} does not call {check_name}()",
                        f"{label}",
                    )
                )


def _train_modules(ctx: ScanContext) -> tuple[str, ...]:
    return tuple(package.strip("/").replace("/", ".") for package in ctx.settings.local_train.train_packages)


def _is_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return (
        path.startswith(("tests/", "test/")) or "/tests/" in path or name.startswith("test_") or name == "conftest.py"
    )


def _check_trainer_calls(ctx: ScanContext, result: PolicyResult) -> None:
    """LTR003: a module outside the training packages and the tests that imports the trainer's functions and calls
    them, in a function (or module body) that does not call the runtime check."""
    modules = _train_modules(ctx)
    folders = tuple(f"{package.strip('/')}/" for package in ctx.settings.local_train.train_packages)
    if not modules:
        return
    candidates = ctx.grep([_trainer_pattern(ctx.settings)])
    for path in sorted(candidates):
        if path.startswith(folders) or _is_test(path) or file_kind(ctx, path) not in {"python", "notebook"}:
            continue
        program = ctx.python_program(path)
        if program is None or program.tree is None:
            continue  # reported by LTR001's reading of the same file, or by ScanContext
        for node, name in _trainer_calls(program.tree, modules, ctx.settings.local_train.runtime_check):
            line = getattr(node, "lineno", 0)
            where = ""
            if program.cells and 0 < line <= len(program.cells):
                cell, cell_line = program.cells[line - 1]
                where, line = f"cell {cell}, line {cell_line}: ", 0
            message = (
                f"{where}calls the trainer's {name}() directly, without {ctx.settings.local_train.runtime_check}() "
                "before it: `oracle train` is the only way in"
            )
            column = node.col_offset + 1 if line else 0
            result.findings.append(TRAINER_CALLED_DIRECTLY.finding(path, line, column, message, name))


def _trainer_pattern(settings: object) -> str:
    packages = getattr(getattr(settings, "local_train", None), "train_packages", ["oracle/train"])
    return "|".join(re.escape(package.strip("/").replace("/", ".")) for package in packages)


def _trainer_calls(tree: ast.Module, modules: tuple[str, ...], check_name: str) -> list[tuple[ast.Call, str]]:
    """Calls of the trainer's entry functions, through `from M import f [as g]`, `import M [as m]`, `from P import
    m`, importlib.import_module("M") and getattr(m, "f"), in scopes that do not call the runtime check."""

    def training(module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in modules)

    functions: dict[str, str] = {}  # local name → entry function
    module_names: set[str] = set()  # local (dotted) names of training modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and training(node.module):
            for alias in node.names:
                if alias.name in TRAINER_ENTRIES:
                    functions[alias.asname or alias.name] = alias.name
                else:
                    module_names.add(alias.asname or alias.name)  # `from oracle.train import trainer`
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if training(alias.name):
                    module_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            called = _dotted_name(node.value.func)
            argument = _constant(node.value.args[0]) if node.value.args else None
            if called.endswith("import_module") and argument and training(argument):
                module_names.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def entry_of(call: ast.Call) -> str | None:
        func = call.func
        if isinstance(func, ast.Name) and func.id in functions:
            return functions[func.id]
        if isinstance(func, ast.Attribute) and func.attr in TRAINER_ENTRIES:
            owner = _dotted_name(func.value)
            if owner in module_names or training(owner) or owner.rsplit(".", 1)[-1] in module_names:
                return func.attr
        if isinstance(func, ast.Call) and _dotted_name(func.func) == "getattr" and len(func.args) >= 2:
            name = _constant(func.args[1])
            if name in TRAINER_ENTRIES and _dotted_name(func.args[0]) in module_names:
                return name
        return None

    found: list[tuple[ast.Call, str]] = []

    def scope(body: list[ast.stmt]) -> None:
        calls: list[tuple[ast.Call, str]] = []
        guarded = False
        stack: list[ast.AST] = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if not isinstance(node, ast.Lambda):
                    scope(node.body)
                continue
            if isinstance(node, ast.Call):
                guarded = guarded or _dotted_name(node.func).rsplit(".", 1)[-1] == check_name
                if (entry := entry_of(node)) is not None:
                    calls.append((node, entry))
            stack.extend(ast.iter_child_nodes(node))
        if not guarded:
            found.extend(calls)

    scope(tree.body)
    return sorted(found, key=lambda item: (item[0].lineno, item[0].col_offset))


def _dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    return ""


POLICY = Policy(NAME, RULES, check, lambda settings: [VARIABLE, _trainer_pattern(settings)])
