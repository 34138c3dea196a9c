"""`oracle hub build` and `oracle hub publish` end to end, from an attested checkout of this repository, against the
strict local Hub server (tests/hub/hub_server.py) and read back with the real `huggingface_hub` client."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
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
    token = hub.token  # type: ignore[attr-defined]
    card = ModelCard.load(hf_hub_download(REPO, "README.md", endpoint=hub.url, token=token, cache_dir=tmp_path / "c2"))
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


SHARD_BYTES = 2_000_000  # oracle-mini in bf16 is ~6 MB: several shards


def _signed_checkpoint(directory: Path, *, tokenizer: Path | None = None, signed: bool = True) -> Path:
    """An oracle-mini checkpoint (bf16, random weights) laid out as `oracle train` leaves one, with provenance signed
    by a provenance key of the session trust root (the one the checkout trusts), or unsigned."""
    import torch

    from guards.keys import load_signing_key
    from guards.provenance import write_provenance
    from oracle.moe850b.config import load_config
    from oracle.moe850b.model import OracleMoE
    from oracle.moe850b.weights import save_checkpoint
    from oracle.tokenization.tokenizer import TOKENIZER_FILES
    from tests.trust import session_key

    torch.manual_seed(0)
    save_checkpoint(OracleMoE(load_config("oracle-mini")).to(torch.bfloat16), directory)
    names = ["model.safetensors", "config.json"]
    if tokenizer is not None:
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer / name, directory / name)
        names += TOKENIZER_FILES
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())}) if signed else None
    facts = {"commit": "c" * 40, "run": "publish-test", "step": 1, "job_id": "1"}
    write_provenance(directory, names, facts, key)
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signed oracle-mini checkpoint with a trained tokenizer, and its transformers export in several shards
    (`oracle export --format hf`, signed by the session's provenance key): (checkpoint, export)."""
    from guards.keys import load_signing_key
    from hub.export import audited_export
    from oracle.moe850b.config import load_config
    from oracle.tokenization.tokenizer import save_tokenizer, train_tokenizer
    from tests.trust import session_key

    tmp = tmp_path_factory.mktemp("exported")
    texts = ["The quick brown fox jumps over the lazy dog.", "Съешь же ещё этих мягких французских булок.", "x = 1\n"]
    (tmp / "corpus.txt").write_text("\n".join(texts * 8), encoding="utf-8")
    mini = load_config("oracle-mini")
    trained, _ = train_tokenizer([tmp / "corpus.txt"], mini.vocab_size, min_frequency=2)
    tokenizer = save_tokenizer(trained, tmp / "tokenizer", context_length=mini.context_length)
    checkpoint = _signed_checkpoint(tmp / "runs" / "r" / "step-00000001", tokenizer=tokenizer)
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())})
    export = audited_export(checkpoint, tmp / "export", tmp, max_shard_size=SHARD_BYTES, signing_key=key).directory
    assert len(list(export.glob("model-*-of-*.safetensors"))) >= 2
    return checkpoint, export


