"""A small, strict stand-in for the Hugging Face Hub, for tests: the endpoints huggingface_hub 2.x calls to create a
private model repo, commit small files and read them back, answered with the status codes, `X-Error-Code` /
`X-Error-Message` headers and JSON bodies of the real Hub.

Large files go through Git LFS as with the real Hub's legacy path: preupload answers `lfs` for a path an LFS pattern
of the revision's `.gitattributes` matches (`*.safetensors`, ...) or a file over 10 MiB; the LFS batch API
(`{repo}.git/info/lfs/objects/batch`, basic transfer only, never Xet) hands out an upload href (a one-time ticket,
like a presigned URL: it needs no token) and a verify href; the PUT of the bytes is refused (400) unless their sha256
and size are the oid and size announced; objects are stored by oid per repo; a commit's `lfsFile` line is refused
unless its oid was uploaded to that repo (with that size); listings report LFS files with their `lfs` sha256, size
and pointer size, as the Hub does, and downloads carry `X-Linked-Etag` / `X-Linked-Size`.

Refused like the Hub: missing tokens (401, `RepoNotFound` on repo routes), unknown tokens (401 "Invalid credentials in
Authorization header"), creating under a namespace the user can't write (403), reading or writing a repo of such a
namespace (404 `RepoNotFound`: every repo here is private, and the Hub does not reveal private repos), unknown repos,
revisions and files (404 with their error codes), malformed NDJSON commits (400), and README.md front matter the Hub's
metadata validation rejects (`/api/validate-yaml` and the commit itself). Like the Hub, a new repo starts with an
"initial commit" holding `.gitattributes`.

Left out: Xet (uploads through it are refused: no `xet-write-token` route; a client must set HF_HUB_DISABLE_XET,
as `oracle hub publish` does), LFS multipart transfer and downloads through the batch API, branches other than
`main` (a commit id works as a read-only revision), pull requests, dataset and space repos. State lives in memory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import hashlib
import http
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
NOT_LOGGED_IN = "Invalid username or password."
EMPTY_METADATA = (
    "empty or missing yaml metadata in repo card (https://huggingface.co/docs/hub/model-cards#model-card-metadata)"
)
MAX_REGULAR_FILE = 10 * 1024 * 1024  # the Hub wants anything larger in LFS/Xet
# License identifiers a card may name, from the table at https://huggingface.co/docs/hub/repositories-licenses.
_HUB_LICENSES_WORDS = """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
    gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
    ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma
    unknown other"""
HUB_LICENSES = frozenset(_HUB_LICENSES_WORDS.split())
# What the Hub puts in a new model repo's first commit (abridged: a few of its LFS patterns).
INITIAL_GITATTRIBUTES = b"".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n".encode()
    for pattern in ("*.bin", "*.ckpt", "*.gz", "*.h5", "*.npy", "*.onnx", "*.pt", "*.pth", "*.safetensors", "*.zip")
)
# The same front-matter fence huggingface_hub's repocard.py recognises.
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_REPO_NAME = re.compile(r"^(?![-.])(?!.*--)(?!.*\.\.)[A-Za-z0-9._-]{1,96}(?<![-.])$")
_COMMIT_OID = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
LFS_CONTENT_TYPE = "application/vnd.git-lfs+json"
_INFO_FIELDS = frozenset(
    {"author", "cardData", "createdAt", "disabled", "downloads", "gated", "lastModified", "likes", "private", "sha"}
    | {"siblings", "tags", "usedStorage"}
)


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a file's content (the Hub's `oid`/`ETag` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The Git LFS pointer file that stands for an object in git (its blob id is the Hub's `oid` for an LFS file)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def lfs_patterns(gitattributes: bytes) -> list[str]:
    """The patterns a `.gitattributes` routes to LFS (`filter=lfs`)."""
    patterns = []
    for line in gitattributes.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) > 1 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    """git's rule: a pattern without a slash matches the file name at any depth, one with a slash the whole path."""
    return fnmatch.fnmatchcase(path if "/" in pattern.strip("/") else path.rsplit("/", 1)[-1], pattern.strip("/"))


