"""The documentation site's generated pages cover what the code holds: every leaf command of the `oracle` app, every
rule of the catalog, every settings key. The pages come from docs/hooks.py, called here directly (mkdocs itself
builds the site in `make test`'s docs session)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import typer
from pydantic import BaseModel

from oracle_cli.app import app
from policies import catalog
from policies.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oracle_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_commands(command: object, path: tuple[str, ...]) -> list[str]:
    children = getattr(command, "commands", None)
    if children is None:
        return [" ".join(path)]
    return [leaf for name, child in children.items() for leaf in _leaf_commands(child, (*path, name))]


def test_the_cli_page_has_a_section_for_every_leaf_command() -> None:
    leaves = _leaf_commands(typer.main.get_command(app), ("oracle",))
    assert "oracle guards run" in leaves
    assert "oracle data stage prepare" in leaves
    headings = set(re.findall(r"^#+ `(oracle[^`]*)`$", _hooks().cli_page(), flags=re.MULTILINE))
    assert [leaf for leaf in leaves if leaf not in headings] == []


def test_the_cli_page_shows_each_option_with_its_default() -> None:
    page = _hooks().cli_page()
    run = page[page.index("`oracle guards run`") :]
    run = run[: run.index("\n#")]
    assert "Usage: oracle guards run [OPTIONS]" in run
    assert re.search(r"^- `--gate <str>`: .*default: ci", run, flags=re.MULTILINE)
    assert "`--root <path>`" in run
    assert "`--settings <path>`" in run


def test_the_rule_index_names_every_rule_and_each_rule_has_its_page() -> None:
    hooks = _hooks()
    pages = hooks.rule_pages()
    rules = catalog()
    linked = re.findall(r"^\| \[([A-Z]+[0-9]+)\]\(\1\.md\) \|", pages["rules/index.md"], flags=re.MULTILINE)
    assert linked == [rule.id for rule in rules]
    for rule in rules:
        page = pages[f"rules/{rule.id}.md"]
        assert page.startswith(f"# {rule.id}: ")
        assert rule.example.strip() in page
        assert rule.example_fix.strip() in page
    assert set(pages) == {"rules/index.md", *(f"rules/{rule.id}.md" for rule in rules)}


def test_the_settings_page_lists_every_key_of_every_section() -> None:
    page = _hooks().settings_page()
    for section_name, section in Settings.model_fields.items():
        assert f"## `[{section_name}]`" in page
        model = section.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        body = page.split(f"## `[{section_name}]`", 1)[1].split("\n## ", 1)[0]
        assert [key for key in model.model_fields if f"| `{key}` |" not in body] == []


def test_prose_renders_markup_characters_literally_outside_code() -> None:
    prose = _hooks().prose
    assert prose("Bearer <key> for\n- every route") == "Bearer &lt;key&gt; for - every route"
    assert prose("ALLOW_LOCAL_TRAIN and `a_b <c>`") == r"ALLOW\_LOCAL\_TRAIN and `a_b <c>`"


def test_the_readme_stays_a_short_entry() -> None:
    assert (ROOT / "README.md").stat().st_size < 10_000, "the reference belongs in docs/, the README is the entry"
