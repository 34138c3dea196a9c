"""Offline validation of a model card's YAML metadata against a local schema.

The Hub validates metadata only over the network (`ModelCard.validate`, `POST /api/validate-yaml`); the publish gate
must decide before anything is sent, so the rules live here and the Hub's vocabularies ship as data files in
`hub/assets/`: license identifiers (`licenses.txt`), ISO 639-1 language codes (`languages.txt`) and pipeline tags
(`pipeline_tags.txt`). Besides the Hub's own rules, two are ours: a card names no base model outside our namespaces,
and it carries no evaluation results (we publish none that were not measured, and none are yet).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

from oracle_base.errors import ConfigurationError

ASSETS_DIR = Path(__file__).parent / "assets"
REQUIRED_KEYS = ("license", "language", "library_name", "pipeline_tag", "tags")

_LIBRARY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LICENSE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
REPO_ID = re.compile(r"^(?P<namespace>[A-Za-z0-9][A-Za-z0-9._-]*)/[A-Za-z0-9][A-Za-z0-9._-]*$")


class CardError(ConfigurationError, ValueError):
    """A model card that cannot be read or built; the message names the line or field and the fix."""


def _asset_lines(name: str) -> list[str]:
    lines = (ASSETS_DIR / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


@cache
def hub_licenses() -> frozenset[str]:
    """The Hub's license identifiers (hub/assets/licenses.txt)."""
    return frozenset(line.strip() for line in _asset_lines("licenses.txt"))


@cache
def hub_pipeline_tags() -> frozenset[str]:
    """The Hub's pipeline tags (hub/assets/pipeline_tags.txt)."""
    return frozenset(line.strip() for line in _asset_lines("pipeline_tags.txt"))


@cache
def iso_639_1_languages() -> dict[str, str]:
    """ISO 639-1 code -> English name (hub/assets/languages.txt)."""
    pairs = (line.split("\t", 1) for line in _asset_lines("languages.txt"))
    return {code.strip(): name.strip() for code, name in pairs}


def split_front_matter(text: str) -> tuple[dict[str, object], str]:
    """Split a card into its YAML metadata (parsed with yaml.safe_load) and the Markdown body after it.

    The card must start with a `---` line and the metadata must end with another; errors name the card's line.
    """
    import yaml

    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        raise CardError(
            "line 1: the card does not start with YAML front matter; begin it with a `---` line, the metadata, "
            "and a closing `---` line"
        )
    closing = next((index for index in range(1, len(lines)) if lines[index].rstrip("\r\n") == "---"), None)
    if closing is None:
        raise CardError("line 1: the front matter opened here is never closed; add a `---` line after the metadata")
    try:
        metadata = yaml.safe_load("".join(lines[1:closing]))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 2}" if mark is not None else "front matter"  # +1: 1-based, +1: the opening ---
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CardError(f"{where}: invalid YAML in the front matter ({problem}); fix the syntax there") from exc
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise CardError(
            f"line 2: the front matter is a YAML {type(metadata).__name__}, not a mapping; write `key: value` lines"
        )
    return {str(key): value for key, value in metadata.items()}, "".join(lines[closing + 1 :])


def validate_card_text(text: str, *, allowed_namespaces: list[str]) -> list[str]:
    """The problems of a whole card (README.md text); raises CardError when its front matter cannot be parsed."""
    metadata, _ = split_front_matter(text)
    return validate_card_metadata(metadata, allowed_namespaces=allowed_namespaces)


def validate_card_metadata(metadata: Mapping[str, object], *, allowed_namespaces: list[str]) -> list[str]:
    """Every problem of a card's metadata, one line each naming the field and the fix; empty when it is valid."""
    problems = [f"{path}: is null; give it a value or remove the key" for path in _null_paths(metadata, "")]
    for key in REQUIRED_KEYS:
        if key not in metadata:
            problems.append(f"{key}: missing; the card's metadata must set {', '.join(REQUIRED_KEYS)}")
    checks = (
        ("license", _check_license),
        ("language", _check_language),
        ("library_name", _check_library_name),
        ("pipeline_tag", _check_pipeline_tag),
        ("tags", _check_tags),
        ("model-index", _check_model_index),
    )
    for key, check in checks:
        if metadata.get(key) is not None:
            problems += check(metadata)
    if metadata.get("base_model") is not None:
        problems += _check_base_model(metadata["base_model"], allowed_namespaces)
    return problems


def _null_paths(value: object, path: str) -> Iterator[str]:
    if value is None:
        yield path or "(metadata)"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _null_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _null_paths(item, f"{path}[{index}]")


