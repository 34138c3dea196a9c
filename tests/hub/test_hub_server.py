"""The test Hub, driven by the real huggingface_hub client: what it stores, what it refuses, and which exception the
client raises for each refusal."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._http import hf_raise_for_status  # the client's own error mapping

from tests.hub.hub_server import HubServer, client_env, git_blob_sha1, point_client_at

ALICE, BOB = "hf_alice_0123456789", "hf_bob_0123456789"
REPO = "alice/oracle-mini"
README = b"---\nlicense: apache-2.0\ntags:\n- oracle\n- moe\n---\n\n# oracle-mini\n\nA small test model.\n"
FILES = {"README.md": README, "config.json": b'{"hidden_size": 16}\n', "weights/notes.txt": b"\x00\x01 binary \xff"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer({ALICE: "alice", BOB: "bob"}) as server, point_client_at(server, tmp_path / "hf"):
        server.orgs = {"oracle-org": {"alice"}}
        yield server


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    return HfApi(endpoint=hub.url, token=ALICE)


def publish(api: HfApi, repo_id: str = REPO, files: dict[str, bytes] = FILES) -> str:
    api.create_repo(repo_id, exist_ok=True)
    operations = [CommitOperationAdd(path, content) for path, content in files.items()]
    return api.create_commit(repo_id, operations, commit_message="Publish oracle-mini", commit_description="v1").oid


def raw_commit(hub: HubServer, lines: list[bytes], repo_id: str = REPO) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/x-ndjson"}
    return httpx2.post(f"{hub.url}/api/models/{repo_id}/commit/main", content=b"\n".join(lines), headers=headers)


def ndjson(key: str, **value: object) -> bytes:
    return json.dumps({"key": key, "value": value}).encode()


HEADER = ndjson("header", summary="raw", description="")


def test_create_repo_with_exist_ok_twice_keeps_one_repo(hub: HubServer, api: HfApi) -> None:
    url = api.create_repo(REPO, exist_ok=True)
    assert api.create_repo(REPO, exist_ok=True) == url == f"{hub.url}/{REPO}"
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_repo(REPO)
    assert refused.value.response.status_code == 409
    assert [c["title"] for c in hub.commits(REPO)] == ["initial commit"]
    assert list(hub.files(REPO)) == [".gitattributes"]


def test_committed_files_read_back_byte_for_byte(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    oid = publish(api)
    for path, content in FILES.items():
        local = hf_hub_download(REPO, path, endpoint=hub.url, token=ALICE, cache_dir=tmp_path / "cache")
        assert Path(local).read_bytes() == content
    assert api.list_repo_files(REPO) == sorted([".gitattributes", *FILES])
    commits = api.list_repo_commits(REPO)
    assert [c.title for c in commits] == ["Publish oracle-mini", "initial commit"]
    assert commits[0].commit_id == oid == api.repo_info(REPO).sha
    assert hub.commits(REPO)[-1] | {"date": ""} == {
        "oid": oid,
        "title": "Publish oracle-mini",
        "message": "v1",
        "author": "alice",
        "date": "",
        "files": list(FILES),
    }
    assert hub.files(REPO) == {".gitattributes": hub.files(REPO)[".gitattributes"], **FILES}
    first = commits[1].commit_id  # a commit id is a read-only revision
    assert api.list_repo_files(REPO, revision=first) == [".gitattributes"] == list(hub.files(REPO, first))
    assert [entry.path for entry in api.list_repo_tree(REPO, "weights")] == ["weights/notes.txt"]


def test_model_card_loads_and_repo_info_carries_its_data(api: HfApi) -> None:
    publish(api)
    card = ModelCard.load(REPO, token=ALICE)  # reads constants.ENDPOINT: see point_client_at
    assert card.data.license == "apache-2.0"
    assert card.data.tags == ["oracle", "moe"]
    info = api.model_info(REPO, files_metadata=True)
    assert info.card_data is not None
    assert info.card_data.license == "apache-2.0"
    assert {s.rfilename: s.blob_id for s in info.siblings or []}["config.json"] == git_blob_sha1(FILES["config.json"])


def test_resolve_answers_etag_commit_and_length(hub: HubServer, api: HfApi) -> None:
    oid = publish(api)
    url = f"{hub.url}/{REPO}/resolve/main/weights/notes.txt"
    head = httpx2.head(url, headers={"Authorization": f"Bearer {ALICE}"})
    assert head.status_code == 200
    assert head.headers["ETag"] == f'"{git_blob_sha1(FILES["weights/notes.txt"])}"'
    assert head.headers["X-Repo-Commit"] == oid
    assert int(head.headers["Content-Length"]) == len(FILES["weights/notes.txt"])
    part = httpx2.get(url, headers={"Authorization": f"Bearer {ALICE}", "Range": "bytes=2-"})
    assert part.status_code == 206
    assert part.content == FILES["weights/notes.txt"][2:]


def test_unchanged_files_make_no_new_commit(hub: HubServer, api: HfApi) -> None:
    oid = publish(api)
    assert publish(api) == oid  # preupload's oid (git blob sha1) matched: the client skipped the commit
    assert len(hub.commits(REPO)) == 2


def test_delete_removes_a_file_and_a_missing_one_is_refused(hub: HubServer, api: HfApi) -> None:
    publish(api)
    api.create_commit(REPO, [CommitOperationDelete("weights/")], commit_message="Drop weights")
    assert "weights/notes.txt" not in hub.files(REPO)
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit(REPO, [CommitOperationDelete("nope.txt")], commit_message="Drop nothing")


def test_listings_follow_pagination_links(hub: HubServer, api: HfApi) -> None:
    publish(api)
    api.create_commit(REPO, [CommitOperationAdd("more.txt", b"more")], commit_message="More")
    hub.tree_page_size, hub.commits_page_size = 2, 1
    assert api.list_repo_files(REPO) == sorted([".gitattributes", "more.txt", *FILES])
    assert len(api.list_repo_commits(REPO)) == 3
    assert any("cursor=" in path for _, path, _ in hub.requests)


def test_the_token_travels_only_in_the_authorization_header(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    publish(api)
    hf_hub_download(REPO, "config.json", endpoint=hub.url, token=ALICE, cache_dir=tmp_path / "cache")
    api.list_repo_files(REPO)
    for _, path, headers in hub.requests:
        assert ALICE not in path
        for name, value in headers.items():
            assert value == f"Bearer {ALICE}" if name.lower() == "authorization" else ALICE not in value
    assert all(any(n.lower() == "authorization" for n in headers) for _, _, headers in hub.requests)


def test_no_token_is_refused_as_repository_not_found(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    publish(api)
    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError) as refused:
        anonymous.repo_info(REPO)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", endpoint=hub.url, token=False, cache_dir=tmp_path / "cache")
    with pytest.raises(HfHubHTTPError) as create_refused:
        anonymous.create_repo("alice/other")
    assert create_refused.value.response.status_code == 401


def test_an_unknown_token_is_refused_as_invalid_credentials(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    publish(api)
    stranger = HfApi(endpoint=hub.url, token="hf_not_a_token")
    for call in (lambda: stranger.repo_info(REPO), stranger.whoami):
        with pytest.raises(HfHubHTTPError) as refused:
            call()
        assert not isinstance(refused.value, RepositoryNotFoundError)
        assert refused.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as download_refused:
        hf_hub_download(REPO, "config.json", endpoint=hub.url, token="hf_not_a_token", cache_dir=tmp_path / "c")
    assert download_refused.value.response.status_code == 401


def test_another_namespace_is_forbidden_to_create_and_hidden_to_read(hub: HubServer, api: HfApi) -> None:
    publish(api)
    bob = HfApi(endpoint=hub.url, token=BOB)
    for repo_id in (REPO, "alice/new-one", "oracle-org/model"):
        with pytest.raises(HfHubHTTPError) as refused:
            bob.create_repo(repo_id, exist_ok=True)
        assert refused.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError) as hidden:
        bob.repo_info(REPO)
    assert hidden.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        bob.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="Intrude")
    api.create_repo("oracle-org/model")  # alice is a member of the org
    assert {r["name"] for r in api.whoami()["orgs"]} == {"oracle-org"}


def test_unknown_repo_revision_and_file_answer_404_with_error_codes(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    publish(api)
    with pytest.raises(RepositoryNotFoundError) as no_repo:
        api.repo_info("alice/missing")
    assert no_repo.value.response.status_code == 404
    assert no_repo.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, revision="v9")
    with pytest.raises(RemoteEntryNotFoundError) as no_file:
        hf_hub_download(REPO, "missing.bin", endpoint=hub.url, token=ALICE, cache_dir=tmp_path / "cache")
    assert no_file.value.response.headers["X-Error-Code"] == "EntryNotFound"


def test_injected_server_errors(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    publish(api)
    hub.fail_next(500)
    with pytest.raises(HfHubHTTPError) as failed:
        api.repo_info(REPO)
    assert failed.value.response.status_code == 500
    hub.fail_next(500)  # with no cached copy to fall back on, the client repeats a failed HEAD at once
    local = hf_hub_download(REPO, "config.json", endpoint=hub.url, token=ALICE, cache_dir=tmp_path / "cache")
    assert Path(local).read_bytes() == FILES["config.json"]
    assert [m for m, path, _ in hub.requests if path.endswith("config.json")] == ["HEAD", "HEAD", "GET"]
    hub.fail_next(503)  # listings go through http_backoff: one retry after 1 s
    started = time.monotonic()
    assert ".gitattributes" in api.list_repo_files(REPO)
    assert time.monotonic() - started >= 1


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([b"{not json"], id="not-json"),
        pytest.param([ndjson("file", path="a.txt", content="YQ==", encoding="base64")], id="no-header"),
        pytest.param([ndjson("file", path="a.txt", content="YQ==", encoding="base64"), HEADER], id="header-late"),
        pytest.param([ndjson("header", summary="")], id="empty-summary"),
        pytest.param([HEADER, ndjson("file", path="a.txt", content="not base64!", encoding="base64")], id="bad-b64"),
        pytest.param([HEADER, ndjson("file", path="../a.txt", content="YQ==", encoding="base64")], id="dotdot"),
        pytest.param([HEADER, ndjson("file", path="/etc/a.txt", content="YQ==", encoding="base64")], id="absolute"),
        pytest.param([HEADER, ndjson("file", path=".git/config", content="YQ==", encoding="base64")], id="dotgit"),
        pytest.param([HEADER, ndjson("lfsFile", path="w.bin", algo="sha256", oid="0" * 64, size=1)], id="lfs"),
        pytest.param([HEADER, ndjson("copyFile", path="a.txt")], id="unknown-key"),
        pytest.param([HEADER, b"[1, 2]"], id="not-an-object"),
    ],
)
def test_malformed_ndjson_commits_are_refused(hub: HubServer, api: HfApi, lines: list[bytes]) -> None:
    api.create_repo(REPO)
    response = raw_commit(hub, lines)
    assert response.status_code == 400
    assert response.json()["error"] == response.headers["X-Error-Message"]
    with pytest.raises(BadRequestError):
        hf_raise_for_status(response, endpoint_name="commit")
    assert len(hub.commits(REPO)) == 1


def test_a_well_formed_raw_commit_is_accepted(hub: HubServer, api: HfApi) -> None:
    api.create_repo(REPO)
    content = base64.b64encode(b"hello").decode()
    response = raw_commit(hub, [HEADER, ndjson("file", path="dir/a.txt", content=content, encoding="base64")])
    assert response.status_code == 200
    assert response.json()["commitOid"] == hub.commits(REPO)[-1]["oid"]
    assert hub.files(REPO)["dir/a.txt"] == b"hello"


def test_a_stale_parent_commit_is_refused(hub: HubServer, api: HfApi) -> None:
    publish(api)
    stale = hub.commits(REPO)[0]["oid"]
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="Late", parent_commit=stale)
    assert refused.value.response.status_code == 412


@pytest.mark.parametrize(
    "front_matter",
    [
        pytest.param("license: not-a-license\n", id="unknown-license"),
        pytest.param("license: [mit, made-up]\n", id="unknown-license-in-list"),
        pytest.param("tags:\n- ok\n- 3\n", id="non-string-tag"),
        pytest.param("tags: {a: 1}\n", id="tags-not-a-list"),
        pytest.param("license: [unclosed\n", id="broken-yaml"),
        pytest.param("- just\n- a list\n", id="not-a-mapping"),
        pytest.param("model.name: x\n", id="dotted-key"),
    ],
)
def test_a_card_the_hub_rejects_stops_the_commit(hub: HubServer, api: HfApi, front_matter: str) -> None:
    api.create_repo(REPO)
    readme = f"---\n{front_matter}---\n# Card\n".encode()
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md"):
        api.create_commit(REPO, [CommitOperationAdd("README.md", readme)], commit_message="Bad card")
    assert [path.split("/")[-1] for _, path, _ in hub.requests][-1] == "validate-yaml"  # refused before uploading
    assert len(hub.commits(REPO)) == 1
    as_file = ndjson("file", path="README.md", content=base64.b64encode(readme).decode(), encoding="base64")
    raw = raw_commit(hub, [HEADER, as_file])
    assert raw.status_code == 400  # the commit endpoint checks the card too


def test_validate_yaml_answers_errors_and_warnings(hub: HubServer) -> None:
    url, headers = f"{hub.url}/api/validate-yaml", {"Authorization": f"Bearer {ALICE}"}
    good = httpx2.post(url, json={"content": README.decode(), "repoType": "model"}, headers=headers)
    assert good.status_code == 200
    assert good.json() == {"errors": [], "warnings": []}
    bare = httpx2.post(url, json={"content": "# no metadata\n", "repoType": "model"}, headers=headers)
    assert bare.status_code == 200
    assert bare.json()["warnings"][0]["message"].startswith("empty or missing yaml")
    bad = httpx2.post(url, json={"content": "---\nlicense: nope\n---\n", "repoType": "model"}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["message"].startswith('"license" must be one of')


def test_client_env_points_a_subprocess_at_the_hub(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    publish(api)
    script = "from huggingface_hub import ModelCard; print(ModelCard.load(sys.argv[1], token=sys.argv[2]).data.license)"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT")} | client_env(hub, tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {script}", REPO, ALICE], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "apache-2.0"


# -- LFS --------------------------------------------------------------------------------------------------------------
WEIGHTS = b"\x00safetensors-like bytes\xff" * 200  # routed to LFS by the initial .gitattributes (*.safetensors)


def lfs_batch(hub: HubServer, oid: str, size: int, repo_id: str = REPO) -> httpx2.Response:
    payload = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}]}
    headers = {"Authorization": f"Bearer {ALICE}", "Accept": "application/vnd.git-lfs+json"}
    return httpx2.post(f"{hub.url}/{repo_id}.git/info/lfs/objects/batch", json=payload, headers=headers)


def test_an_lfs_file_goes_through_the_batch_api_and_lists_with_its_sha256(
    hub: HubServer, api: HfApi, tmp_path: Path
) -> None:
    import hashlib

    oid = publish(api, files={"README.md": README, "model.safetensors": WEIGHTS})
    sha256 = hashlib.sha256(WEIGHTS).hexdigest()
    sent = [(method, path.split("/")[-1]) for method, path, _ in hub.requests if method in {"POST", "PUT"}]
    assert ("POST", "batch") in sent  # the client's LFS path, not Xet
    assert ("POST", "verify") in sent
    assert [method for method, path, _ in hub.requests if path.startswith("/lfs-upload/")] == ["PUT"]
    assert hub.lfs_objects[REPO] == {sha256: WEIGHTS}
    (entry,) = [e for e in api.list_repo_tree(REPO) if isinstance(e, RepoFile) and e.path == "model.safetensors"]
    assert entry.lfs is not None
    assert (entry.lfs.sha256, entry.lfs.size) == (sha256, len(WEIGHTS))
    assert entry.blob_id != git_blob_sha1(WEIGHTS)  # git holds the pointer, as on the Hub
    local = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=ALICE, cache_dir=tmp_path / "c")
    assert Path(local).read_bytes() == WEIGHTS
    assert publish(api, files={"model.safetensors": WEIGHTS}) == oid  # preupload's sha256 matched: no commit
    assert [method for method, path, _ in hub.requests if path.startswith("/lfs-upload/")] == ["PUT"]  # stored


def test_an_upload_whose_bytes_are_not_the_announced_oid_is_refused(hub: HubServer, api: HfApi) -> None:
    import hashlib

    api.create_repo(REPO)
    oid = hashlib.sha256(WEIGHTS).hexdigest()
    batch = lfs_batch(hub, oid, len(WEIGHTS))
    assert batch.status_code == 200
    assert batch.json()["transfer"] == "basic"
    (answer,) = batch.json()["objects"]
    upload = answer["actions"]["upload"]["href"]
    tampered = httpx2.put(upload, content=WEIGHTS[:-1] + b"\x00")
    assert tampered.status_code == 400
    assert f"not the oid {oid}" in tampered.json()["error"]
    assert hub.lfs_objects.get(REPO, {}) == {}
    assert httpx2.put(upload, content=WEIGHTS).status_code == 200  # the same ticket, the announced bytes
    assert httpx2.put(upload, content=WEIGHTS).status_code == 403  # a ticket is used once
    wrong_size = lfs_batch(hub, hashlib.sha256(b"x").hexdigest(), 2)
    put = httpx2.put(wrong_size.json()["objects"][0]["actions"]["upload"]["href"], content=b"x")
    assert put.status_code == 400
    assert "size 1" in put.json()["error"]
    assert lfs_batch(hub, oid, len(WEIGHTS)).json()["objects"][0].get("actions") is None  # stored: nothing to do


def test_a_commit_naming_an_lfs_object_never_uploaded_is_refused(hub: HubServer, api: HfApi) -> None:
    import hashlib

    api.create_repo(REPO)
    oid = hashlib.sha256(WEIGHTS).hexdigest()
    line = ndjson("lfsFile", path="model.safetensors", algo="sha256", oid=oid, size=len(WEIGHTS))
    refused = raw_commit(hub, [HEADER, line])
    assert refused.status_code == 400
    assert f"LFS object {oid} (model.safetensors) was never uploaded" in refused.json()["error"]
    lfs_batch(hub, oid, len(WEIGHTS))  # announced only: still refused
    assert raw_commit(hub, [HEADER, line]).status_code == 400
    publish(api, "alice/other", {"model.safetensors": WEIGHTS})  # uploaded to another repo: still refused here
    assert raw_commit(hub, [HEADER, line]).status_code == 400
    assert len(hub.commits(REPO)) == 1
