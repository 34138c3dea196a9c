"""Report writers for a gate run: plain text for people, JSON for scripts, SARIF 2.1.0 for code-scanning tools.

All three read only a GateResult, so what a person sees in pre-commit output, what CI archives and what a
code-scanning upload shows cannot disagree. The text form carries no colour codes: it ends up in pre-commit output
and CI logs, where escape sequences are noise.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from guards.result import GateResult, WaiverUse
from oracle_base.atomic_write import write_atomically
from policies.rule import Finding, Rule

SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "oracle-guards"
TOOL_INFORMATION_URI = "https://oracle.invalid/guards"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "oracle/v1"  # versioned so a change to the fingerprint recipe can never match old alerts
ENVIRONMENT_HEADING = "(environment)"

JSONObject = dict[str, object]


# --- text -------------------------------------------------------------------------------------------------------


def render_text(result: GateResult) -> str:
    """Findings grouped by file, then waivers, then internal errors, then the summary and the verdict."""
    lines: list[str] = []
    for path, findings in _group_by_path(result.findings):
        lines.append(path or ENVIRONMENT_HEADING)
        for finding in findings:
            lines.append(f"  {_position(finding)}  {finding.rule_id}  {finding.severity}  {finding.message}")
            lines.append(f"      fix: {finding.fix}")
        lines.append("")
    if result.waived:
        lines.append("waived:")
        for finding, use in sorted(result.waived, key=lambda pair: _sort_key(pair[0])):
            where = finding.path or ENVIRONMENT_HEADING
            lines.append(f"  {where}  {_position(finding)}  {finding.rule_id}  {finding.severity}  {finding.message}")
            lines.append(f"      waived by {use.owner} until {use.expires}: {use.reason}")
        lines.append("")
    if result.expired_waivers or result.stale_waivers:
        lines.append("waivers that apply to nothing (renew or remove them):")
        lines.extend(f"  {note}" for note in (*result.expired_waivers, *result.stale_waivers))
        lines.append("")
    if result.errors:
        lines.append("errors:")
        lines.extend(f"  {error}" for error in result.errors)
        lines.append("")
    lines.extend(_settings_lines(result))
    if result.floor:
        lines.append(f"policy floor: {result.floor} (oracle guards run --show-settings)")
    lines.extend(_skipped_lines(result))
    lines.append(_examined_summary(result))
    lines.append(_verdict(result))
    return "\n".join(lines) + "\n"


def _sort_key(finding: Finding) -> tuple[str, int, int, str]:
    return (finding.path, finding.line, finding.column, finding.rule_id)


def _group_by_path(findings: Iterable[Finding]) -> list[tuple[str, list[Finding]]]:
    # Environment findings ("" sorts first) come before files: a broken environment explains the file findings.
    groups: dict[str, list[Finding]] = {}
    for finding in sorted(findings, key=_sort_key):
        groups.setdefault(finding.path, []).append(finding)
    return list(groups.items())


def _position(finding: Finding) -> str:
    # Line and column 0 mean "not applicable"; printing "0:0" would look like a real position.
    if finding.line < 1:
        return "-"
    if finding.column < 1:
        return str(finding.line)
    return f"{finding.line}:{finding.column}"


SKIPPED_SHOWN = 20  # the text names this many paths left out; the JSON report lists them all
SETTINGS_SHOWN = 8  # the text names the keys a settings file sets up to this many


def _settings_lines(result: GateResult) -> list[str]:
    """Where the settings came from, whether the tree was judged as an Oracle checkout, the environment and the
    audit log (what a person running the gate on another repository needs to read the verdict)."""
    info = result.settings
    if not info:
        return []
    why = info.get("oracle_checkout")
    kind = f"an Oracle checkout ({why})" if why else "not an Oracle checkout: generic defaults"
    if not why:
        kind += ", Oracle-only checks " + ("on (oracle_checks = true)" if info.get("oracle_checks") else "off")
    values = info.get("values")
    source = info.get("source")
    set_here = sorted(k for k, v in values.items() if v["from"] == source) if isinstance(values, dict) else []
    lines = [f"settings: {source}; {kind}"]
    if len(set_here) > SETTINGS_SHOWN:
        lines.append(f"  {len(set_here)} keys set there, the rest are defaults (--format json: each with its origin)")
    elif set_here:
        lines.append(f"  set there: {', '.join(set_here)}; the rest are defaults")
    lines.extend(f"  {note}" for note in info.get("notes") or [])  # type: ignore[attr-defined]
    for key in ("environment", "audit"):
        if info.get(key):
            lines.append(f"{key}: {info[key]}")
    return lines


def _skipped_lines(result: GateResult) -> list[str]:
    skipped: dict[str, str] = {}
    for examined in result.examined.values():
        skipped.update(examined.skipped)
    if not skipped:
        return []
    lines = ["not examined, or only in part (why):"]
    for path in sorted(skipped)[:SKIPPED_SHOWN]:
        lines.append(f"  {path}: {skipped[path]}")
    if len(skipped) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(skipped) - SKIPPED_SHOWN} more (--format json lists them all)")
    return lines


def _examined_summary(result: GateResult) -> str:
    # The same file is usually examined by several policies: the total counts each path once.
    files = {path for examined in result.examined.values() for path in examined.files}
    skipped = {path for examined in result.examined.values() for path in examined.skipped}
    per_policy = ", ".join(f"{policy}: {len(result.examined[policy].files)}" for policy in sorted(result.examined))
    detail = f"{per_policy}; {len(skipped)} skipped" if per_policy else f"{len(skipped)} skipped"
    return f"examined: {len(files)} files ({detail})"


def _verdict(result: GateResult) -> str:
    if result.passed:
        return "PASSED"
    return f"FAILED: {len(result.blocking)} findings, {len(result.errors)} errors"


# --- JSON -------------------------------------------------------------------------------------------------------


def render_json(result: GateResult) -> str:
    return json.dumps(result.as_json(), indent=2) + "\n"


# --- SARIF ------------------------------------------------------------------------------------------------------


def render_sarif(result: GateResult, *, tool_version: str = "0.1.0") -> str:
    """A SARIF 2.1.0 log with one run: the rule catalog, every finding, and waived findings as suppressed results."""
    rule_index = _rule_index(result.rules)
    results = [_sarif_result(finding, rule_index, None) for finding in result.findings]
    results += [_sarif_result(finding, rule_index, use) for finding, use in result.waived]
    run: JSONObject = {
        "tool": {
            "driver": {
                "name": TOOL_NAME,
                "version": tool_version,
                "informationUri": TOOL_INFORMATION_URI,
                "rules": [_sarif_rule(rule) for rule in _unique_rules(result.rules)],
            }
        },
        "results": results,
        "invocations": [
            {
                "executionSuccessful": not result.errors,
                "toolExecutionNotifications": [
                    {"level": "error", "message": {"text": error}} for error in result.errors
                ],
            }
        ],
        "originalUriBaseIds": {SRCROOT: {"uri": _root_uri(result.root)}},
    }
    log: JSONObject = {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(log, indent=2) + "\n"


def _unique_rules(rules: Iterable[Rule]) -> list[Rule]:
    # ruleIndex must point at the one descriptor for an id, so a rule listed twice is described once.
    seen: dict[str, Rule] = {}
    for rule in rules:
        seen.setdefault(rule.id, rule)
    return list(seen.values())


def _rule_index(rules: Iterable[Rule]) -> dict[str, int]:
    return {rule.id: index for index, rule in enumerate(_unique_rules(rules))}


def _camel_case(title: str) -> str:
    # Words keep their own inner capitals, so acronyms such as "CUDA" survive.
    return "".join(word[:1].upper() + word[1:] for word in re.findall(r"[A-Za-z0-9]+", title))


def _fence(code: str) -> str:
    # A fence longer than any backtick run inside the example, so an example holding ``` cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _help_text(rule: Rule) -> str:
    return f"{rule.rationale}\n\nFix: {rule.fix}\n\nExample:\n{rule.example}\n\nUse instead:\n{rule.example_fix}"


def _help_markdown(rule: Rule) -> str:
    bad, good = _fence(rule.example), _fence(rule.example_fix)
    return (
        f"{rule.rationale}\n\n**Fix:** {rule.fix}\n\n"
        f"**Example:**\n\n{bad}\n{rule.example}\n{bad}\n\n"
        f"**Use instead:**\n\n{good}\n{rule.example_fix}\n{good}\n"
    )


def _sarif_rule(rule: Rule) -> JSONObject:
    return {
        "id": rule.id,
        "name": _camel_case(rule.title),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.rationale},
        "help": {"text": _help_text(rule), "markdown": _help_markdown(rule)},
        "defaultConfiguration": {"level": str(rule.severity)},
        "properties": {"policy": rule.policy, "gates": sorted(str(gate) for gate in rule.gates)},
    }


def _sarif_result(finding: Finding, rule_index: dict[str, int], waiver: WaiverUse | None) -> JSONObject:
    sarif: JSONObject = {"ruleId": finding.rule_id}
    # A finding from a rule missing in result.rules still names its rule; it just has no descriptor to index.
    if finding.rule_id in rule_index:
        sarif["ruleIndex"] = rule_index[finding.rule_id]
    sarif["level"] = str(finding.severity)
    sarif["message"] = {"text": f"{finding.message} Fix: {finding.fix}"}
    sarif["locations"] = _sarif_locations(finding)
    sarif["partialFingerprints"] = {FINGERPRINT_KEY: finding.fingerprint}
    if waiver is not None:
        justification = f"{waiver.reason} (owner: {waiver.owner}; expires: {waiver.expires})"
        sarif["suppressions"] = [{"kind": "external", "justification": justification}]
    return sarif


def _sarif_locations(finding: Finding) -> list[JSONObject]:
    # Environment findings have no file to point at; the schema allows an empty locations array.
    if not finding.path:
        return []
    physical: JSONObject = {"artifactLocation": {"uri": quote(finding.path), "uriBaseId": SRCROOT}}
    if finding.line >= 1:
        region: JSONObject = {"startLine": finding.line}
        if finding.column >= 1:
            region["startColumn"] = finding.column
        physical["region"] = region
    return [{"physicalLocation": physical}]


def _root_uri(root: str) -> str:
    # SARIF requires a base URI to end with "/" so relative paths resolve beneath it rather than beside it.
    uri = Path(root).absolute().as_uri()
    return uri if uri.endswith("/") else uri + "/"


# --- output -----------------------------------------------------------------------------------------------------


def write_report(text: str, output: Path | None) -> None:
    """Write to stdout, or replace `output` atomically so a reader never sees a half-written report."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomically(output, text)
