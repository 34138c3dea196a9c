"""Attack 4: the audit log forgets.

Cutting the log's tail and rewriting `audit.head` to match, deleting both files, or removing the refused entries and
re-hashing the chain consistently all made `oracle guards audit verify` say "intact". Now the attestation carries the
log's head; verify finds that anchor and refuses each of the three with one line naming the attestation and what the
log no longer holds. The legitimate log, anchored by a CI-signed attestation, still verifies as intact, and says
which entries come after the anchor.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from guards.attestation import write_attestation
from guards.audit import SIGNATURE, SIGNER, append_entry, entry_hash
from guards.keys import load_signing_key
from guards.paths import ATTESTATIONS_DIR, AUDIT_HEAD, AUDIT_LOG, SIGNING_KEY_ENV
from guards.result import GateResult
from oracle_base.digests import canonical_json
from policies.rule import Gate
from tests.checkouts import git, make_repository_checkout, oracle

NO_KEY: dict[str, str] = {}  # entries a developer appends without a signing key


def _ci_attests(root: Path, key: Path) -> None:
    """What `oracle guards attest` does once the ci gate passed: the gate's decision, signed with the CI key, then
    the attestation, which carries the log's head (guards.attestation.build_statement)."""
    environ = {SIGNING_KEY_ENV: str(key)}
    append_entry(root, gate="ci", result="pass", commit=git(root, "rev-parse", "HEAD"), environ=environ)
    write_attestation(root, GateResult(gate=Gate.ci, root=str(root), rules=[]), load_signing_key(environ))


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkout whose log holds gate decisions, two of them refused submits, anchored by a CI-signed attestation,
    with more decisions after it; returns (checkout, a pristine copy of its .oracle)."""
    tmp = tmp_path_factory.mktemp("audit-anchor")
    root = make_repository_checkout(tmp)
    head = git(root, "rev-parse", "HEAD")
    append_entry(root, gate="commit", result="pass", commit=head, environ=NO_KEY)
    for reason in ("no attestation for HEAD's tree", "recipe asks for 64 GPUs, the floor allows 8"):
        append_entry(root, gate="submit", result="refused", commit=head, details={"reason": reason}, environ=NO_KEY)
    append_entry(root, gate="ci", result="fail", commit=head, details={"findings": 1}, environ=NO_KEY)
    _ci_attests(root, tmp / "signing.pem")
    for gate in ("commit", "publish", "commit"):
        append_entry(root, gate=gate, result="pass", commit=head, environ=NO_KEY)
    pristine = tmp / "pristine"
    shutil.copytree(root / ".oracle", pristine)
    return root, pristine


@pytest.fixture
def checkout(logged: tuple[Path, Path]) -> Path:
    root, pristine = logged
    shutil.rmtree(root / ".oracle")
    shutil.copytree(pristine, root / ".oracle")
    return root


def _entries(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / AUDIT_LOG).read_text().splitlines()]


def _attestation(root: Path) -> Path:
    (path,) = (root / ATTESTATIONS_DIR).glob("*.json")
    return path


def _anchor(root: Path) -> dict[str, object]:
    statement = json.loads(base64.b64decode(json.loads(_attestation(root).read_text())["payload"]))
    anchor: dict[str, object] = statement["predicate"]["audit"]
    return anchor


def _rewrite(root: Path, entries: list[dict[str, object]]) -> None:
    """What an attacker holding the checkout writes: the log and a head that agrees with it."""
    (root / AUDIT_LOG).write_bytes(b"".join(canonical_json(entry) + b"\n" for entry in entries))
    last = entries[-1]
    (root / AUDIT_HEAD).write_bytes(canonical_json({"seq": last["seq"], "hash": last["hash"]}) + b"\n")


def _verify_refuses(root: Path, expected: str) -> str:
    done = oracle(root, "guards", "audit", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    anchored = [line for line in lines if line.startswith(f"{ATTESTATIONS_DIR.as_posix()}/")]
    assert len(anchored) == 1, done.stderr  # one line, naming the attestation
    # the attacker's log and head agree with each other: only the anchor gives it away
    assert not [line for line in lines if line.startswith((AUDIT_LOG.as_posix(), AUDIT_HEAD.as_posix()))]
    assert expected in anchored[0]
    assert "audit log NOT intact" in done.stderr
    assert "audit log intact" not in done.stdout
    last = _entries(root)[-1]  # the finding is on the log too, for the next anchored record to carry
    assert (last["gate"], last["result"]) == ("audit-verify", "refused")
    return anchored[0]


def test_attestation_carries_the_head_of_the_log_it_was_made_after(checkout: Path) -> None:
    ci = next(entry for entry in _entries(checkout) if entry["gate"] == "ci" and entry["result"] == "pass")

    assert _anchor(checkout) == {"seq": ci["seq"], "hash": ci["hash"]}
    assert ci["seq"] == 5  # after the four decisions made before the gate run
    assert SIGNER in ci  # written with the CI key in ORACLE_SIGNING_KEY


def test_cutting_the_tail_and_rewriting_the_head_is_refused(checkout: Path) -> None:
    kept = _entries(checkout)[:1]  # everything from the first refused submit on is cut
    _rewrite(checkout, kept)

    line = _verify_refuses(checkout, "but the log ends at seq 1 (entries were cut off)")

    assert "at seq 5" in line


def test_deleting_the_log_and_its_head_is_refused(checkout: Path) -> None:
    (checkout / AUDIT_LOG).unlink()
    (checkout / AUDIT_HEAD).unlink()

    _verify_refuses(checkout, "but the log is missing (it was deleted)")


def test_removing_the_refused_entries_and_rehashing_the_chain_is_refused(checkout: Path) -> None:
    rewritten: list[dict[str, object]] = []
    for entry in _entries(checkout):
        if entry["result"] == "refused":
            continue
        # the attacker has no signing key: a re-hashed entry cannot keep a signature that would verify
        entry = {k: v for k, v in entry.items() if k not in (SIGNER, SIGNATURE)}
        entry["seq"] = len(rewritten) + 1
        entry["prev"] = rewritten[-1]["hash"] if rewritten else "0" * 64
        entry["hash"] = entry_hash(entry)
        rewritten.append(entry)
    _rewrite(checkout, rewritten)

    line = _verify_refuses(checkout, "line 5 (seq 5) has hash")

    assert "rewritten" in line


def test_the_legitimate_anchored_log_is_intact(checkout: Path) -> None:
    done = oracle(checkout, "guards", "audit", "verify")

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "audit log intact: 8 entries, anchored up to seq 5 by 1 record(s), 1 of them signed" in done.stdout
    assert "seq 6..8 not yet anchored" in done.stdout
    assert "1 signed by trusted keys, 7 unsigned" in done.stdout


def test_a_later_attestation_anchors_the_entries_after_the_first(tmp_path: Path) -> None:
    root = make_repository_checkout(tmp_path)
    _ci_attests(root, tmp_path / "signing.pem")
    append_entry(root, gate="submit", result="refused", commit=None, environ=NO_KEY)
    (root / "NOTES.md").write_text("a new commit, so a new tree to attest\n")
    git(root, "add", "NOTES.md")
    git(root, "commit", "-qm", "notes")
    _ci_attests(root, tmp_path / "signing.pem")

    done = oracle(root, "guards", "audit", "verify")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "anchored up to seq 3 by 2 record(s), 2 of them signed" in done.stdout
    assert "not yet anchored" not in done.stdout
