"""Issue 14, attacks 5 and 6: waivers without limits, and the policy switched off by the change it should judge.

Each attack is made as the issue describes it, in a checkout of this repository, and committed; the real CLI then
runs the ci gate with `--attest`: the gate fails (exit 1) naming TRU001/TRU002, and nothing is attested. The
legitimate path (this repository's own waivers, a tightening of the settings) still passes.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from guards.keys import key_id, load_signing_key
from guards.runner import run_gate
from guards.trust import TrustRoot
from guards.waivers import Waiver, approve, bound_waivers, load_waivers
from policies.context import Environment
from policies.floor import WaiverLimits
from policies.rule import Gate
from tests.checkouts import git, make_repository_checkout, oracle
from tests.trust import session_key, session_trust

TODAY = date.today().isoformat()
VIOLATION = 'model = AutoModel.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
SETTINGS = "policies/policies.toml"
WAIVERS = "policies/waivers.toml"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository_checkout(tmp_path_factory.mktemp("floor"))


@pytest.fixture
def repo(checkout: Path) -> Iterator[Path]:
    """The shared checkout, put back to its first commit after each test."""
    first = git(checkout, "rev-list", "--max-parents=0", "HEAD")
    yield checkout
    git(checkout, "reset", "-q", "--hard", first)
    git(checkout, "clean", "-qfdx", "-e", ".venv", "-e", "data", "-e", ".oracle")
    subprocess.run(["rm", "-rf", str(checkout / ".oracle" / "attestations")], check=True)


def _commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


def _gate_with_attest(root: Path) -> subprocess.CompletedProcess[str]:
    return oracle(root, "guards", "run", "--gate", "ci", "--attest", env={"ORACLE_SIGNING_KEY": str(session_key())})


def _attestations(root: Path) -> list[Path]:
    return sorted((root / ".oracle" / "attestations").glob("*.json"))


def _refused(done: subprocess.CompletedProcess[str], rule: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert rule in done.stdout, done.stdout


def _edit(root: Path, relative: str, pattern: str, replacement: str) -> None:
    path = root / relative
    text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} not in {relative}"
    path.write_text(text)


# --- attack 5: waivers without limits ---------------------------------------------------------------------------


def test_blanket_waivers_of_every_rule_are_refused_and_nothing_is_attested(repo: Path) -> None:
    from policies import catalog

    (repo / "oracle" / "sneaky.py").write_text(VIOLATION)
    blanket = "".join(
        f'\n[[waiver]]\nrule = "{rule.id}"\npath = "**"\nreason = "everything is fine here"\nowner = "abc"\n'
        f"created = {TODAY}\nexpires = 9999-12-31\n"
        for rule in catalog()
    )
    (repo / WAIVERS).write_text((repo / WAIVERS).read_text() + blanket)
    _commit(repo, "waive everything")

    done = _gate_with_attest(repo)

    _refused(done, "TRU002")
    assert "oracle/sneaky.py" in done.stdout
    assert "EXT001" in done.stdout
    assert "the floor allows at most 90" in done.stdout
    assert _attestations(repo) == []


def test_a_blanket_waiver_without_created_is_an_error_naming_the_key(repo: Path) -> None:
    (repo / WAIVERS).write_text(
        '[[waiver]]\nrule = "EXT001"\npath = "**"\nreason = "everything is fine here"\nowner = "abc"\n'
        "expires = 9999-12-31\n"
    )
    _commit(repo, "waive everything, the old way")

    done = _gate_with_attest(repo)

    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(r"waivers.toml:1: waiver.0.created: Field required", done.stderr), done.stderr
    assert _attestations(repo) == []


@pytest.mark.parametrize("selector", ["**", "*", "**/*", "*/**", "?*", "*.*", "**/*.py", "oracle/**"])
def test_a_glob_that_names_no_file_or_too_many_does_not_apply(repo: Path, selector: str) -> None:
    limits = WaiverLimits()
    waivers = load_waivers(repo)
    blanket = Waiver(
        rule="EXT001",
        path=selector,
        reason="everything is fine here",
        owner="abc",
        created=date.today(),
        expires=date.today() + timedelta(days=30),
    )
    bounded = bound_waivers(
        type(waivers)([blanket], []), limits, lambda: git(repo, "ls-files").splitlines(), {}, date.today()
    )
    assert bounded.active == []
    ((refused, problem),) = bounded.refused
    assert refused is blanket
    assert "only wildcards" in problem or "the floor allows at most 5" in problem


def test_environment_findings_are_never_waived(repo: Path, tmp_path: Path) -> None:
    foreign = Environment(tmp_path / "elsewhere", Path("/usr"), {})
    fingerprint = next(
        f.fingerprint
        for f in run_gate(repo, Gate.commit, [], environment_factory=lambda: foreign).findings
        if f.rule_id == "VENV002"
    )
    (repo / WAIVERS).write_text(
        "".join(
            f'[[waiver]]\nrule = "VENV002"\n{selector}\nreason = "my own venv is fine"\nowner = "abc"\n'
            f"created = {TODAY}\nexpires = {(date.today() + timedelta(days=10)).isoformat()}\n"
            for selector in ('path = "**"', f'fingerprint = "{fingerprint}"')
        )
    )

    result = run_gate(repo, Gate.commit, [], environment_factory=lambda: foreign)

    assert [f.rule_id for f in result.findings if f.rule_id.startswith("VENV")] == ["VENV002"]
    assert not result.passed
    assert result.waived == []


def test_a_waiver_of_a_critical_rule_needs_an_approval_by_a_waiver_approval_key(tmp_path: Path) -> None:
    trust = session_trust()
    approver = load_signing_key({"ORACLE_SIGNING_KEY": str(trust.keys["waiver-approval"])})
    stranger = load_signing_key({"ORACLE_SIGNING_KEY": str(trust.root_key)})
    assert approver is not None
    assert stranger is not None
    approval_keys = {key_id(approver.public_key()): approver.public_key()}
    waiver = Waiver(
        rule="VENV004",
        path="requirements.lock",
        reason="a pin the index cannot hash yet",
        owner="platform",
        created=date.today(),
        expires=date.today() + timedelta(days=30),
    )
    approved = waiver.model_copy(update={"approval": approve(waiver, approver)})
    by_stranger = waiver.model_copy(update={"approval": approve(waiver, stranger)})
    stretched = approved.model_copy(update={"expires": date.today() + timedelta(days=60)})
    candidates = [waiver, approved, by_stranger, stretched]

    bounded = bound_waivers(
        type(load_waivers(tmp_path))(candidates, []),
        WaiverLimits(),
        lambda: ["requirements.lock"],
        approval_keys,
        date.today(),
    )

    assert bounded.active == [approved]
    assert [w for w, _ in bounded.refused] == [waiver, by_stranger, stretched]
    assert all("VENV004 is critical" in problem for _, problem in bounded.refused)


def test_this_repositorys_waivers_still_apply_and_are_attested(repo: Path) -> None:
    done = _gate_with_attest(repo)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "waived by platform@oracle.invalid" in done.stdout
    (attestation,) = _attestations(repo)
    predicate = json.loads(base64.b64decode(json.loads(attestation.read_text())["payload"]))["predicate"]
    assert {(w["rule"], w["created"]) for w in predicate["waivers"]} >= {("EXT001", "2026-11-26")}


# --- attack 6: the policy switched off by the change it should judge ---------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "replacement"),
    [
        (r"^exclude = \[\]", 'exclude = ["*"]'),
        (r"^max_file_bytes = \d+", "max_file_bytes = 1"),
        (r"^allow_override = false", "allow_override = true"),
        (r"^entry_points = \[.*\]", "entry_points = []"),
    ],
    ids=["exclude-everything", "max-file-bytes-1", "allow-override", "no-entry-points"],
)
def test_a_loosened_setting_is_a_finding_and_nothing_is_attested(repo: Path, pattern: str, replacement: str) -> None:
    _edit(repo, SETTINGS, pattern, replacement)
    _commit(repo, "loosen the policy")

    done = _gate_with_attest(repo)

    _refused(done, "TRU001")
    assert "looser than the floor" in done.stdout
    assert _attestations(repo) == []


def test_deleting_policies_toml_is_a_finding_and_nothing_is_attested(repo: Path) -> None:
    (repo / SETTINGS).unlink()
    _commit(repo, "no policy at all")

    done = _gate_with_attest(repo)

    _refused(done, "TRU001")
    assert "policies/policies.toml is missing" in done.stdout
    assert _attestations(repo) == []


def test_a_waiver_cannot_silence_the_floor(repo: Path) -> None:
    _edit(repo, SETTINGS, r"^max_file_bytes = \d+", "max_file_bytes = 1")
    (repo / WAIVERS).write_text(
        f'[[waiver]]\nrule = "TRU001"\npath = "{SETTINGS}"\nreason = "we know what we are doing"\nowner = "abc"\n'
        f"created = {TODAY}\nexpires = {(date.today() + timedelta(days=10)).isoformat()}\n"
    )
    _commit(repo, "loosen and waive")

    done = _gate_with_attest(repo)

    _refused(done, "TRU001")
    assert "TRU001 guards the gate itself and cannot be waived" in done.stdout
    assert _attestations(repo) == []


@pytest.mark.parametrize(
    ("pattern", "replacement"),
    [
        (r"^max_file_bytes = \d+", "max_file_bytes = 40000000"),
        (r'^fail_on = "error"', 'fail_on = "warning"'),
        (r'^allow_unlocked = \["pip", "oracle"\]', 'allow_unlocked = ["oracle", "pip"]'),
        (r"^require_signature = false", "require_signature = true"),
        (r"^max_nodes = \d+", "max_nodes = 4"),
        (r"^extra_forbidden_names = \[\]", 'extra_forbidden_names = ["someone-elses-model"]'),
    ],
    ids=["bigger-files", "fail-on-warning", "same-set-reordered", "signatures", "fewer-nodes", "more-forbidden"],
)
def test_a_tightened_setting_is_not_a_finding(repo: Path, pattern: str, replacement: str) -> None:
    _edit(repo, SETTINGS, pattern, replacement)

    result = run_gate(repo, Gate.commit, [])

    assert [f.message for f in result.findings if f.rule_id == "TRU001"] == []


def test_a_trust_root_floor_tighter_than_the_tree_makes_the_tree_a_finding(repo: Path) -> None:
    trust = TrustRoot(source="org", development=False, floor={"settings": {"cluster": {"max_nodes": 8}}})

    result = run_gate(repo, Gate.commit, [], trust=trust)

    (finding,) = [f for f in result.findings if f.rule_id == "TRU001"]
    assert "cluster.max_nodes is 32" in finding.message
    assert "at most 8" in finding.message
    assert finding.line > 0
