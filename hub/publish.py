"""`oracle hub publish`: the publish gate, then one atomic commit of the staged files to the Hugging Face Hub.

The gate: a valid attestation for HEAD on a clean tree, a fresh staging of exactly the files to publish
(hub.stage.build: with `--checkpoint EXPORT`, the transformers folder `oracle export --format hf` wrote), and the
staged-file checks (PUB001-PUB005). Only then is the network used: the repository is created if missing (private
unless `--public`), the remote files are compared (by git blob id, or by sha256 for files in LFS), and one
`HfApi.create_commit` adds what changed and deletes what is no longer published, with a message naming the git
commit and the attestation digest. Unchanged content makes no commit.

Large files (the shards, anything the Hub routes to LFS) go through the client's Git LFS path: its object id is the
sha256 of the staged bytes, the digest the signed provenance lists, and the Hub checks the upload against it. Xet is
switched off for the upload: hf_xet is a native extension that hashes, chunks and opens its own connections out of
the process policy's sight (guards.process_policy, "Limits").

The token comes from HF_TOKEN (or HUGGINGFACE_TOKEN) and is passed to the client only: it is never printed, logged,
audited or staged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.stage import Staged
from oracle_base.digests import sha256_file
from oracle_base.errors import ExternalServiceError, Refused

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGINGFACE_TOKEN")
_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"


class PublishError(ExternalServiceError):
    """Publishing failed or was refused; one line says which kind (token, access, not found, conflict, server,
    network, gate) and what to do. `refused` is True when a gate refused (nothing was sent): exit 1; otherwise the Hub
    or the network failed: exit 3."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        if refused:
            self.exit_code = Refused.exit_code


@dataclass
class Change:
    path: str
    action: str  # "add", "update", "delete", "unchanged"


@dataclass
class Publication:
    repo_id: str
    endpoint: str
    staged: Staged
    changes: list[Change] = field(default_factory=list)
    commit_oid: str | None = None
    commit_url: str | None = None
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(change.action != "unchanged" for change in self.changes)

    def as_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "endpoint": self.endpoint,
            "dry_run": self.dry_run,
            "commit": self.commit_oid,
            "commit_url": self.commit_url,
            "changes": [{"path": c.path, "action": c.action} for c in self.changes],
            "git_commit": self.staged.commit,
            "attestation_digest": self.staged.attestation_digest,
        }