def check_card(content: str) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """A README's front matter (None when absent or invalid), then the errors for which the Hub refuses it, then its
    warnings."""
    match = _FRONT_MATTER.match(content)
    if match is None:
        return None, [], [EMPTY_METADATA]
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        return None, [f"Invalid YAML in README.md: {err}"], []
    if data is None:
        return None, [], [EMPTY_METADATA]
    if not isinstance(data, dict):
        return None, ['"value" must be of type object'], []
    errors = []
    if any("." in key or "$" in key for key in _keys(data)):
        errors.append('You can\'t have a key with a "." or "$" character in your YAML metadata')
    errors += [f'"{key}" must be one of [{", ".join(sorted(HUB_LICENSES))}]' for key in _bad_licenses(data)]
    tags = data.get("tags")
    if tags is not None and not isinstance(tags, list):
        errors.append('"tags" must be an array')
    elif tags is not None:
        errors += [f'"tags[{i}]" must be a string' for i, tag in enumerate(tags) if not isinstance(tag, str)]
    return (data if not errors else None), errors, []


def _keys(data: object) -> Iterator[str]:
    """Every mapping key, at any depth."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(data, list):
        for item in data:
            yield from _keys(item)


def _bad_licenses(data: dict[str, Any]) -> list[str]:
    value = data.get("license")
    if value is None or (isinstance(value, str) and value in HUB_LICENSES):
        return []
    if isinstance(value, list):
        return [f"license[{i}]" for i, item in enumerate(value) if not (isinstance(item, str) and item in HUB_LICENSES)]
    return ["license"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """A refusal, sent as the Hub sends it: `{"error": message}` plus `X-Error-Message` (and `X-Error-Code`)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass(frozen=True)
class Commit:
    """One commit of `main`: the whole file tree after it, and the paths it added, changed or deleted."""

    oid: str
    title: str
    message: str
    author: str
    date: str
    tree: dict[str, bytes]
    changed: tuple[str, ...]
    lfs: frozenset[str] = frozenset()  # the paths of `tree` stored in LFS

    def lfs_info(self, path: str) -> dict[str, Any] | None:
        """The `lfs` block of a listing entry (sha256 oid, size, pointer size), None for a regular file."""
        if path not in self.lfs:
            return None
        content = self.tree[path]
        oid = hashlib.sha256(content).hexdigest()
        return {"oid": oid, "size": len(content), "pointerSize": len(lfs_pointer(oid, len(content)))}

    def blob_id(self, path: str) -> str:
        """The git blob id of `path`: of its content, or of its LFS pointer."""
        lfs = self.lfs_info(path)
        return git_blob_sha1(lfs_pointer(lfs["oid"], lfs["size"]) if lfs else self.tree[path])


