"""Talking to the cluster: applying manifests, and listing or deleting this project's Jobs (the duplicate check and
the kill switch, through infra.scheduler).

`kubectl` is used when it is on PATH (server-side apply, field manager `oracle`); otherwise the `kubernetes` Python
client does the same through its dynamic client and BatchV1Api. Jobs are listed as the API returns them (plain dicts,
`kubectl get -o json`), selected by the API server on the labels asked for. Every failure is a `ClusterError` whose
message is one line: what failed, and the cluster's own first line about it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infra.k8s.manifests import Manifest, to_yaml
from infra.spec import ClusterError, label_selector

FIELD_MANAGER = "oracle"
KUBECTL_TIMEOUT_S = 300

__all__ = [
    "ClusterError",
    "apply_manifests",
    "delete_jobs",
    "get_jobs",
    "kubeconfig_present",
]


def kubeconfig_present(environ: Mapping[str, str]) -> Path | None:
    """The kubeconfig kubectl would read: the first existing file of KUBECONFIG, else ~/.kube/config; or None."""
    listed = environ.get("KUBECONFIG", "")
    if listed:  # as for kubectl, a set KUBECONFIG replaces the default location
        for part in listed.split(os.pathsep):
            path = Path(part).expanduser()
            if part and path.is_file():
                return path
        return None
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    default = home / ".kube" / "config"
    return default if default.is_file() else None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def _kubectl(kubectl: str, args: list[str], *, kubeconfig: Path | None, stdin: str | None = None) -> str:
    command = [kubectl, *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *args]
    try:
        if stdin is None:  # kubectl must never wait on the caller's terminal
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S
            )
        else:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"kubectl {args[0]} did not finish in {KUBECTL_TIMEOUT_S} s; check the cluster") from exc
    except OSError as exc:
        raise ClusterError(f"kubectl could not be run ({exc.strerror}): {kubectl}") from exc
    if done.returncode != 0:
        raise ClusterError(f"kubectl {args[0]} failed: {_first_line(done.stderr or done.stdout)}")
    return done.stdout


def _names(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip()]


# --- the Python client, when kubectl is not installed -------------------------------------------------------------


def _client_error(exc: BaseException, action: str) -> ClusterError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        try:
            message = str(json.loads(exc.body or "{}").get("message") or exc.reason)
        except (ValueError, AttributeError):
            message = str(exc.reason)
        return ClusterError(f"{action} failed: {exc.status} {_first_line(message)}")
    return ClusterError(f"{action} failed: {_first_line(str(exc)) if str(exc) else type(exc).__name__}")


def _api_client(kubeconfig: Path | None) -> Any:
    from kubernetes import config

    # the client's config loader carries no annotations; this is its type
    new_client: Callable[..., Any] = config.new_client_from_config
    try:
        return new_client(config_file=str(kubeconfig) if kubeconfig else None)
    except Exception as exc:  # the loader raises ConfigException, OSError, yaml and key errors alike
        raise ClusterError(
            f"kubeconfig {kubeconfig or '(default)'} cannot be loaded: {_first_line(str(exc) or type(exc).__name__)}"
        ) from exc


def _apply_with_client(manifests: Sequence[Manifest], kubeconfig: Path | None) -> None:
    from kubernetes import dynamic

    api = _api_client(kubeconfig)
    dynamic_client: Callable[[Any], Any] = dynamic.DynamicClient
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            resource = dynamic_client(api).resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
            resource.server_side_apply(body=manifest, field_manager=FIELD_MANAGER)
        except Exception as exc:  # ApiException, connection errors, discovery errors
            raise _client_error(exc, f"applying {where}") from exc


def _batch_api(kubeconfig: Path | None) -> Any:
    from kubernetes import client

    return client.BatchV1Api(_api_client(kubeconfig))


def _get_with_client(namespace: str, selector: str, kubeconfig: Path | None) -> list[dict[str, Any]]:
    try:
        # the raw reply, so both paths hand back what `kubectl get -o json` prints
        reply = _batch_api(kubeconfig).list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
        items = json.loads(reply.data).get("items") or []
    except ClusterError:
        raise
    except Exception as exc:
        raise _client_error(exc, f"listing jobs in namespace {namespace}") from exc
    return [item for item in items if isinstance(item, dict)]


def _delete_with_client(
    names: Sequence[str], namespace: str, labels: Mapping[str, str], kubeconfig: Path | None
) -> list[str]:
    """Each Job read, its labels checked, then deleted on the precondition that it is still that object (its uid): a
    Job of the same name made since (by another project too) is never the one deleted."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = _batch_api(kubeconfig)
    deleted = []
    for name in names:
        where = f"job.batch/{name} in namespace {namespace}"
        try:
            job = api.read_namespaced_job(name, namespace)
            carried = job.metadata.labels or {}
            if any(carried.get(key) != value for key, value in labels.items()):
                continue  # not (or no longer) this project's
            options = client.V1DeleteOptions(
                propagation_policy="Foreground", preconditions=client.V1Preconditions(uid=job.metadata.uid)
            )
            api.delete_namespaced_job(name, namespace, body=options)
        except ApiException as exc:
            if exc.status in (404, 409):  # gone since it was listed, or replaced by another object of that name
                continue
            raise _client_error(exc, f"deleting {where}") from exc
        except Exception as exc:
            raise _client_error(exc, f"deleting {where}") from exc
        deleted.append(f"job.batch/{name}")
    return deleted


