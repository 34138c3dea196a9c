"""Policy `local_train`: training runs only on a cluster.

LTR001 finds `ALLOW_LOCAL_TRAIN` set to anything but `false` in tracked files (env files, CI files, Makefiles, shell
scripts, Dockerfiles, YAML/JSON/TOML specs, and Python code that writes the environment). LTR002 finds training
entry points that do not call the runtime check (`guards.runtime.require_training_allowed`), which lets training
start only inside a job submitted by `oracle submit`.
"""

from __future__ import annotations

import ast
import os
import re

from policies.context import ScanContext
from policies.rule import ALL_GATES, Gate, Policy, PolicyResult, Rule, Severity

NAME = "local_train"
VARIABLE = "ALLOW_LOCAL_TRAIN"
_DOC_SUFFIXES = {".md", ".rst", ".txt", ".html", ".adoc"}

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
RULES = (LOCAL_TRAIN_ENABLED, UNGUARDED_ENTRY_POINT)

# An assignment of the variable: `X=v`, `export X=v`, `X := v`, `X ?= v`, `X: v`, `"X": "v"`, `{X = v}`; not `$X`.
_ASSIGNMENT = re.compile(rf"""(?<![$\w])(?<!\$\{{)["']?{VARIABLE}["']?\s*(?::=|\?=|=|:)\s*(?P<value>.*)$""")
_DOCKER_ENV = re.compile(rf"""^\s*ENV\s+{VARIABLE}\s+(?P<value>.*)$""")  # Dockerfile `ENV X v`
_SHELL_DEFAULT = re.compile(rf"""\$\{{{VARIABLE}:?[=-](?P<value>[^}}]*)\}}""")  # ${X:=v} / ${X:-v}
# A name/value pair (Kubernetes env lists, in YAML or JSON): on one line, or value within three lines of the name.
_PAIR_NAME = re.compile(rf"""["']?\bname["']?\s*:\s*["']{VARIABLE}["']|^\s*-?\s*name:\s*{VARIABLE}\b""")
_PAIR_VALUE = re.compile(r"""["']?value["']?\s*:\s*(?P<value>"[^"]*"|'[^']*'|[^,}\s]+)""")


def _normalise(value: str) -> str:
    value = value.strip().rstrip(",;").strip()
    for quote in ('"', "'"):
        if value.startswith(quote) and quote in value[1:]:
            return value[1 : value.index(quote, 1)]
    return value.split()[0].split("#")[0] if value.split() else ""


def _is_false(value: str) -> bool:
    return value.lower() == "false"


def check(ctx: ScanContext) -> PolicyResult:
    result = PolicyResult()
    candidates = ctx.grep([VARIABLE])
    for path in ctx.files:
        suffix = os.path.splitext(path)[1].lower()
        if suffix in _DOC_SUFFIXES:
            continue
        result.examined.append(path)
        if path not in candidates:
            continue
        if suffix == ".py" or path.endswith(".pyi") or suffix == ".ipynb":
            _check_python(ctx, path, result)
        else:
            _check_text(ctx, path, result)
    _check_entry_points(ctx, result)
    return result


def _check_text(ctx: ScanContext, path: str, result: PolicyResult) -> None:
    text = ctx.text(path) or ""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("#", "//")) or VARIABLE not in line:
            continue
        if _PAIR_NAME.search(line):
            for candidate in lines[index : index + 4]:  # the value on the same line or one of the next three
                if value := _PAIR_VALUE.search(candidate.split(VARIABLE, 1)[-1] if candidate is line else candidate):
                    _report_value(path, index + 1, line.index(VARIABLE) + 1, _normalise(value["value"]), line, result)
                    break
            continue
        if _PAIR_VALUE.search(line) and any(
            _PAIR_NAME.search(previous) for previous in lines[max(0, index - 3) : index]
        ):
            continue  # reported with its name
        code = line.split(" #", 1)[0]  # a trailing comment is prose
        for pattern in (_SHELL_DEFAULT, _DOCKER_ENV, _ASSIGNMENT):
            if match := pattern.search(code):
                _report_value(path, index + 1, match.start() + 1, _normalise(match["value"]), line, result)
                break
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
        result.findings.append(
            LOCAL_TRAIN_ENABLED.finding(
                path, line, column, f"{VARIABLE} is set to {shown!r}; only false is allowed", source
            )
        )


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _check_python(ctx: ScanContext, path: str, result: PolicyResult) -> None:
    """A Python file or a notebook: code as Python, `%env X=v` and `!X=v cmd` lines as shell text. Findings in a
    notebook name the cell and its line."""
    program = ctx.python_program(path)
    if program is None or program.tree is None:
        result.skipped[path] = "notebook that is not valid JSON" if program is None else "Python that does not parse"
        return
    tree, source, cells = program.tree, program.source, program.cells
    for cell, line, text in program.magics:
        assignment = _ASSIGNMENT.search(text)
        if assignment:
            set_to = _normalise(assignment["value"])
            if not _is_false(set_to):
                message = f"cell {cell}, line {line}: {VARIABLE} is set to {set_to!r}; only false is allowed"
                result.findings.append(LOCAL_TRAIN_ENABLED.finding(path, 0, 0, message, text))

    def report(node: ast.AST, value_node: ast.AST | None) -> None:
        value = _constant(value_node)
        if value is not None and _is_false(value):
            return
        shown = repr(value) if value is not None else "a value that is not the constant 'false'"
        segment = ast.get_source_segment(source, node) or VARIABLE
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


POLICY = Policy(NAME, RULES, check, lambda settings: [VARIABLE])