def _suggestion(value: str, choices: frozenset[str] | list[str]) -> str:
    close = difflib.get_close_matches(value.lower(), sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_license(metadata: Mapping[str, object]) -> list[str]:
    value = metadata["license"]
    if not isinstance(value, str):
        return [f"license: must be one license identifier (a string), not {type(value).__name__}"]
    if value not in hub_licenses():
        return [
            f"license: {value!r} is not a Hub license identifier{_suggestion(value, hub_licenses())}; use one of "
            "hub/assets/licenses.txt (this project's is apache-2.0), or `other` with license_name and license_link"
        ]
    if value != "other":
        return []
    problems = []
    name, link = metadata.get("license_name"), metadata.get("license_link")
    if not isinstance(name, str) or not _LICENSE_NAME.match(name):
        problems.append(
            "license_name: `license: other` needs a license_name in lower case with dashes (my-license-1.0)"
        )
    if not isinstance(link, str) or not link.strip():
        problems.append("license_link: `license: other` needs a license_link (a URL or the path of the LICENSE file)")
    return problems


def _check_language(metadata: Mapping[str, object]) -> list[str]:
    value = metadata["language"]
    items = [("language", value)] if isinstance(value, str) else None
    if isinstance(value, list):
        items = [(f"language[{index}]", item) for index, item in enumerate(value)]
        if not items:
            return ["language: empty; list the ISO 639-1 codes of the languages the model handles (en, ru)"]
    if items is None:
        return [f"language: must be an ISO 639-1 code or a list of them, not {type(value).__name__}"]
    codes = iso_639_1_languages()
    by_name = {name.lower(): code for code, name in codes.items()}
    problems = []
    for where, item in items:
        if item is None:
            continue  # reported as null
        if not isinstance(item, str):
            problems.append(f"{where}: {item!r} is not a string; use an ISO 639-1 code such as 'en'")
        elif item not in codes:
            code = by_name.get(item.strip().lower()) or (item.lower() if item.lower() in codes else None)
            hint = f"use {code!r}" if code else "use a two-letter ISO 639-1 code from hub/assets/languages.txt"
            problems.append(f"{where}: {item!r} is not an ISO 639-1 language code; {hint}")
    return problems


def _check_library_name(metadata: Mapping[str, object]) -> list[str]:
    value = metadata["library_name"]
    if not isinstance(value, str) or not _LIBRARY_NAME.match(value):
        return [
            f"library_name: {value!r} is not a plain library name; use one word such as 'oracle' or 'pytorch' "
            "(letters, digits, . _ -)"
        ]
    return []


def _check_pipeline_tag(metadata: Mapping[str, object]) -> list[str]:
    value = metadata["pipeline_tag"]
    if not isinstance(value, str):
        return [f"pipeline_tag: must be one pipeline tag (a string), not {type(value).__name__}"]
    if value not in hub_pipeline_tags():
        return [
            f"pipeline_tag: {value!r} is not a Hub pipeline tag{_suggestion(value, hub_pipeline_tags())}; use one "
            "of hub/assets/pipeline_tags.txt (a language model is 'text-generation')"
        ]
    return []


def _check_tags(metadata: Mapping[str, object]) -> list[str]:
    value = metadata["tags"]
    if not isinstance(value, list):
        return [f"tags: must be a list of strings, not {type(value).__name__}; write one `- tag` line per tag"]
    problems = []
    for index, tag in enumerate(value):
        if tag is None:
            continue  # reported as null
        if not isinstance(tag, str):
            problems.append(f"tags[{index}]: {tag!r} is a {type(tag).__name__}, not a string; quote it or remove it")
        elif not tag.strip():
            problems.append(f"tags[{index}]: empty tag; remove it")
    return problems


def _check_base_model(value: object, allowed_namespaces: list[str]) -> list[str]:
    items = [("base_model", value)] if isinstance(value, str) else None
    if isinstance(value, list):
        items = [(f"base_model[{index}]", item) for index, item in enumerate(value)]
    if items is None:
        return [f"base_model: must be a repo id or a list of them, not {type(value).__name__}"]
    allowed = ", ".join(allowed_namespaces) or "none configured"
    problems = []
    for where, item in items:
        if item is None:
            continue  # reported as null
        match = REPO_ID.match(item) if isinstance(item, str) else None
        if match is None:
            problems.append(f"{where}: {item!r} is not a Hub repo id (namespace/name); name one of our own models")
        elif match["namespace"] not in allowed_namespaces:
            problems.append(
                f"{where}: {item!r} is outside our namespaces ({allowed}); only our own models may be named as a "
                "base model: remove it, or add the namespace to policies.toml [external_weights] after review"
            )
    return problems


def _check_model_index(metadata: Mapping[str, object]) -> list[str]:
    value = metadata["model-index"]
    if not isinstance(value, list):
        return [f"model-index: must be a list of models, not {type(value).__name__}"]
    problems = []
    for index, entry in enumerate(value):
        results = entry.get("results") if isinstance(entry, Mapping) else None
        if not results:
            continue
        if not isinstance(results, list):
            problems.append(f"model-index[{index}].results: must be a list; we publish none, so remove it")
            continue
        for position, result in enumerate(results):
            metrics = result.get("metrics") if isinstance(result, Mapping) else None
            what = f"{len(metrics)} metric(s)" if isinstance(metrics, list) and metrics else "a result"
            problems.append(
                f"model-index[{index}].results[{position}]: {what}; our cards report no evaluation results (none "
                "have been measured on published weights), so remove it"
            )
    return problems