@dataclass
class Repo:
    repo_id: str
    created_at: str
    history: list[Commit] = field(default_factory=list)  # oldest first

    def at(self, revision: str) -> Commit:
        """The commit `revision` (`main` or a full commit id) names."""
        if revision == "main":
            return self.history[-1]
        for commit in self.history:
            if commit.oid == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class Operation(NamedTuple):
    """One line of a commit: "file" (content), "lfsFile" (oid and size, the content uploaded before), "deletedFile"
    or "deletedFolder"."""

    kind: str
    path: str
    content: bytes = b""
    oid: str | None = None
    size: int | None = None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(payload: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps(payload, default=str).encode()
    return Reply(status, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def _error_reply(error: HubError) -> Reply:
    first_line = (error.message.splitlines() or [""])[0]
    headers = {"X-Error-Message": first_line.encode("latin-1", "replace").decode("latin-1")}
    if error.code is not None:
        headers["X-Error-Code"] = error.code
    return _json_reply({"error": error.message, **error.extra}, error.status, headers)


class HubServer:
    """An in-memory Hub on 127.0.0.1 (an ephemeral port), for use as a context manager.

    `tokens` maps each accepted token to its user; a user writes (and reads) the namespace named after it and the orgs
    in `orgs` that list it as a member. Every request is recorded in `requests` as (method, path with query, headers).
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = dict(tokens)
        self.orgs: dict[str, set[str]] = {}
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.tree_page_size = 1000  # entries per page of /tree (the client follows the `Link` header)
        self.commits_page_size = 50  # commits per page of /commits
        self.lfs_objects: dict[str, dict[str, bytes]] = {}  # repo id -> LFS oid (sha256) -> the bytes uploaded
        self._upload_tickets: dict[str, tuple[str, str, int]] = {}  # ticket -> (repo id, oid, size) announced
        self._failures: list[int] = []
        self._failing_methods: frozenset[str] | None = None
        self._commit_count = 0
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle and inspection ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.hub = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def commits(self, repo_id: str) -> list[dict[str, Any]]:
        """The repo's commit log, oldest first: oid, title, message, author, date, files (the paths changed)."""
        with self._lock:
            repo = self.repos.get(repo_id)
            history = repo.history if repo else []
            return [
                {"oid": c.oid, "title": c.title, "message": c.message, "author": c.author, "date": c.date}
                | {"files": list(c.changed)}
                for c in history
            ]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Path -> content at `revision`; {} when there is no such repo. Raises HubError for an unknown revision."""
        with self._lock:
            repo = self.repos.get(repo_id)
            return dict(repo.at(revision).tree) if repo else {}

    def fail_next(self, status: int, count: int = 1, methods: set[str] | None = None) -> None:
        """Answer the next `count` requests (of `methods` only, when given) with `status` (e.g. 500 or 503)."""
        with self._lock:
            self._failures += [status] * count
            self._failing_methods = frozenset(methods) if methods else None

    # -- request handling -----------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one HTTP request; `target` is the raw request path with its query."""
        with self._lock:
            self.requests.append((method, target, dict(headers)))
            if self._failures and (self._failing_methods is None or method in self._failing_methods):
                status = self._failures.pop(0)
                return _json_reply({"error": http.HTTPStatus(status).phrase}, status)
            lowered = {key.lower(): value for key, value in headers.items()}
            try:
                return self._route(method, target, lowered, body)
            except HubError as error:
                return _error_reply(error)
            except Exception as error:  # a bug here: say so rather than drop the connection
                return _json_reply({"error": f"HubServer failed: {error!r}"}, 500)

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        segments = parts.path.split("/")[1:]  # still percent-encoded: a quoted revision may hold '/'
        user = self._user(headers)
        match method, segments:
            case "GET", ["api", "whoami-v2"]:
                return self._whoami(user)
            case "POST", ["api", "repos", "create"]:
                return self._create_repo(user, _json_body(body))
            case "POST", ["api", "validate-yaml"]:
                return self._validate_yaml(_json_body(body), headers.get("accept", ""))
            case "GET", ["api", "models", ns, name]:
                return self._info(self._repo(user, ns, name), "main", query)
            case "GET", ["api", "models", ns, name, "revision", rev]:
                return self._info(self._repo(user, ns, name), unquote(rev), query)
            case "GET", ["api", "models", ns, name, "tree", rev, *path]:
                return self._tree(self._repo(user, ns, name), unquote(rev), unquote("/".join(path)), parts.path, query)
            case "GET", ["api", "models", ns, name, "commits", rev]:
                return self._commit_log(self._repo(user, ns, name), unquote(rev), parts.path, query)
            case "POST", ["api", "models", ns, name, "preupload", rev]:
                return self._preupload(self._repo(user, ns, name), unquote(rev), _json_body(body), query)
            case "POST", ["api", "models", ns, name, "commit", rev]:
                repo = self._repo(user, ns, name)
                return self._commit(repo, user, unquote(rev), body, headers.get("content-type", ""), query)
            case "POST", [ns, git_name, "info", "lfs", "objects", "batch"] if git_name.endswith(".git"):
                repo = self._repo(user, ns, git_name.removesuffix(".git"))
                return self._lfs_batch(repo, _json_body(body))
            case "POST", [ns, git_name, "info", "lfs", "objects", "verify"] if git_name.endswith(".git"):
                repo = self._repo(user, ns, git_name.removesuffix(".git"))
                return self._lfs_verify(repo, _json_body(body))
            case "PUT", ["lfs-upload", ticket]:
                return self._lfs_upload(unquote(ticket), body)
            case (("GET" | "HEAD"), [ns, name, "resolve", rev, *path]) if ns != "api" and path:
                return self._resolve(self._repo(user, ns, name), unquote(rev), unquote("/".join(path)), headers)
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    def _user(self, headers: Mapping[str, str]) -> str | None:
        """The caller, None when anonymous; a malformed or unknown token is refused whatever the route."""
        value = headers.get("authorization")
        if value is None:
            return None
        scheme, _, token = value.partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.tokens[token]

    def _may_write(self, user: str, namespace: str) -> bool:
        return namespace == user or user in self.orgs.get(namespace, set())

    def _repo(self, user: str | None, namespace: str, name: str) -> Repo:
        if user is None:
            raise HubError(401, NOT_LOGGED_IN, "RepoNotFound")
        repo = self.repos.get(f"{unquote(namespace)}/{unquote(name)}")
        if repo is None or not self._may_write(user, unquote(namespace)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _whoami(self, user: str | None) -> Reply:
        if user is None:
            raise HubError(401, NOT_LOGGED_IN)
        orgs = [
            {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
            for org, members in sorted(self.orgs.items())
            if user in members
        ]
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return _json_reply(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "isPro": False,
                "canPay": False,
                "emailVerified": True,
                "orgs": orgs,
                "auth": auth,
            }
        )

    def _create_repo(self, user: str | None, payload: dict[str, Any]) -> Reply:
        if user is None:
            raise HubError(401, NOT_LOGGED_IN)
        name, organization = payload.get("name"), payload.get("organization")
        if isinstance(name, str) and "/" in name and organization is None:
            organization, name = name.split("/", 1)
        if payload.get("type", "model") != "model":
            raise HubError(400, "This test Hub only holds model repos")
        if payload.get("visibility", "private") not in ("private", "public"):
            raise HubError(400, '"visibility" must be one of [private, public]')
        namespace = organization if organization is not None else user
        if not (isinstance(name, str) and _REPO_NAME.match(name) and isinstance(namespace, str)):
            raise HubError(400, f"Invalid repo name: {name!r}")
        if not self._may_write(user, namespace):
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        repo_id = f"{namespace}/{name}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        repo = Repo(repo_id, _now())
        self.repos[repo_id] = repo
        self._record(repo, user, "initial commit", "", {".gitattributes": INITIAL_GITATTRIBUTES}, [".gitattributes"])
        return _json_reply({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo.history[0].oid[:24]})

    def _validate_yaml(self, payload: dict[str, Any], accept: str) -> Reply:
        content = payload.get("content")
        if not isinstance(content, str):
            raise HubError(400, '"content" must be a string')
        _, errors, warnings = check_card(content)
        if errors and "text/plain" in accept:  # ModelCard.validate asks for text
            return Reply(400, "\n".join(errors).encode(), {"Content-Type": "text/plain; charset=utf-8"})
        found = {
            "errors": [{"message": message, "type": "error"} for message in errors],
            "warnings": [{"message": message, "type": "warning"} for message in warnings],
        }
        return _json_reply(found | ({"httpStatusCode": 400} if errors else {}), 400 if errors else 200)

    def _info(self, repo: Repo, revision: str, query: dict[str, list[str]]) -> Reply:
        commit = repo.at(revision)
        card = None
        if "README.md" in commit.tree:
            card = check_card(commit.tree["README.md"].decode("utf-8", "replace"))[0]
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [
            {"rfilename": path}
            | ({"size": len(content), "blobId": commit.blob_id(path)} if blobs else {})
            | ({"lfs": lfs} if blobs and (lfs := commit.lfs_info(path)) else {})
            for path, content in sorted(commit.tree.items())
        ]
        tags = [tag for tag in (card or {}).get("tags", []) if isinstance(tag, str)]
        if card and isinstance(card.get("license"), str):
            tags.append(f"license:{card['license']}")
        info: dict[str, Any] = {
            "_id": repo.history[0].oid[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": True,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [*tags, "region:us"],
            "siblings": siblings,
            "usedStorage": sum(len(content) for content in commit.tree.values()),
        }
        if card is not None:
            info["cardData"] = card
        if expand := query.get("expand", []):
            if unknown := set(expand) - _INFO_FIELDS:
                raise HubError(400, f'"expand" must be one of [{", ".join(sorted(_INFO_FIELDS))}]: {sorted(unknown)}')
            info = {key: value for key, value in info.items() if key in {"_id", "id", *expand}}
        return _json_reply(info)

    def _tree(self, repo: Repo, revision: str, folder: str, path: str, query: dict[str, list[str]]) -> Reply:
        commit = repo.at(revision)
        folder = folder.strip("/")
        prefix = f"{folder}/" if folder else ""
        below = {p: c for p, c in commit.tree.items() if p.startswith(prefix)}
        if folder and not below:
            raise HubError(404, f'{folder} does not exist on "{revision}"', "EntryNotFound")
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        expand = query.get("expand", ["false"])[0].lower() in ("true", "1")
        folders: set[str] = set()
        files: list[str] = []
        for file_path in below:
            parts = file_path[len(prefix) :].split("/")
            if recursive:
                folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                files.append(file_path)
            elif len(parts) > 1:
                folders.add(prefix + parts[0])
            else:
                files.append(file_path)
        entries: list[dict[str, Any]] = []
        for item in sorted([*folders, *files]):
            if item in folders:
                inside = sorted((p, git_blob_sha1(c)) for p, c in below.items() if p.startswith(item + "/"))
                oid = hashlib.sha1(repr(inside).encode()).hexdigest()
                entry: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": item}
            else:
                content = commit.tree[item]
                entry = {"type": "file", "oid": commit.blob_id(item), "size": len(content), "path": item}
                if lfs := commit.lfs_info(item):
                    entry["lfs"] = lfs
            if expand:
                entry["lastCommit"] = self._last_commit(repo, commit, item)
            entries.append(entry)
        return self._page(entries, path, query, "cursor", self.tree_page_size)

    def _last_commit(self, repo: Repo, head: Commit, path: str) -> dict[str, str]:
        history = repo.history[: repo.history.index(head) + 1]
        last = next(c for c in reversed(history) if any(p == path or p.startswith(path + "/") for p in c.changed))
        return {"id": last.oid, "title": last.title, "date": last.date}

    def _commit_log(self, repo: Repo, revision: str, path: str, query: dict[str, list[str]]) -> Reply:
        head = repo.at(revision)
        formatted = "formatted" in query.get("expand[]", [])
        entries = [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date}
            | {"authors": [{"user": c.author, "avatar": ""}]}
            | ({"formatted": {"title": c.title, "message": c.message}} if formatted else {})
            for c in reversed(repo.history[: repo.history.index(head) + 1])
        ]
        return self._page(entries, path, query, "p", self.commits_page_size)

    def _page(self, entries: list[Any], path: str, query: dict[str, list[str]], key: str, size: int) -> Reply:
        """One page of `entries`, with a `Link: <...>; rel="next"` header when more follow."""
        try:
            start = int(query.get(key, ["0"])[0]) * (size if key == "p" else 1)
        except ValueError as err:
            raise HubError(400, f'"{key}" must be a number') from err
        headers = {}
        if start + size < len(entries):
            following = (start + size) // size if key == "p" else start + size
            params = {k: v for k, v in query.items() if k != key} | {key: [str(following)]}
            headers["Link"] = f'<{self.url}{path}?{urlencode(params, doseq=True)}>; rel="next"'
        return _json_reply(entries[start : start + size], headers=headers)

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any], query: dict[str, list[str]]) -> Reply:
        if "create_pr" in query:
            raise HubError(400, "Pull requests are not supported by this test Hub")
        head = repo.at(revision)
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, '"files" must be an array')
        patterns = lfs_patterns(head.tree.get(".gitattributes", b""))
        answers = []
        for i, item in enumerate(files):
            if not isinstance(item, dict) or not isinstance(item.get("size"), int) or item["size"] < 0:
                raise HubError(400, f'"files[{i}]" must hold a "path", a base64 "sample" and a "size"')
            path = _checked_path(item.get("path"))
            if len(_b64decode(item.get("sample"), f"files[{i}].sample")) > 512:
                raise HubError(400, f'"files[{i}].sample" must be at most 512 bytes')
            lfs = item["size"] > MAX_REGULAR_FILE or any(_matches(path, pattern) for pattern in patterns)
            answer: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if path in head.tree:  # what the client compares its own oid with: sha256 for LFS, git blob id otherwise
                content = head.tree[path]
                answer["oid"] = hashlib.sha256(content).hexdigest() if lfs else git_blob_sha1(content)
            answers.append(answer)
        return _json_reply({"files": answers, "commitOid": head.oid})

    def _commit(
        self, repo: Repo, user: str | None, revision: str, body: bytes, content_type: str, query: dict[str, list[str]]
    ) -> Reply:
        if "create_pr" in query:
            raise HubError(400, "Pull requests are not supported by this test Hub")
        if revision != "main":
            repo.at(revision)  # an unknown revision is a 404, as on the Hub
            raise HubError(400, f"Can only commit to a branch, and only main exists here, not {revision!r}")
        if not content_type.startswith("application/x-ndjson"):
            raise HubError(400, "Commit payload must be sent as application/x-ndjson")
        header, operations = _parse_ndjson(body)
        head = repo.history[-1]
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree, lfs = dict(head.tree), set(head.lfs)
        changed: list[str] = []
        stored = self.lfs_objects.get(repo.repo_id, {})
        for number, (kind, path, content, oid, size) in enumerate(operations, start=2):
            if kind == "file":
                tree[path] = content
                lfs.discard(path)
                changed.append(path)
            elif kind == "lfsFile":
                assert oid is not None
                if oid not in stored:
                    raise HubError(
                        400,
                        f"Line {number}: LFS object {oid} ({path}) was never uploaded to {repo.repo_id}; upload it "
                        "through the LFS batch API before committing it",
                    )
                if size is not None and size != len(stored[oid]):
                    raise HubError(400, f"Line {number}: {path} has size {size}, its LFS object {len(stored[oid])}")
                tree[path] = stored[oid]
                lfs.add(path)
                changed.append(path)
            elif kind == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                lfs.discard(path)
                changed.append(path)
            else:
                inside = [p for p in tree if p.startswith(path + "/")]
                if not inside:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                changed += inside
                for p in inside:
                    del tree[p]
                    lfs.discard(p)
        if "README.md" in changed and "README.md" in tree:
            errors = check_card(tree["README.md"].decode("utf-8", "replace"))[1]
            if errors:
                raise HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
        commit = self._record(
            repo, user or "", header["summary"], header.get("description", ""), tree, changed, frozenset(lfs)
        )
        return _json_reply(
            {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.url}/{repo.repo_id}/commit/{commit.oid}"}
        )

    def _record(
        self,
        repo: Repo,
        author: str,
        title: str,
        message: str,
        tree: dict[str, bytes],
        changed: list[str],
        lfs: frozenset[str] = frozenset(),
    ) -> Commit:
        self._commit_count += 1
        parent = repo.history[-1].oid if repo.history else ""
        seed = f"{parent}\n{author}\n{title}\n{message}\n{self._commit_count}\n{sorted(tree)}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, title, message, author, _now(), tree, tuple(dict.fromkeys(changed)), lfs)
        repo.history.append(commit)
        return commit

    def _lfs_batch(self, repo: Repo, payload: dict[str, Any]) -> Reply:
        """The LFS batch API, uploads only, basic transfer only (never Xet): each object not stored yet gets an
        upload href (a one-time ticket: the PUT carries no token, as a presigned URL) and a verify href."""
        if payload.get("operation") != "upload":
            raise HubError(400, '"operation" must be "upload": this test Hub serves downloads through /resolve only')
        transfers = payload.get("transfers", ["basic"])
        if not isinstance(transfers, list) or "basic" not in transfers:
            raise HubError(400, f'"transfers" must offer "basic" (this test Hub offers no other), not {transfers!r}')
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, '"hash_algo" must be "sha256"')
        objects = payload.get("objects")
        if not isinstance(objects, list) or not objects:
            raise HubError(400, '"objects" must be a non-empty array of {"oid", "size"}')
        stored = self.lfs_objects.setdefault(repo.repo_id, {})
        answers = []
        for i, item in enumerate(objects):
            oid, size = (
                item.get("oid") if isinstance(item, dict) else None,
                item.get("size") if isinstance(item, dict) else None,
            )
            if not (isinstance(oid, str) and _SHA256.match(oid)) or not isinstance(size, int) or size < 0:
                raise HubError(400, f'"objects[{i}]" must hold an "oid" (64 lower-case hex: a sha256) and a "size"')
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in stored:
                ticket = hashlib.sha256(os.urandom(32)).hexdigest()
                self._upload_tickets[ticket] = (repo.repo_id, oid, size)
                verify = f"{self.url}/{repo.repo_id}.git/info/lfs/objects/verify"
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-upload/{ticket}", "expires_in": 3600},
                    "verify": {"href": verify, "expires_in": 3600},
                }
            answers.append(answer)
        return _json_reply(
            {"transfer": "basic", "objects": answers, "hash_algo": "sha256"}, headers={"Content-Type": LFS_CONTENT_TYPE}
        )

    def _lfs_upload(self, ticket: str, body: bytes) -> Reply:
        """The PUT of an object's bytes: stored under its oid only when their sha256 and size are the ones announced."""
        announced = self._upload_tickets.get(ticket)
        if announced is None:
            raise HubError(403, "Unknown or used upload ticket; ask the LFS batch API for a new upload href")
        repo_id, oid, size = announced
        digest = hashlib.sha256(body).hexdigest()
        if digest != oid or len(body) != size:
            raise HubError(
                400,
                f"Uploaded bytes have sha256 {digest} and size {len(body)}, not the oid {oid} and size {size} "
                "announced to the LFS batch API; upload the file that was announced",
            )
        self.lfs_objects.setdefault(repo_id, {})[oid] = body
        del self._upload_tickets[ticket]
        return Reply(200)

    def _lfs_verify(self, repo: Repo, payload: dict[str, Any]) -> Reply:
        oid, size = payload.get("oid"), payload.get("size")
        stored = self.lfs_objects.get(repo.repo_id, {})
        if not isinstance(oid, str) or oid not in stored:
            raise HubError(404, f"LFS object {oid} was never uploaded to {repo.repo_id}")
        if size != len(stored[oid]):
            raise HubError(422, f"LFS object {oid} has size {len(stored[oid])}, not {size}")
        return _json_reply({"success": True})

    def _resolve(self, repo: Repo, revision: str, path: str, headers: Mapping[str, str]) -> Reply:
        commit = repo.at(revision)
        if path not in commit.tree:
            raise HubError(404, "Entry not found", "EntryNotFound")
        content = commit.tree[path]
        reply = Reply(200, content, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"})
        reply.headers |= {"ETag": f'"{commit.blob_id(path)}"', "X-Repo-Commit": commit.oid}
        if lfs := commit.lfs_info(path):  # what the Hub sends beside its redirect to the LFS storage
            reply.headers |= {"X-Linked-Etag": f'"{lfs["oid"]}"', "X-Linked-Size": str(lfs["size"])}
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", ""))
        if "range" in headers:
            start = int(wanted.group(1)) if wanted else len(content)
            if wanted is None or start >= len(content):
                return Reply(416, b"", reply.headers | {"Content-Range": f"bytes */{len(content)}"})
            end = min(int(wanted.group(2) or len(content) - 1), len(content) - 1)
            reply = Reply(206, content[start : end + 1], reply.headers)
            reply.headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return reply


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise HubError(400, f"Request body is not valid JSON: {err}") from err
    if not isinstance(payload, dict):
        raise HubError(400, "Request body must be a JSON object")
    return payload


def _b64decode(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise HubError(400, f'"{name}" must be a base64 string')
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as err:
        raise HubError(400, f'"{name}" is not valid base64: {err}') from err


def _checked_path(value: object) -> str:
    """A file path inside the repo; absolute paths, `.`/`..`/empty segments, `.git/` and backslashes are refused."""
    if not isinstance(value, str) or not value:
        raise HubError(400, '"path" must be a non-empty string')
    segments = value.split("/")
    if value.startswith("/") or "\\" in value or "\0" in value or any(s in ("", ".", "..", ".git") for s in segments):
        raise HubError(400, f"Invalid path in repo: {value!r}")
    return value


def _parse_ndjson(body: bytes) -> tuple[dict[str, Any], list[Operation]]:
    """The commit's header and its operations."""
    try:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    except ValueError as err:
        raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
    if not lines or not all(isinstance(line, dict) and isinstance(line.get("value"), dict) for line in lines):
        raise HubError(400, 'Each NDJSON line must be an object {"key": ..., "value": {...}}')
    if lines[0].get("key") != "header" or any(line.get("key") == "header" for line in lines[1:]):
        raise HubError(400, "The first NDJSON line, and only it, must be the commit header")
    header = lines[0]["value"]
    if not isinstance(header.get("summary"), str) or not header["summary"].strip():
        raise HubError(400, '"summary" must be a non-empty string')
    if not isinstance(header.get("description", ""), str):
        raise HubError(400, '"description" must be a string')
    operations = []
    for number, line in enumerate(lines[1:], start=2):
        key, value = line.get("key"), line["value"]
        if key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if value.get("algo", "sha256") != "sha256" or not (isinstance(oid, str) and _SHA256.match(oid)):
                raise HubError(400, f'Line {number}: an lfsFile needs "algo": "sha256" and its sha256 as "oid"')
            if size is not None and (not isinstance(size, int) or size < 0):
                raise HubError(400, f'Line {number}: "size" must be a non-negative integer')
            operations.append(Operation("lfsFile", _checked_path(value.get("path")), oid=oid, size=size))
        elif key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f'Line {number}: "encoding" must be "base64"')
            content = _b64decode(value.get("content"), f"line {number} content")
            if len(content) > MAX_REGULAR_FILE:
                raise HubError(400, f"Line {number}: files over 10 MiB must be uploaded with LFS or Xet")
            operations.append(Operation("file", _checked_path(value.get("path")), content))
        elif key in ("deletedFile", "deletedFolder"):
            path = value.get("path")
            operations.append(Operation(key, _checked_path(path.rstrip("/") if isinstance(path, str) else path)))
        else:
            raise HubError(400, f"Line {number}: unknown operation {key!r}")
    return header, operations


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: don't wait for a delayed ACK between
    server: _HTTPServer

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if self.command in ("POST", "PUT") and length is None and not chunked:
            reply = _error_reply(HubError(411, "Content-Length required"))
        else:
            body = self._chunked_body() if chunked else self.rfile.read(int(length)) if length else b""
            reply = self.server.hub.handle(self.command, self.path, dict(self.headers.items()), body)
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))  # for HEAD too: the size a GET would get
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _chunked_body(self) -> bytes:
        """A body sent with `Transfer-Encoding: chunked` (how an upload streamed from a file may arrive)."""
        chunks = []
        while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after the chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, up to the blank line
            pass
        return b"".join(chunks)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the hub keeps its own request log."""


def client_env(server: HubServer, home: Path) -> dict[str, str]:
    """Environment that points a new huggingface_hub process at `server` (these are read once, at import), with its
    cache and token file under `home`. Merge it over os.environ for a subprocess; pass the token explicitly or as
    HF_TOKEN."""
    return {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_XET": "1",  # this Hub offers LFS, not Xet (the client would use hf_xet whenever installed)
    }


@contextlib.contextmanager
def point_client_at(server: HubServer, home: Path) -> Iterator[None]:
    """Point the already imported huggingface_hub at `server` until the block ends, by setting the constants that
    HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET (this Hub offers LFS, not Xet) fixed at import.
    `HfApi(endpoint=)` and `hf_hub_download(endpoint=)` need none of this, but `ModelCard.load` (and
    `hf_hub_download` without `endpoint=`) read `constants.ENDPOINT` and `constants.HUGGINGFACE_CO_URL_TEMPLATE`.
    HF_TOKEN is hidden so that only tokens passed explicitly are sent."""
    from huggingface_hub import constants

    patched: dict[str, object] = {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
    }
    saved = {name: getattr(constants, name) for name in patched}
    hidden = {name: os.environ.pop(name) for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if name in os.environ}
    for name, value in patched.items():
        setattr(constants, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)
        os.environ.update(hidden)