# --- the public operations ----------------------------------------------------------------------------------------


def apply_manifests(manifests: Sequence[Manifest], *, kubeconfig: Path | None) -> list[str]:
    """Server-side apply of every manifest; returns `Kind/name` of each applied object, in order."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        args = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
        _kubectl(kubectl, args, kubeconfig=kubeconfig, stdin=to_yaml(manifests))
    else:
        _apply_with_client(manifests, kubeconfig)
    return [f"{manifest['kind']}/{manifest['metadata']['name']}" for manifest in manifests]


def get_jobs(namespace: str, labels: Mapping[str, str], *, kubeconfig: Path | None) -> list[dict[str, Any]]:
    """The Jobs in the namespace carrying every one of `labels` (the API server selects), as the API returns them."""
    selector = label_selector(labels)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _get_with_client(namespace, selector, kubeconfig)
    args = ["get", "jobs", "--namespace", namespace, "-l", selector, "-o", "json"]
    output = _kubectl(kubectl, args, kubeconfig=kubeconfig)
    try:
        items = json.loads(output).get("items") or []
    except (ValueError, AttributeError) as exc:
        raise ClusterError(f"kubectl get jobs printed no job list: {_first_line(output)}") from exc
    return [item for item in items if isinstance(item, dict)]


def delete_jobs(
    names: Sequence[str], namespace: str, labels: Mapping[str, str], *, kubeconfig: Path | None
) -> list[str]:
    """Delete these Jobs, each only while it still carries every one of `labels` (the project's: the list was made
    before the user confirmed, and a Job of that name may have been replaced since), and in the foreground their
    pods, without waiting; returns `job.batch/<name>` of each one deleted (one gone or no longer ours is skipped)."""
    if not names:
        return []
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _delete_with_client(names, namespace, labels, kubeconfig)
    selector = label_selector(labels)
    deleted: list[str] = []
    for name in names:  # one call a name: kubectl takes a selector or names, and the selector must hold for each
        args = ["delete", "jobs", "--namespace", namespace, "-l", selector, "--field-selector", f"metadata.name={name}"]
        args += ["--ignore-not-found", "--cascade=foreground", "--wait=false", "-o", "name"]
        deleted += _names(_kubectl(kubectl, args, kubeconfig=kubeconfig))
    return deleted