def token_from(environ: Mapping[str, str]) -> str | None:
    for name in TOKEN_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def git_blob_id(path: Path) -> str:
    """The git blob sha1 the Hub reports for a regular (non-LFS) file."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _describe_http_error(exc: Exception, repo_id: str, endpoint: str) -> PublishError:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, OSError) and not isinstance(exc, HfHubHTTPError) and getattr(exc, "filename", None):
        return PublishError(f"cannot read {exc.filename} ({exc.strerror}); nothing was published")
    if isinstance(exc, GatedRepoError):
        status = 403
    if isinstance(exc, RepositoryNotFoundError) and status not in {401, 403}:
        return PublishError(f"repository {repo_id} not found at {endpoint} (404); check --repo-id")
    if isinstance(exc, RevisionNotFoundError):
        return PublishError(f"revision main of {repo_id} not found (404); the repository has no main branch")
    if status == 401:
        return PublishError(
            f"the Hub at {endpoint} rejected the token (401): set HF_TOKEN to a valid write token for {repo_id}"
        )
    if status == 403:
        namespace = repo_id.split("/", 1)[0]
        return PublishError(
            f"the token has no write access to the namespace {namespace!r} (403); use a token of a member of "
            f"{namespace} with write access"
        )
    if status == 404:
        return PublishError(f"{repo_id} not found at {endpoint} (404); check --repo-id")
    if status in {409, 412}:
        return PublishError(
            f"the Hub refused the commit as a conflict ({status}): {repo_id} changed meanwhile; run again"
        )
    if status == 400 or status == 422:
        lines = [line for line in (getattr(exc, "server_message", None) or str(exc)).splitlines() if line.strip()]
        server = lines[0] if lines else "no reason given"
        return PublishError(f"the Hub refused the request ({status}): {server}")
    if status is not None and status >= 500:
        return PublishError(
            f"the Hub at {endpoint} failed with a server error ({status}); nothing was published, try again later"
        )
    if isinstance(exc, HfHubHTTPError):
        return PublishError(f"the Hub answered {status}: {str(exc).splitlines()[0]}")
    if isinstance(exc, ConnectionError | TimeoutError) or type(exc).__module__.split(".")[0] in {"httpx2", "httpx"}:
        return PublishError(
            f"cannot reach the Hub at {endpoint} ({type(exc).__name__}); check --endpoint and the network"
        )
    return PublishError(
        f"the Hub client failed on {endpoint}'s answer ({type(exc).__name__}: {exc}); nothing was published"
    )


def publish(root: Path, *, repo_id: str, **options: Any) -> Publication:
    """`_publish`, with every decision on the audit log (never the token)."""
    from guards import git
    from guards.audit import append_entry

    root = root.resolve()
    commit = git.head_commit_or_none(root)
    details: dict[str, object] = {"repo_id": repo_id, "dry_run": bool(options.get("dry_run"))}
    try:
        publication = _publish(root, repo_id=repo_id, **options)
    except PublishError as exc:
        append_entry(
            root,
            gate="publish",
            result="refused" if exc.refused else "error",
            commit=commit,
            details={**details, "reason": str(exc)},
        )
        raise
    except Exception as exc:  # anything else (settings, I/O): on the log as an error, then reported by the caller
        append_entry(
            root, gate="publish", result="error", commit=commit, details={**details, "reason": type(exc).__name__}
        )
        raise
    result = "dry-run" if publication.dry_run else "published" if publication.commit_oid else "unchanged"
    append_entry(
        root,
        gate="publish",
        result=result,
        commit=commit,
        details={
            **details,
            "hub_commit": publication.commit_oid,
            "endpoint": publication.endpoint,
            "changes": {c.path: c.action for c in publication.changes},
            "attestation_digest": publication.staged.attestation_digest,
        },
    )
    return publication


def _publish(
    root: Path,
    *,
    repo_id: str,
    endpoint: str | None = None,
    private: bool = True,
    dry_run: bool = False,
    checkpoint: Path | None = None,
    tokenizer: Path | None = None,
    out: Path | None = None,
    staged_dir: Path | None = None,
    config_name: str = "oracle850b",
    environ: Mapping[str, str] | None = None,
) -> Publication:
    """Gate, stage privately and publish from that copy (or, for a dry run, say what would change)."""
    import re
    import shutil

    from guards import git
    from guards.attestation import AttestationError
    from hub.stage import StageError, build, reviewed

    env = os.environ if environ is None else environ
    root = root.resolve()
    if not re.fullmatch(_REPO_ID, repo_id):
        raise PublishError(f"--repo-id {repo_id!r} is not ORG/NAME (letters, digits, . _ -)", refused=True)
    endpoint = (endpoint or env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    _check_endpoint(endpoint)
    if staged_dir is not None and (checkpoint is not None or tokenizer is not None):
        raise PublishError("--staged publishes a folder as built: drop --checkpoint and --tokenizer", refused=True)
    try:
        dirty = git.dirty_paths(root)
    except git.GitError as exc:
        raise PublishError(f"{root} is not a git checkout ({exc}); publish from the repository", refused=True) from exc
    if dirty:
        raise PublishError(
            f"the tree has uncommitted changes ({', '.join(dirty[:3])}); commit them and run `make guards`, "
            "then publish",
            refused=True,
        )
    token = token_from(env)  # before the gate: a publish that cannot send anything is told so at once
    if token is None and not dry_run:
        raise PublishError("no token: set HF_TOKEN (or HUGGINGFACE_TOKEN) to a write token for the Hub", refused=True)
    _run_publish_gate(root)
    secrets = (token,) if token is not None else ()
    try:
        if staged_dir is not None:
            staged = reviewed(root, staged_dir, repo_id=repo_id, secret_values=secrets)
        else:  # staged into a folder only this process uses: what is checked is what is sent
            staged = build(
                root,
                repo_id=repo_id,
                out=out,
                checkpoint=checkpoint,
                tokenizer=tokenizer,
                config_name=config_name,
                private=True,
                secret_values=secrets,
            )
    except AttestationError as exc:
        raise PublishError(f"publish refused: {exc}", refused=True) from exc
    except StageError as exc:
        raise PublishError(f"publish refused: {exc}", refused=True) from exc
    try:
        return _send(root, repo_id, endpoint, staged, token, private=private, dry_run=dry_run)
    finally:
        shutil.rmtree(staged.directory, ignore_errors=True)


def _check_endpoint(endpoint: str) -> None:
    """The token travels in a header: only over TLS, or to this machine."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise PublishError(
            f"--endpoint {endpoint}: the token is sent only over https (or plain http to localhost)", refused=True
        )


def _run_publish_gate(root: Path) -> None:
    """The `publish` gate's policies over what the publish reads (the environment, the lock, the model config)."""
    from guards.runner import run_gate
    from policies.rule import Gate
    from policies.settings import load_settings

    flagship = load_settings(root).architecture.flagship
    files = [f"oracle/moe850b/configs/{flagship}.moe.json", "hub/assets/generation_config.json"]
    result = run_gate(root, Gate.publish, [f for f in files if (root / f).is_file()])
    if not result.passed:
        first = (
            result.errors[0]
            if result.errors
            else (f"{result.findings[0].rule_id} {result.findings[0].path}: {result.findings[0].message}")
        )
        raise PublishError(
            f"publish refused: the publish gate failed ({first}); run `oracle guards run --gate publish`", refused=True
        )


