"""mkdocs hooks: the pages generated from the code, never kept by hand and never written into the tree.

`cli.md` is the command reference, read from the typer app (`oracle_cli.app.app`): every command's usage, help,
arguments and options with their defaults. `settings.md` is every key of the policy settings, read from their
pydantic model (`policies.settings.Settings`). `rules/index.md` and one `rules/<ID>.md` per rule are read from the rule
catalog (`policies.catalog()`: every policy's rules, the floor's and the publish and submit gates' own checks), in the
shape `oracle guards explain` prints. mkdocs calls `on_files` (mkdocs.yml `hooks:`); the tests call the page
functions directly.
"""

from __future__ import annotations

import html
import inspect
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files

    from policies.rule import Rule

CLI_PAGE = "cli.md"
SETTINGS_PAGE = "settings.md"
RULES_INDEX = "rules/index.md"
_CODE_SPAN = re.compile(r"(`+[^`]*`+)")
_MARKDOWN_SPECIAL = re.compile(r"([\\*_\[\]])")


def prose(text: str) -> str:
    """`text` (a docstring paragraph, a rule's rationale) as Markdown that renders it literally: code spans kept,
    HTML and emphasis characters outside them escaped, wrapped lines joined (a wrapped line starting with `-` or `1.`
    must not become a list)."""
    joined = " ".join(line.strip() for line in text.strip().splitlines())
    parts = _CODE_SPAN.split(joined)
    return "".join(
        part if index % 2 else _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(part, quote=False))
        for index, part in enumerate(parts)
    )


def fenced(text: str, language: str = "text") -> str:
    """A fenced code block holding `text` verbatim (the fence is longer than any backtick run inside it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


# The CLI reference


def _help_blocks(help_text: str) -> list[str]:
    """A command's docstring as Markdown blocks: paragraphs as prose, `Example: CMD` lines as console blocks."""
    blocks = []
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(help_text or "")):
        lines = paragraph.splitlines()
        if not lines or not lines[0].startswith("Example"):
            if paragraph.strip():
                blocks.append(prose(paragraph))
            continue
        examples: list[tuple[str, list[str]]] = []
        for line in lines:
            label, sep, command = line.partition(": ")
            if line.startswith("Example") and sep:
                examples.append((label, [command]))
            elif examples:
                examples[-1][1].append(line)
        labels = [label for label, _ in examples if label != "Example"]
        if labels:  # "Example (in the job script `oracle submit` renders): ..."
            blocks.append(prose(labels[0] + ":"))
        blocks.append(fenced("\n".join("$ " + "\n".join(command) for _, command in examples), "console"))
    return blocks


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _param_lines(command: Any, context: Any) -> tuple[list[str], list[str]]:
    arguments, options = [], []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        record = param.get_help_record(context)
        if record is None:
            continue
        name, help_text = record
        line = f"- `{name}`" + (f": {prose(help_text)}" if help_text else "")
        (options if param.param_type_name == "option" else arguments).append(line)
    return arguments, options


def _command_section(command: Any, context: Any, path: list[str], depth: int) -> list[str]:
    heading = "#" * min(depth, 6)
    blocks = [f"{heading} `{' '.join(path)}`"]
    blocks += _help_blocks(command.help or "")
    if _is_group(command):
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            if child is None or getattr(child, "hidden", False):
                continue
            child_context = type(context)(child, info_name=name, parent=context)
            blocks += _command_section(child, child_context, [*path, name], depth + 1)
        return blocks
    blocks.append(fenced(command.get_usage(context), "text"))
    arguments, options = _param_lines(command, context)
    if arguments:
        blocks.append("**Arguments**\n\n" + "\n".join(arguments))
    if options:
        blocks.append("**Options**\n\n" + "\n".join(options))
    return blocks


def cli_page() -> str:
    """The command reference of `oracle`, from the typer app as it is now."""
    import typer

    from oracle_cli.app import app

    root = typer.main.get_command(app)
    context = root.make_context("oracle", [], resilient_parsing=True)
    intro = [
        "# Command reference",
        "Generated from the typer app (`oracle_cli/app.py` and the command modules it mounts) each time the site is "
        "built; `oracle COMMAND --help` prints the same. [Exit codes](index.md#exit-codes); the commands in context: "
        "[gates](gates.md), [data](data.md), [training](training.md), [cluster](cluster.md), "
        "[publishing](publishing.md), [serving](serving.md).",
    ]
    sections = []
    for name in root.list_commands(context):
        command = root.get_command(context, name)
        if command is None or getattr(command, "hidden", False):
            continue
        sections += _command_section(
            command, type(context)(command, info_name=name, parent=context), ["oracle", name], 2
        )
    return "\n\n".join(intro + sections) + "\n"


# The settings reference


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


