"""`oracle hub build` and `oracle hub publish` end to end, from an attested checkout of this repository, against the
strict local Hub server (tests/hub/hub_server.py) and read back with the real `huggingface_hub` client."""

from __future__ import annotations

import json
import secrets
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.metadata import split_front_matter, validate_card_metadata
from tests.checkouts import attest, git, make_repository_checkout, oracle
from tests.hub.hub_server import HubServer

REPO = "oracle-ai/oracle850b-moe"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    token, other = "hf_" + secrets.token_hex(17), "hf_" + secrets.token_hex(17)
    with HubServer({token: "alice", other: "mallory"}) as server:
        server.orgs["oracle-ai"] = {"alice"}
        server.token = token  # type: ignore[attr-defined]
        server.other_token = other  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def published(repository_checkout: Path) -> Iterator[HubServer]:
    """A Hub on which the checkout was published once, for the tests whose refusals must leave that log alone."""
    token = "hf_" + secrets.token_hex(17)
    with HubServer({token: "alice"}) as server:
        server.orgs["oracle-ai"] = {"alice"}
        server.token = token  # type: ignore[attr-defined]
        assert _publish(repository_checkout, server)[0] == 0
        yield server


def _publish(root: Path, hub: HubServer, *args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {"HF_TOKEN": token if token is not None else hub.token, "HF_HUB_OFFLINE": "0"}  # type: ignore[attr-defined]
    done = oracle(root, "hub", "publish", "--repo-id", REPO, "--endpoint", hub.url, *args, env=env)
    return done.returncode, done.stdout, done.stderr


def _ours(hub: HubServer) -> list[dict[str, object]]:
    """The commits the publisher made (the Hub's own initial commit left out)."""
    return [c for c in hub.commits(REPO) if c["title"] != "initial commit"]


def test_build_stages_a_valid_card_whose_numbers_are_oracle_params(repository_checkout: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "staged"
    done = oracle(repository_checkout, "hub", "build", "--out", str(out), "--format", "json")
    assert done.returncode == 0, done.stderr
    staged = json.loads(done.stdout)
    assert sorted(staged["files"]) == sorted(
        [
            "README.md",
            "config.json",
            "generation_config.json",
            "default_system.txt",
            "default_intro.txt",
            "attestation.json",
        ]
    )
    card = ModelCard.load(out / "README.md")
    metadata, body = split_front_matter((out / "README.md").read_text())
    assert card.data.to_dict() == metadata
    assert validate_card_metadata(metadata, allowed_namespaces=["oracle-ai"]) == []
    params = json.loads(oracle(repository_checkout, "params", "--format", "json").stdout)
    assert f"{params['total_params']:,}" in body
    assert f"{params['active_params']:,}" in body
    config = json.loads((out / "config.json").read_text())
    for key in ("vocab_size", "context_length", "n_layers", "hidden_size"):
        assert config[key] == params[key], key
    assert "No weights are published yet" in body
    from oracle.moe850b.config import load_config

    assert load_config(out / "config.json") == load_config("oracle850b")  # the published config loads as ours
    assert git(repository_checkout, "status", "--porcelain") == ""  # staging never dirties the tree


def test_publish_makes_one_commit_that_reads_back_identical_and_republishing_makes_none(
    repository_checkout: Path, hub: HubServer, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard, hf_hub_download

    code, out, err = _publish(repository_checkout, hub)
    assert code == 0, err
    (commit,) = _ours(hub)
    head = git(repository_checkout, "rev-parse", "HEAD")
    assert head[:12] in str(commit["title"])
    assert head in str(commit["message"])
    staged = _staged_copy(repository_checkout, tmp_path)  # what `oracle hub build` stages for the same HEAD
    files = {p.name: p.read_bytes() for p in staged.iterdir()}
    assert set(hub.files(REPO)) == set(files) | {".gitattributes"}
    for name, data in files.items():
        path = hf_hub_download(REPO, name, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "cache")  # type: ignore[attr-defined]
        assert Path(path).read_bytes() == data, name
    card = ModelCard.load(
        hf_hub_download(REPO, "README.md", endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "c2")
    )  # type: ignore[attr-defined]
    assert card.data.pipeline_tag == "text-generation"

    code, out, err = _publish(repository_checkout, hub)
    assert code == 0, err
    assert "no commit made" in out
    assert len(_ours(hub)) == 1

    token = hub.token  # type: ignore[attr-defined]
    audit = (repository_checkout / ".oracle" / "audit.jsonl").read_text()
    assert [json.loads(line)["result"] for line in audit.splitlines() if '"publish"' in line][-2:] == [
        "published",
        "unchanged",
    ]
    for text in (out, err, audit, *[data.decode(errors="replace") for data in hub.files(REPO).values()]):
        assert token not in text
    sent_elsewhere = [path for _, path, _ in hub.requests if token in path]
    assert sent_elsewhere == []  # only ever in the Authorization header


def test_dry_run_lists_the_changes_and_sends_nothing(repository_checkout: Path, hub: HubServer) -> None:
    code, out, err = _publish(repository_checkout, hub, "--dry-run")
    assert code == 0, err
    assert "add        README.md" in out
    assert "dry run" in out
    assert [method for method, _, _ in hub.requests if method not in {"GET", "HEAD"}] == []
    assert hub.commits(REPO) == []

    assert _publish(repository_checkout, hub)[0] == 0
    log, requests = hub.commits(REPO), len(hub.requests)
    code, out, err = _publish(repository_checkout, hub, "--dry-run")
    assert code == 0, err
    assert "unchanged  README.md" in out  # compared with what the repository holds
    assert [method for method, _, _ in hub.requests[requests:] if method not in {"GET", "HEAD"}] == []
    assert hub.commits(REPO) == log


def _staged_copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "review"
    done = oracle(root, "hub", "build", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 4


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (lambda d, token: (d / ".env").write_text(f"HF_TOKEN={token}\n"), "PUB002"),
        (lambda d, token: (d / "model.safetensors").write_bytes(_safetensors()), "PUB004"),
        (
            lambda d, token: (d / "README.md").write_text(
                (d / "README.md").read_text().replace("---\n", "---\nbase_model: meta-llama/Llama-2-7b-hf\n", 1)
            ),
            "base_model",
        ),
        (
            lambda d, token: (d / "default_intro.txt").write_text(f"my key is {token}\n"),
            "PUB003",
        ),
        (lambda d, token: (d / "model.safetensors").write_bytes(b" " + _safetensors()[1:]), "PUB004"),
        (lambda d, token: (d / "default_intro.txt").write_text("An edited introduction.\n"), "differ from what HEAD"),
    ],
    ids=[
        "env-file",
        "weights-without-provenance",
        "foreign-base-model",
        "token-in-a-file",
        "weights-by-name",
        "edited-after-build",
    ],
)
def test_a_staged_folder_that_fails_the_gate_sends_nothing(
    repository_checkout: Path, published: HubServer, tmp_path: Path, plant: object, reason: str
) -> None:
    hub = published  # the repository exists: a refusal must leave its log alone
    log, requests = hub.commits(REPO), len(hub.requests)
    assert log
    staged = _staged_copy(repository_checkout, tmp_path)
    plant(staged, hub.token)  # type: ignore[attr-defined,operator]
    code, _, err = _publish(repository_checkout, hub, "--staged", str(staged))
    assert code == 1
    assert reason in err
    assert len(err.strip().splitlines()) == 1
    assert hub.commits(REPO) == log
    assert [method for method, _, _ in hub.requests[requests:] if method == "POST"] == []


def test_refusals_of_the_checkout_send_nothing(tmp_path: Path, hub: HubServer) -> None:
    root = make_repository_checkout(tmp_path)
    code, _, err = _publish(root, hub)  # never attested
    assert code == 1
    assert "no attestation" in err

    attest(root, tmp_path / "signing.pem")
    (root / "notes.txt").write_text("uncommitted\n")
    code, _, err = _publish(root, hub)
    assert code == 1
    assert "uncommitted changes" in err

    git(root, "add", "notes.txt")
    git(root, "commit", "-qm", "after the attestation")
    code, _, err = _publish(root, hub)  # the attestation is another commit's
    assert code == 1
    assert "but HEAD is commit" in err

    stale = _staged_copy_after_attest(root, tmp_path)
    git(root, "commit", "-qm", "another", "--allow-empty")
    attest(root, tmp_path / "signing.pem")
    code, _, err = _publish(root, hub, "--staged", str(stale))  # staged under the previous attestation
    assert code == 1
    assert "is not HEAD's attestation" in err
    assert hub.requests == []


def _staged_copy_after_attest(root: Path, tmp_path: Path) -> Path:
    attest(root, tmp_path / "signing.pem")
    out = tmp_path / "older"
    shutil.rmtree(out, ignore_errors=True)
    done = oracle(root, "hub", "build", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_server_errors_are_one_line_and_a_non_zero_exit(repository_checkout: Path, hub: HubServer) -> None:
    code, _, err = _publish(repository_checkout, hub, token="")
    assert code != 0
    assert "no token" in err

    code, _, err = _publish(repository_checkout, hub, token="hf_" + secrets.token_hex(17))
    assert code != 0
    assert "rejected the token (401)" in err

    code, _, err = _publish(repository_checkout, hub, token=hub.other_token)  # type: ignore[attr-defined]
    assert code != 0
    assert "no write access to the namespace 'oracle-ai' (403)" in err

    hub.fail_next(412, methods={"POST"})  # the head moved under the plan
    code, _, err = _publish(repository_checkout, hub)
    assert code != 0
    assert "conflict (412)" in err

    hub.fail_next(500, methods={"POST"})  # the client retries reads, not writes
    code, _, err = _publish(repository_checkout, hub)
    assert code != 0
    assert "server error (500)" in err

    env = {"HF_TOKEN": hub.token}  # type: ignore[attr-defined]
    done = oracle(repository_checkout, "hub", "publish", "--repo-id", REPO, "--endpoint", "http://127.0.0.1:9", env=env)
    assert done.returncode != 0
    assert "cannot reach the Hub" in done.stderr
    for stderr in (err, done.stderr):
        assert len(stderr.strip().splitlines()) == 1
    assert _ours(hub) == []


def _signed_checkpoint(root: Path, directory: Path, *, signed: bool = True) -> Path:
    """An oracle-mini checkpoint (bf16, random weights) with provenance signed by the key the checkout trusts."""
    import torch

    from guards.keys import load_signing_key
    from guards.provenance import write_provenance
    from oracle.moe850b.config import load_config
    from oracle.moe850b.model import OracleMoE
    from oracle.moe850b.weights import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(OracleMoE(load_config("oracle-mini")).to(torch.bfloat16), directory)
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(root.parent / "signing.pem")}) if signed else None
    write_provenance(directory, ["model.safetensors", "config.json"], {"step": 1, "job_id": "1"}, key)
    return directory


def test_weights_are_published_only_with_verifying_provenance(
    repository_checkout: Path, hub: HubServer, tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download

    unsigned = _signed_checkpoint(repository_checkout, tmp_path / "unsigned", signed=False)
    args = ["--config", "oracle-mini", "--checkpoint", str(unsigned)]
    code, _, err = _publish(repository_checkout, hub, *args)
    assert code == 1
    assert "is unsigned" in err
    assert hub.commits(REPO) == []

    checkpoint = _signed_checkpoint(repository_checkout, tmp_path / "signed")
    code, _, err = _publish(repository_checkout, hub, "--config", "oracle-mini", "--checkpoint", str(checkpoint))
    assert code == 0, err
    assert {"model.safetensors", "model.safetensors.index.json", "provenance.json"} <= set(hub.files(REPO))
    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "c")  # type: ignore[attr-defined]
    assert Path(path).read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    index = json.loads(hub.files(REPO)["model.safetensors.index.json"])
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    card = hub.files(REPO)["README.md"].decode()
    assert "No weights are published yet" not in card

    code, _, err = _publish(repository_checkout, hub, "--checkpoint", str(checkpoint))  # card says oracle850b
    assert code == 1
    assert "not the oracle850b architecture" in err
