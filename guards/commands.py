"""`oracle guards ...`: run a gate, list and explain rules, attest and verify, check the audit log.

Exit codes: 0 pass, 1 findings (or a failed verification), 2 usage, configuration or internal error. Errors are
raised typed (oracle_base.errors) and printed once, by the `oracle` command's handler (oracle_cli.app).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from oracle_base.errors import EXIT_ERROR, InternalError, OracleError, Refused, UsageError

guards_app = typer.Typer(help="Policy gates: run them, explain their rules, attest and verify.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log of gate decisions.", no_args_is_help=True)
guards_app.add_typer(audit_app, name="audit")

EXIT_FINDINGS = 1


class ReportFormat(StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


def _audit_refusal(root: Path, gate: str, reason: str, **details: object) -> str | None:
    """Append a refused entry for `gate`; returns why the log could not take it (None when it did). The refusal
    stands either way."""
    from guards import git
    from guards.audit import AuditError, append_entry

    try:
        append_entry(
            root,
            gate=gate,
            result="refused",
            commit=git.head_commit_or_none(root),
            details={"reason": reason, **details},
        )
    except (AuditError, OSError) as exc:
        return str(exc)
    return None


def _record_refusal(root: Path, gate: str, exc: OracleError) -> None:
    """The audit entry of `exc`, which refuses `oracle guards attest|verify` (re-raised by the caller); a log that
    cannot take the entry is named on the same line, as a note of `exc`."""
    unrecorded = _audit_refusal(root, gate, str(exc))
    if unrecorded:
        exc.add_note(f"and the audit log could not record this: {unrecorded}")


def _root(root: Path | None) -> Path:
    return (root or Path.cwd()).resolve()


@guards_app.command("run")
def run_command(
    files: Annotated[list[str] | None, typer.Argument(help="Files to check (default: what the gate selects).")] = None,
    gate: Annotated[str, typer.Option("--gate", help="commit, ci, publish or submit.")] = "ci",
    root: Annotated[
        Path | None, typer.Option("--root", help="The git checkout to check (default: here); any repository.")
    ] = None,
    output_format: Annotated[ReportFormat, typer.Option("--format", help="text, json or sarif.")] = ReportFormat.text,
    output: Annotated[Path | None, typer.Option("--output", help="Write the report here instead of stdout.")] = None,
    attest: Annotated[
        bool, typer.Option("--attest", help="After a passing ci gate on a clean tree, write the attestation.")
    ] = False,
    show_settings: Annotated[
        bool, typer.Option("--show-settings", help="Also print the effective settings and where each came from.")
    ] = False,
    settings_file: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            help="Settings to use instead of the tree's: a settings TOML, or a pyproject.toml with [tool.oracle].",
        ),
    ] = None,
    audit: Annotated[
        Path | None,
        typer.Option(
            "--audit",
            envvar="ORACLE_AUDIT",
            help="Append the decision to this audit log (a folder, or a path ending in .oracle/audit.jsonl). Default: "
            "an Oracle checkout's own log; for another repository, the log of the checkout `oracle` runs from.",
        ),
    ] = None,
) -> None:
    """Run the policies of a gate and report the findings. Nothing is written into a tree that is not an Oracle
    checkout, so a read-only repository can be checked.

    Example: oracle guards run --gate ci --format sarif --output guards.sarif
    """
    from guards.report import render_json, render_sarif, render_text, write_report
    from guards.runner import check_root, run_and_record, run_gate
    from policies.rule import ALL_GATES, Gate
    from policies.settings import oracle_checkout

    try:
        selected_gate = Gate(gate)
        if selected_gate not in ALL_GATES:  # a run-time check's name (train, serve, data), not a gate over a tree
            raise ValueError(gate)
    except ValueError as exc:
        raise UsageError(f"--gate {gate!r} is not one of: commit, ci, publish, submit") from exc
    if attest and (files or selected_gate is not Gate.ci):
        raise UsageError("--attest attests the whole tree: use it with --gate ci and no FILES")
    base = check_root(_root(root))
    audit_root, unrecorded = _audit_destination(base, audit)
    if attest and not oracle_checkout(base):
        raise UsageError(f"--attest writes the attestation into {base}, which is not an Oracle checkout: drop --attest")
    kwargs = {"settings_file": settings_file, "recognise": True}
    try:
        if audit_root is None:
            result = run_gate(base, selected_gate, files or None, **kwargs)  # type: ignore[arg-type]
            result.settings["audit"] = unrecorded
        else:
            result = run_and_record(base, selected_gate, files or None, audit_root=audit_root, **kwargs)
    except OracleError:
        raise
    except Exception as exc:  # fail closed: a check that could not run is an error of the run, named as such
        raise InternalError(f"the {gate} gate could not run: {type(exc).__name__}: {exc}") from exc
    renderers = {ReportFormat.text: render_text, ReportFormat.json: render_json, ReportFormat.sarif: render_sarif}
    write_report(renderers[output_format](result), output)
    if show_settings:  # on stderr when stdout carries a JSON or SARIF report, so that stays valid
        to_stderr = output is None and output_format is not ReportFormat.text
        typer.echo(_settings_report(base), err=to_stderr)
    if result.errors:
        raise typer.Exit(EXIT_ERROR)
    if not result.passed:
        raise typer.Exit(EXIT_FINDINGS)
    if attest:
        _attest_result(base, result, strict=False)


def _audit_destination(root: Path, audit: Path | None) -> tuple[Path | None, str]:
    """The folder whose `.oracle/audit.jsonl` takes the entry of a run over `root`: `--audit`, else an Oracle
    checkout's own, else the checkout the scanner runs from (never a foreign tree: it may be read-only, and is not
    ours to write into). None, with why, when there is none."""
    from guards.paths import AUDIT_LOG
    from guards.runner import scanner_checkout
    from policies.settings import SettingsError, oracle_checkout

    if audit is not None:
        audit = audit.expanduser().resolve()
        if audit.suffix == AUDIT_LOG.suffix:
            if audit.parts[-2:] != AUDIT_LOG.parts:
                raise SettingsError(
                    f"--audit {audit}: the log and its head live in a folder's {AUDIT_LOG}; pass that folder, or a "
                    f"path ending in {AUDIT_LOG}"
                )
            return audit.parents[1], ""
        return audit, ""
    if oracle_checkout(root):
        return root, ""
    invoking = scanner_checkout()
    if invoking is not None and invoking != root:
        return invoking, ""
    return None, "not recorded: no Oracle checkout runs this scanner; pass --audit DIR to keep a log"


def _settings_report(root: Path) -> str:
    from guards.trust import load_trust_root
    from policies.floor import describe_effective_settings

    return describe_effective_settings(root, load_trust_root(root))


def _attest_result(root: Path, result: object, *, strict: bool) -> None:
    from guards import git
    from guards.attestation import AttestationError, write_attestation
    from guards.keys import SigningKeyError, load_signing_key
    from guards.result import GateResult

    assert isinstance(result, GateResult)
    dirty = git.dirty_paths(root)
    if dirty and not strict:
        typer.echo(f"not attesting: the tree has uncommitted changes ({', '.join(dirty[:3])}); commit, then run again")
        return
    try:
        path = write_attestation(root, result, load_signing_key())
    except (AttestationError, SigningKeyError) as exc:
        _record_refusal(root, "attest", exc)
        raise
    signed = "signed" if json.loads(path.read_text())["signatures"] else "unsigned (no ORACLE_SIGNING_KEY)"
    typer.echo(f"attested {path.relative_to(root)} ({signed})")


@guards_app.command("attest")
def attest_command(root: Annotated[Path | None, typer.Option("--root")] = None) -> None:
    """Run the ci gate and, when it passes on a clean tree, write the attestation for HEAD's tree.

    Example: ORACLE_SIGNING_KEY=~/.config/oracle/signing.pem oracle guards attest
    """
    from guards.report import render_text
    from guards.runner import run_and_record
    from policies.rule import Gate

    base = _root(root)
    result = run_and_record(base, Gate.ci)
    if not result.passed:
        typer.echo(render_text(result))
        raise Refused("the ci gate did not pass: nothing attested")
    _attest_result(base, result, strict=True)


@guards_app.command("verify")
def verify_command(
    root: Annotated[Path | None, typer.Option("--root")] = None,
    require_signature: Annotated[
        bool | None, typer.Option("--require-signature/--allow-unsigned", help="Default: policies.toml.")
    ] = None,
) -> None:
    """Check the attestation against HEAD: says exactly why it fails (missing, other commit, dirty tree, lock or
    policy changed, bad signature).

    Example: oracle guards verify --require-signature
    """
    from guards.attestation import AttestationError, verify_attestation
    from guards.keys import SigningKeyError
    from policies.settings import load_settings

    base = _root(root)
    required = load_settings(base).attestation.require_signature if require_signature is None else require_signature
    try:
        verified = verify_attestation(base, require_signature=required)
    except (AttestationError, SigningKeyError) as exc:
        _record_refusal(base, "verify", exc)
        raise
    signer = f"signed by {verified.keyid}" if verified.keyid else "unsigned"
    typer.echo(f"attestation OK: {verified.path.relative_to(base)} sha256:{verified.digest} ({signer})")


@guards_app.command("rules")
def rules_command(
    output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """The rule catalog, generated from the policy modules.

    Example: oracle guards rules --format json
    """
    from policies import catalog

    rules = catalog()
    if output_format == "json":
        payload = [
            {
                "id": r.id,
                "policy": r.policy,
                "title": r.title,
                "severity": str(r.severity),
                "gates": sorted(str(g) for g in r.gates),
                "rationale": r.rationale,
                "fix": r.fix,
            }
            for r in rules
        ]
        typer.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rules)} rules")
    for column in ("id", "policy", "severity", "gates", "title"):
        table.add_column(column)
    for rule in rules:
        gates = ",".join(sorted(str(g) for g in rule.gates))
        table.add_row(rule.id, rule.policy, str(rule.severity), gates, rule.title)
    Console(width=max(140, Console().width)).print(table)


@guards_app.command("explain")
def explain_command(rule_id: Annotated[str, typer.Argument(help="A rule id such as EXT001.")]) -> None:
    """What a rule checks, why, an example of a violation and what to use instead.

    Example: oracle guards explain EXT001
    """
    from policies import find_rule

    rule = find_rule(rule_id)
    if rule is None:
        raise UsageError(f"no rule {rule_id!r}; `oracle guards rules` lists them")
    gates = ", ".join(sorted(str(g) for g in rule.gates))
    first_word = rule.title.split(" ", 1)[0]
    # "Model or weights…" reads "model or weights…" after "Reports:"; an acronym ("URL of…") keeps its case
    what = rule.title if first_word[1:2].isupper() else rule.title[0].lower() + rule.title[1:]
    typer.echo(
        f"{rule.id}: {rule.title}\n"
        f"policy: {rule.policy}    severity: {rule.severity}    gates: {gates}\n\n"
        f"## What it does\nReports: {what}.\n\n"
        f"## Why is this bad?\n{rule.rationale}\n\n"
        f"## Example\n{_indent(rule.example)}\n\n"
        f"## Use instead\n{_indent(rule.example_fix)}\n\n"
        f"## Fix\n{rule.fix}"
    )


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


@audit_app.command("verify")
def audit_verify_command(root: Annotated[Path | None, typer.Option("--root")] = None) -> None:
    """Check the audit log against its anchors: the chain, the head, entry signatures, and the head each
    attestation, submission record and provenance carries. "intact" (exit 0) only when all agree and at least one
    record anchors the log; unanchored or tampered: exit 1.

    Example: oracle guards audit verify
    """
    from guards.audit import check_log

    base = _root(root)
    report = check_log(base)
    for problem in report.problems:
        typer.echo(problem, err=True)
    verdict, *details = report.summary()
    typer.echo(verdict, err=not report.intact)
    for line in details:
        typer.echo(line)
    if not report.intact:
        # the finding goes on the log too (the next anchored record then carries it)
        first = report.problems[0] if report.problems else verdict
        unrecorded = _audit_refusal(base, "audit-verify", first, problems=len(report.problems))
        if unrecorded:
            typer.echo(f"(the finding could not be appended to the audit log: {unrecorded})", err=True)
        raise typer.Exit(EXIT_FINDINGS)