def _committed_settings(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """This project's `policies.toml`: its values, and the comment above each key (a description the model lacks)."""
    import tomllib

    text = path.read_text(encoding="utf-8")
    comments: dict[tuple[str, str], str] = {}
    section, pending = "", []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
        elif stripped.startswith("["):
            section, pending = stripped.strip("[]").split(".")[0], []
        elif "=" in stripped:
            comments[(section, stripped.split("=", 1)[0].strip())] = " ".join(pending)
            pending = []
        else:
            pending = []
    return tomllib.loads(text), comments


def settings_page() -> str:
    """Every section and key of `policies.toml`, with its default and description, from the settings model, and the
    value this project commits."""
    from pydantic import BaseModel

    from policies.settings import Settings

    committed, comments = _committed_settings(Path(__file__).resolve().parents[1] / "policies" / "policies.toml")

    blocks = [
        "# Settings reference",
        "Every key `policies/policies.toml` (or a repository's `[tool.oracle]` table, or `--settings FILE`) may set, "
        "with its default, read from the settings model (`policies/settings.py`) each time the site is built. "
        "Unknown keys are refused naming the line. How the settings are found: [Configuration](configuration.md).",
    ]
    for section_name, section_field in Settings.model_fields.items():
        section = section_field.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        rows = []
        ours = committed.get(section_name, {})
        for key, field in section.model_fields.items():
            default = _toml_value(field.get_default(call_default_factory=True))
            value = f"`{_toml_value(ours[key])}`" if key in ours else "default"
            description = prose(field.description or comments.get((section_name, key), "")).replace("|", "&#124;")
            rows.append(f"| `{key}` | `{default}` | {value} | {description} |")
        blocks.append(f"## `[{section_name}]`")
        if section.__doc__ and section.__doc__ != BaseModel.__doc__:
            blocks.append(prose(inspect.cleandoc(section.__doc__)))
        blocks.append("| key | default | this project | what it sets |\n|---|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(blocks) + "\n"


# The rule catalog


def _gates(rule: Rule) -> str:
    return ", ".join(sorted(str(gate) for gate in rule.gates))


def rule_page(rule: Rule) -> str:
    """One rule's page: ruff's shape (what it does, why it is bad, an example, what to use instead), then the fix."""
    from policies.floor import CRITICAL_RULES

    if not rule.waivable:  # the floor's rules guard the gate itself; the publish and submit gates' checks are final
        waivers = "no"
    elif rule.id in CRITICAL_RULES:
        waivers = "only with an approval signed by a waiver-approval key (a critical rule of the default floor)"
    else:
        waivers = "yes (`policies/waivers.toml`, within the floor's bounds)"
    return (
        "\n\n".join(
            [
                f"# {rule.id}: {prose(rule.title)}",
                "| policy | severity | gates | waivable |\n|---|---|---|---|\n"
                f"| `{rule.policy}` | {rule.severity} | {_gates(rule)} | {waivers} |",
                "## Why is this bad?\n\n" + prose(rule.rationale),
                "## Example\n\n" + fenced(rule.example),
                "## Use instead\n\n" + fenced(rule.example_fix),
                "## Fix\n\n" + prose(rule.fix),
                f"`oracle guards explain {rule.id}` prints this page in a terminal. [All rules](index.md)",
            ]
        )
        + "\n"
    )


def rule_index(rules: list[Rule]) -> str:
    rows = [
        f"| [{rule.id}]({rule.id}.md) | `{rule.policy}` | {rule.severity} | {_gates(rule)} | "
        f"{prose(rule.title).replace('|', '&#124;')} |"
        for rule in rules
    ]
    return (
        "\n\n".join(
            [
                "# Rules",
                f"Every check of every gate is a rule: {len(rules)} of them, generated from the rule objects "
                "(`policies/*.py`; the floor's in `policies/floor.py`, the publish and submit gates' own in "
                "`policies/gate_checks.py`) each time the site is built. `oracle guards rules` lists them, "
                "`oracle guards explain ID` prints one. How the gates use them: [Gates](../gates.md).",
                "| rule | policy | severity | gates | what it reports |\n|---|---|---|---|---|\n" + "\n".join(rows),
            ]
        )
        + "\n"
    )


def rule_pages() -> dict[str, str]:
    """`rules/index.md` and `rules/<ID>.md` for every rule of the catalog, by their path in the site."""
    from policies import catalog

    rules = catalog()
    pages = {RULES_INDEX: rule_index(rules)}
    pages.update({f"rules/{rule.id}.md": rule_page(rule) for rule in rules})
    return pages


def generated_pages() -> dict[str, str]:
    return {CLI_PAGE: cli_page(), SETTINGS_PAGE: settings_page(), **rule_pages()}


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    from mkdocs.structure.files import File

    for path, content in generated_pages().items():
        files.append(File.generated(config, path, content=content))
    return files
