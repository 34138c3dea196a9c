"""Talking to an Argo server's API (`/api/v1/workflows/<namespace>`): create a workflow, list this project's, and
terminate them (the duplicate check and the kill switch, through infra.scheduler).

The server is configured the way the `argo` CLI reads it: ARGO_SERVER (host:port, or a URL), ARGO_SECURE (default
true: https), ARGO_INSECURE_SKIP_VERIFY, ARGO_TOKEN (the Authorization header; `Bearer ` is added to a bare token)
and ARGO_NAMESPACE (default: the project's namespace). Every failure is a `ClusterError` in one line: what was asked,
and the server's own words.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from hera.workflows import models as m

from infra.k8s.validate import one_line
from infra.spec import ClusterError, label_selector

TIMEOUT_S = 60
# A workflow in one of these phases may still run (one without a phase yet is listed as Pending).
LIVE_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True)
class ArgoServer:
    url: str  # scheme://host:port, no trailing slash
    authorization: str | None
    verify: bool
    namespace: str


def argo_configured(environ: Mapping[str, str]) -> bool:
    """Whether an Argo server is configured the way the `argo` CLI reads it (ARGO_SERVER=host:port)."""
    return bool(environ.get("ARGO_SERVER", "").strip())


def argo_server(environ: Mapping[str, str], namespace: str) -> ArgoServer:
    """The server ARGO_* names; `namespace` unless ARGO_NAMESPACE says otherwise."""
    server = environ.get("ARGO_SERVER", "").strip()
    if not server:
        raise ClusterError("ARGO_SERVER is not set; set it to the Argo server's host:port")
    if "://" not in server:
        secure = environ.get("ARGO_SECURE", "true").lower() != "false"
        server = f"{'https' if secure else 'http'}://{server}"
    token = (environ.get("ARGO_TOKEN") or "").strip() or None
    if token is not None and len(token.split()) == 1:
        token = f"Bearer {token}"
    return ArgoServer(
        url=server.rstrip("/"),
        authorization=token,
        verify=environ.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() != "true",
        namespace=environ.get("ARGO_NAMESPACE") or namespace,
    )


def _path(*parts: str) -> str:
    return "/api/v1/workflows/" + "/".join(quote(part, safe="") for part in parts)


def _call(server: ArgoServer, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": server.authorization} if server.authorization else {}
    try:
        reply = requests.request(
            method, server.url + path, headers=headers, verify=server.verify, timeout=TIMEOUT_S, **kwargs
        )
    except requests.RequestException as exc:
        raise ClusterError(f"the Argo server {server.url} cannot be reached: {one_line(str(exc))}") from exc
    if not reply.ok:
        try:
            said = str(reply.json().get("message") or reply.reason)
        except (ValueError, AttributeError):
            said = reply.text or str(reply.reason)
        status = reply.status_code
        raise ClusterError(f"the Argo server {server.url} answered {method} {path} with {status}: {one_line(said)}")
    try:
        return reply.json()
    except ValueError as exc:
        raise ClusterError(f"the Argo server {server.url} answered {method} {path} with no JSON") from exc


def list_workflows(server: ArgoServer, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The workflows in the server's namespace carrying every one of `labels` (the server selects them)."""
    reply = _call(server, "GET", _path(server.namespace), params={"listOptions.labelSelector": label_selector(labels)})
    items = (reply.get("items") if isinstance(reply, dict) else None) or []
    return [item for item in items if isinstance(item, dict)]


def terminate_workflow(server: ArgoServer, namespace: str, name: str) -> None:
    """Stop the workflow now (its running pods are killed, no exit handler runs); the Workflow object stays, as a
    cancelled SLURM job stays in the accounting."""
    _call(server, "PUT", _path(namespace, name, "terminate"), json={"name": name, "namespace": namespace})


def submit_workflow(document: dict[str, Any], *, environ: Mapping[str, str]) -> str:
    """Create the workflow through the Argo server's API; returns `<namespace>/<name>`."""
    from hera.exceptions import HeraException
    from hera.workflows.service import WorkflowsService

    server = argo_server(environ, document.get("metadata", {}).get("namespace") or "default")
    service = WorkflowsService(
        host=server.url, token=server.authorization, verify_ssl=server.verify, namespace=server.namespace
    )
    request = m.WorkflowCreateRequest(namespace=server.namespace, workflow=m.Workflow.model_validate(document))
    try:
        with warnings.catch_warnings():
            # hera's service serialises with pydantic's deprecated `.json()`; nothing for our callers to act on
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="hera")
            created = service.create_workflow(request, namespace=server.namespace)
    except (HeraException, requests.RequestException) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ClusterError(f"the Argo server {server.url} refused the workflow: {one_line(message)}") from exc
    return f"{server.namespace}/{created.metadata.name}"
