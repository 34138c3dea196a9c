"""Attack 2: an attestation nobody's gate run produced.

An unsigned attestation with a hand-made "passed" result, for a commit that contains a violation, was accepted by
`oracle guards verify`, `oracle submit` and `oracle hub publish`; a public key committed in the same change made a
self-signed one pass. Under a trust root (the session's, tests.trust) each is refused with one line and an audit
entry; the legitimate, CI-signed attestation still verifies.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from guards import git as guards_git
from guards.attestation import PAYLOAD_TYPE, current_digests
from guards.keys import generate_keypair, load_signing_key, sign
from oracle_base.digests import canonical_json
from oracle_base.records.governance import pae
from tests.checkouts import attest, git, make_repository_checkout, oracle

VIOLATION = 'from transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("meta-llama/Llama-2-7b-hf")\n'


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository_checkout(tmp_path_factory.mktemp("forged"))


def _hand_made_statement(root: Path) -> dict[str, object]:
    """What a user writes by hand: the subjects of HEAD as they are, and a passing ci result."""
    digests = current_digests(root)
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": "git-tree", "digest": {"gitTree": guards_git.head_tree(root)}},
            {"name": "requirements.lock", "digest": {"sha256": digests["requirements.lock"]}},
            {"name": "policy-bundle", "digest": {"sha256": digests["policy-bundle"]}},
            {"name": "model-config", "digest": {"sha256": digests["model-config"]}},
        ],
        "predicateType": "https://oracle.invalid/attestation/guards-result/v1",
        "predicate": {"gate": "ci", "commit": guards_git.head_commit(root), "passed": True, "rules": []},
    }


def _write_forged(root: Path, signatures: list[dict[str, str]] | None = None, key: Path | None = None) -> Path:
    statement = _hand_made_statement(root)
    body = canonical_json(statement)
    sigs = signatures or []
    if key is not None:
        private = load_signing_key({"ORACLE_SIGNING_KEY": str(key)})
        assert private is not None
        keyid, sig = sign(private, pae(PAYLOAD_TYPE, body))
        sigs = [{"keyid": keyid, "sig": sig}]
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(body).decode(), "signatures": sigs}
    path = root / ".oracle" / "attestations" / f"{guards_git.head_tree(root)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(envelope))
    return path


def _last_audit(root: Path, gate: str) -> dict[str, object]:
    lines = (root / ".oracle" / "audit.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    return next(entry for entry in reversed(entries) if entry["gate"] == gate)


def _commit_violation(root: Path, name: str, extra: dict[str, str] | None = None) -> None:
    (root / "oracle" / f"{name}.py").write_text(VIOLATION)
    for relative, text in (extra or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", f"a violation: {name}")


def _assert_refused_everywhere(root: Path, expected: str) -> None:
    verify = oracle(root, "guards", "verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert expected in verify.stderr
    assert len(verify.stderr.strip().splitlines()) == 1
    entry = _last_audit(root, "verify")
    assert entry["result"] == "refused"
    assert expected in str(entry["details"])

    submit = oracle(root, "submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0")
    assert submit.returncode == 1, submit.stdout + submit.stderr
    assert expected in submit.stderr
    entry = _last_audit(root, "submit")
    assert entry["result"] == "refused"
    assert expected in str(entry["details"])

    publish = oracle(
        root,
        "hub",
        "publish",
        "--repo-id",
        "oracle-ai/test",
        "--endpoint",
        "http://127.0.0.1:9",
        env={"HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "0"},
    )
    assert publish.returncode == 1, publish.stdout + publish.stderr
    assert expected in publish.stderr
    assert _last_audit(root, "publish")["result"] == "refused"


def test_hand_made_unsigned_attestation_of_a_violating_commit_is_refused(checkout: Path) -> None:
    _commit_violation(checkout, "unsigned_forgery")
    _write_forged(checkout)
    _assert_refused_everywhere(checkout, "is unsigned but a signature is required")


def test_self_signed_attestation_with_its_key_committed_in_the_change_is_refused(checkout: Path) -> None:
    own = checkout.parent / "own"
    generate_keypair(own / "own.pem", checkout / "policies" / "keys" / "own.pub")  # the change commits its key
    _commit_violation(checkout, "self_signed_forgery")
    _write_forged(checkout, key=own / "own.pem")
    _assert_refused_everywhere(checkout, "is not in the trust root's attestation role")


def test_attestation_signed_by_a_trusted_key_of_another_role_is_refused(checkout: Path, tmp_path: Path) -> None:
    from tests.trust import make_trust

    trust = make_trust(tmp_path, {"attestation": "ci", "submission": "submitter", "provenance": "trainer"})
    _commit_violation(checkout, "wrong_role_forgery")
    _write_forged(checkout, key=trust.keys["submission"])
    done = oracle(checkout, "guards", "verify", env=trust.env)
    assert done.returncode == 1
    assert "is not in the trust root's attestation role" in done.stderr


def test_ci_signed_attestation_of_a_clean_commit_verifies(tmp_path: Path) -> None:
    root = make_repository_checkout(tmp_path)
    attest(root, tmp_path / "signing.pem")
    done = oracle(root, "guards", "verify")
    assert done.returncode == 0, done.stderr
    assert "signed by" in done.stdout
    statement = json.loads(
        base64.b64decode(json.loads(next((root / ".oracle" / "attestations").glob("*.json")).read_text())["payload"])
    )
    assert statement["predicate"]["trust"]["development"] is False


def test_attest_refuses_a_key_the_trust_root_does_not_name(tmp_path: Path) -> None:
    root = make_repository_checkout(tmp_path)
    generate_keypair(tmp_path / "stranger.pem", tmp_path / "stranger.pub")
    done = oracle(root, "guards", "attest", env={"ORACLE_SIGNING_KEY": str(tmp_path / "stranger.pem")})
    assert done.returncode == 1
    assert "is not an attestation key of the trust root" in done.stderr
    assert not list((root / ".oracle" / "attestations").glob("*.json"))
    entry = _last_audit(root, "attest")
    assert entry["result"] == "refused"
    assert "is not an attestation key of the trust root" in str(entry["details"])