def _send(
    root: Path, repo_id: str, endpoint: str, staged: Staged, token: str | None, *, private: bool, dry_run: bool
) -> Publication:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    publication = Publication(repo_id, endpoint, staged, dry_run=dry_run)
    from huggingface_hub import constants

    api = HfApi(endpoint=endpoint, token=token or False)
    xet_was_disabled = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True  # read at each upload (module docstring: LFS, not Xet)
    try:
        head, remote = _remote_files(api, repo_id) if token is not None else (None, {})
        publication.changes = _plan(staged.directory, remote)
        if dry_run or not publication.changed:
            return publication
        dropped = [c.path for c in publication.changes if c.action == "delete" and _published_weights(c.path)]
        if dropped and not staged.has_weights:  # a new export replaces the old one's files; nothing else may drop them
            raise PublishError(
                f"publish refused: {repo_id} holds published weights ({', '.join(dropped)}) that this publish would "
                "delete; publish with --checkpoint, or remove them on the Hub deliberately",
                refused=True,
            )
        if head is None:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        operations: list[CommitOperationAdd | CommitOperationDelete] = []
        for change in publication.changes:
            if change.action in {"add", "update"}:
                operations.append(CommitOperationAdd(change.path, str(staged.directory / change.path)))
            elif change.action == "delete":
                operations.append(CommitOperationDelete(change.path))
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Publish Oracle at {staged.commit[:12]}",
            commit_description=(
                f"git commit: {staged.commit}\nattestation sha256: {staged.attestation_digest}\n"
                "published by `oracle hub publish` after the publish gate passed"
            ),
            repo_type="model",
            revision="main",
            parent_commit=head,  # the plan was made against this head: a commit in between is a conflict
        )
    except PublishError:
        raise
    except Exception as exc:
        raise _describe_http_error(_cause(exc), repo_id, endpoint) from None
    finally:
        constants.HF_HUB_DISABLE_XET = xet_was_disabled
    publication.commit_oid = info.oid
    publication.commit_url = str(info.commit_url)
    return publication


def _published_weights(path: str) -> bool:
    """A file of published weights: any safetensors file, the shard index, the provenance record."""
    return path.endswith(".safetensors") or path in {"model.safetensors.index.json", "provenance.json"}


def _cause(exc: Exception) -> Exception:
    """The Hub's answer behind the client's wrapper of a failed LFS upload ("Error while uploading 'X'")."""
    from huggingface_hub.errors import HfHubHTTPError

    cause = exc.__cause__
    return cause if isinstance(exc, RuntimeError) and isinstance(cause, HfHubHTTPError) else exc


def _remote_files(api: Any, repo_id: str) -> tuple[str | None, dict[str, tuple[str, str | None]]]:
    """The head commit of main and path -> (git blob id, LFS sha256 or None) of its files; (None, {}) when the
    repository does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        head = api.repo_info(repo_id, repo_type="model", revision="main").sha
        entries = list(api.list_repo_tree(repo_id, recursive=True, repo_type="model", revision=head))
    except RepositoryNotFoundError as exc:
        if getattr(getattr(exc, "response", None), "status_code", None) in {401, 403}:
            raise
        return None, {}
    except RevisionNotFoundError:
        return None, {}
    files = {
        entry.path: (entry.blob_id, entry.lfs.sha256 if entry.lfs is not None else None)
        for entry in entries
        if isinstance(entry, RepoFile)
    }
    return head, files


# Files the Hub itself keeps in every repository; never deleted by a publish.
_HUB_OWNED = frozenset({".gitattributes"})


def _same(path: Path, remote: tuple[str, str | None]) -> bool:
    blob_id, lfs_sha256 = remote
    if lfs_sha256 is not None:  # stored in LFS/Xet: the Hub reports the content's sha256
        return sha256_file(path) == lfs_sha256
    return blob_id == git_blob_id(path)


def _plan(directory: Path, remote: dict[str, tuple[str, str | None]]) -> list[Change]:
    changes = []
    local = {p.name: p for p in sorted(directory.iterdir()) if p.is_file()}
    for name, path in local.items():
        if name not in remote:
            changes.append(Change(name, "add"))
        elif not _same(path, remote[name]):
            changes.append(Change(name, "update"))
        else:
            changes.append(Change(name, "unchanged"))
    for name in sorted(set(remote) - set(local) - _HUB_OWNED):
        changes.append(Change(name, "delete"))
    return changes
