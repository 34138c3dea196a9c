"""Offline validation of Kubernetes manifests against the API's own OpenAPI schema, as `kubernetes-validate` ships
it per Kubernetes release, in strict mode: an unknown field is an error, as it is for `kubectl apply
--validate=strict`, rather than something the API server silently drops."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jsonschema
import kubernetes_validate

from infra.spec import SpecError

# The newest release this kubernetes-validate ships schemas for (kubernetes_validate.latest_version()).
KUBERNETES_VERSION = "1.37"
_MESSAGE_MAX = 200


def field_path(parts: Iterable[str | int]) -> str:
    """`spec.template.spec.containers[0].image` from a JSON-schema error path."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _object_name(manifest: dict[str, Any], index: int) -> str:
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{manifest.get('kind', '?')}/{name or f'#{index}'}"


def one_line(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 1] + "…"


def explain(error: jsonschema.ValidationError, schema: str) -> str:
    """`<field path>: <reason> (<schema>); <what to do>`, one line, for a JSON-schema error."""
    message = error.message
    alternatives = error.context or []
    if error.validator in ("anyOf", "oneOf") and alternatives and all(e.validator == "type" for e in alternatives):
        # an optional field of the wrong type: name the type wanted rather than "not valid under any schema"
        wanted = [t for e in alternatives for t in _types(e.validator_value) if t != "null"]
        message = f"{error.instance!r} is not of type {' or '.join(wanted)}"
    hint = {"additionalProperties": "remove or rename that key", "required": "add it"}.get(
        str(error.validator), "fix that value"
    )
    return f"{field_path(error.absolute_path)}: {one_line(message)} ({schema}); {hint}"


def _types(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def validate_manifests(manifests: Sequence[dict[str, Any]], kubernetes_version: str = KUBERNETES_VERSION) -> None:
    """Raise SpecError at the first manifest that does not validate: the object, the field path and the reason."""
    for index, manifest in enumerate(manifests):
        if not isinstance(manifest, dict) or not manifest.get("apiVersion") or not manifest.get("kind"):
            raise SpecError(f"manifest #{index} has no apiVersion and kind; every Kubernetes object needs both")
        where = _object_name(manifest, index)
        try:
            kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise SpecError(f"{where}: {explain(exc, f'Kubernetes {exc.version} schema, strict')}") from exc
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise SpecError(
                f"{where}: Kubernetes {kubernetes_version} has no kind {manifest['kind']} in apiVersion "
                f"{manifest['apiVersion']}; use a built-in kind and apiVersion"
            ) from exc