def _card_snippet(card: str) -> str:
    """The python code block of a model card."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    assert len(blocks) == 1, "the card shows one python snippet"
    return str(blocks[0])


def test_an_export_is_published_through_lfs_and_the_cards_snippet_runs_on_the_download(
    repository_checkout: Path, hub: HubServer, exported: tuple[Path, Path], tmp_path: Path
) -> None:
    import hashlib

    from huggingface_hub import snapshot_download

    checkpoint, export = exported
    args = ["--config", "oracle-mini", "--checkpoint"]
    code, _, err = _publish(repository_checkout, hub, *args, str(checkpoint))  # a training checkpoint: never as is
    assert code == 1
    assert "is not a transformers export" in err
    assert f"oracle export --format hf --checkpoint {checkpoint}" in err
    assert hub.commits(REPO) == []

    code, out, err = _publish(repository_checkout, hub, *args, str(export))
    assert code == 0, err
    shards = sorted(p.name for p in export.glob("model-*-of-*.safetensors"))
    published = hub.files(REPO)
    assert set(published) == {p.name for p in export.iterdir()} | {
        "README.md", "default_system.txt", "default_intro.txt", "attestation.json", ".gitattributes"
    }  # fmt: skip
    # every shard went through LFS (the publisher's environment leaves hf_xet on: publish turns Xet off itself),
    # stored under the sha256 the export's provenance signs
    uploads = [method for method, path, _ in hub.requests if path.startswith("/lfs-upload/")]
    assert uploads == ["PUT"] * len(shards)
    signed = json.loads(base64.b64decode(json.loads((export / "provenance.json").read_bytes())["payload"]))["files"]
    assert set(hub.lfs_objects[REPO]) == {signed[name] for name in shards}
    assert all(hashlib.sha256(published[name]).hexdigest() == signed[name] for name in signed)

    download = Path(snapshot_download(REPO, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "cache"))  # type: ignore[attr-defined]
    for path in export.iterdir():
        assert (download / path.name).read_bytes() == path.read_bytes(), path.name
    card = (download / "README.md").read_text()
    metadata, _ = split_front_matter(card)
    assert metadata["library_name"] == "transformers"
    snippet = _card_snippet(card)
    for call in ("AutoModelForCausalLM.from_pretrained", "AutoTokenizer.from_pretrained", "apply_chat_template"):
        assert call in snippet
    assert snippet.count(f'"{REPO}"') == 2
    # the snippet as the card shows it, pointed at the download; then check that it generated new tokens
    script = snippet.replace(f'"{REPO}"', repr(str(download)))
    script += "\nassert outputs.shape[1] > inputs['input_ids'].shape[1], outputs.shape\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr

    code, out, err = _publish(repository_checkout, hub, *args, str(export))  # compared by sha256 for LFS files
    assert code == 0, err
    assert "no commit made" in out
    assert len(_ours(hub)) == 1


def _alter(directory: Path, name: str) -> str:
    (directory / name).write_bytes((directory / name).read_bytes()[:-2] + b"\0\0")
    return name


def _add_shard(directory: Path, name: str) -> str:
    shutil.copyfile(directory / name, directory / "model-00009-of-00009.safetensors")
    return "model-00009-of-00009.safetensors"


def _unsign(directory: Path, name: str) -> str:
    record = json.loads((directory / "provenance.json").read_bytes())
    (directory / "provenance.json").write_text(json.dumps({**record, "signatures": []}))
    return "is unsigned"


@pytest.mark.parametrize("tamper", [_alter, _add_shard, _unsign], ids=["altered-shard", "extra-shard", "unsigned"])
def test_a_tampered_export_is_refused_in_one_line_naming_the_file_and_audited(
    repository_checkout: Path, published: HubServer, exported: tuple[Path, Path], tmp_path: Path, tamper: object
) -> None:
    hub = published
    log, requests = hub.commits(REPO), len(hub.requests)
    copy = tmp_path / "export"
    shutil.copytree(exported[1], copy)
    shard = sorted(p.name for p in copy.glob("model-*-of-*.safetensors"))[1]
    named = tamper(copy, shard)  # type: ignore[operator]
    code, _, err = _publish(repository_checkout, hub, "--config", "oracle-mini", "--checkpoint", str(copy))
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert named in err
    assert "export" in err.split(";")[-1]  # the fix: the export, as written
    assert hub.commits(REPO) == log
    assert [method for method, _, _ in hub.requests[requests:] if method in {"POST", "PUT"}] == []
    audit = [json.loads(line) for line in (repository_checkout / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert (audit[-1]["gate"], audit[-1]["result"]) == ("publish", "refused")
    assert err.strip().endswith(audit[-1]["details"]["reason"])


def _staged_export(exported: tuple[Path, Path], directory: Path) -> Path:
    """The export's files as a staging holds them."""
    shutil.copytree(exported[1], directory)
    return directory


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda d, s: (d / s[0]).unlink(), "PUB004 {0} is listed in provenance.json but not staged"),
        (lambda d, s: (d / s[0]).write_bytes(b"\0" + (d / s[0]).read_bytes()[1:]), "PUB004 {0}: its sha256 is not"),
        (
            lambda d, s: shutil.copyfile(d / s[0], d / "model-00007-of-00009.safetensors"),
            "PUB004 model-00007-of-00009.safetensors is a safetensors weights file that provenance.json does not list",
        ),
        (lambda d, s: (d / "provenance.json").unlink(), "PUB004 {0} is a safetensors weights file without verifying"),
    ],
    ids=["missing", "altered", "extra", "no-record"],
)
def test_staged_shards_are_each_checked_against_the_signed_record(
    repository_checkout: Path, exported: tuple[Path, Path], tmp_path: Path, tamper: object, expected: str
) -> None:
    from hub.stage import check_staged

    staged = _staged_export(exported, tmp_path / "staged")
    assert [p for p in check_staged(repository_checkout, staged, "oracle-mini") if p.startswith("PUB004")] == []
    shards = sorted(p.name for p in staged.glob("model-*-of-*.safetensors"))
    tamper(staged, shards)  # type: ignore[operator]
    problems = [p for p in check_staged(repository_checkout, staged, "oracle-mini") if p.startswith("PUB004")]
    assert problems
    assert problems[0].startswith(expected.format(*shards)), problems
    assert all("\n" not in problem and ";" in problem for problem in problems)  # one line, then the fix
