"""Running a gate: select the files, run every policy (fail closed), apply waivers, and record the decision.

`run_gate` is pure (no writes); `run_and_record` also appends the decision to the audit log, which is what the CLI,
the Hub publisher and the cluster submitter call.
"""

from __future__ import annotations

import fnmatch
import gc
import os
import re
import stat
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from guards import git
from guards.paths import SETTINGS_FILE, WAIVERS_FILE
from guards.result import Examined, GateResult, WaiverUse
from guards.waivers import Waivers, bound_waivers, load_waivers
from policies import ALL_POLICIES
from policies import floor as floor_rules
from policies.context import Environment, RipgrepJob, ScanContext, ScanError
from policies.floor import PolicyFloor, floor_of
from policies.rule import Finding, Gate, Policy, Rule
from policies.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from guards.trust import TrustRoot

# Never scanned: version control internals and what the tools write at run time (also in .gitignore).
_ALWAYS_EXCLUDED = (".git/*", ".venv/*", ".nox/*", ".oracle/*", "*/__pycache__/*", "__pycache__/*")


def select_files(
    root: Path, gate: Gate, files: list[str] | None, settings: Settings, sizes: dict[str, int] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The regular files inside root to scan, and the paths left out with the reason (sizes, when given, are filled
    in for the selected files)."""
    root = root.resolve()
    if files:
        candidates = []
        for name in files:
            path = Path(name)
            absolute = path if path.is_absolute() else root / path
            try:
                candidates.append(absolute.relative_to(root).as_posix() if absolute.is_absolute() else name)
            except ValueError:
                candidates.append(name)
    elif gate is Gate.commit and git.is_repository(root):
        candidates = git.staged_files(root)
    elif git.is_repository(root):
        candidates = git.listed_files(root)
    else:
        candidates = _walk(root)
    selected: list[str] = []
    skipped: dict[str, str] = {}
    excluded = re.compile("|".join(fnmatch.translate(p) for p in (*_ALWAYS_EXCLUDED, *settings.scan.exclude)))
    limit = settings.scan.max_file_bytes
    root_str = str(root)
    for relative in candidates:
        if excluded.match(relative):
            continue
        location = os.path.join(root_str, relative)
        try:
            info = os.lstat(location)  # one system call decides the common case
        except FileNotFoundError:
            continue  # deleted in the work tree
        except OSError as exc:
            skipped[relative] = f"unreadable ({exc.strerror})"
            continue
        if stat.S_ISLNK(info.st_mode):
            target = Path(location).resolve()
            skipped[relative] = (
                f"symlink leaving the tree (to {target}; not followed)"
                if not target.is_relative_to(root)
                else "symlink (its target is scanned as itself)"
            )
        elif not stat.S_ISREG(info.st_mode):
            skipped[relative] = "not a regular file"
        elif relative.startswith("../") or "/../" in relative:
            skipped[relative] = "outside the root"
        elif not os.access(location, os.R_OK):
            skipped[relative] = "unreadable (permission denied)"
        else:
            if info.st_size > limit:  # still selected: weight sniffing reads its first bytes, nothing reads its text
                skipped[relative] = f"larger than scan.max_file_bytes ({limit} bytes): only its first bytes were read"
            selected.append(relative)
            if sizes is not None:
                sizes[relative] = info.st_size
    return selected, skipped


def _walk(root: Path) -> list[str]:
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in {".git", ".venv", ".nox", ".oracle", "__pycache__"}]
        for name in names:
            found.append((Path(directory) / name).relative_to(root).as_posix())
    return sorted(found)


def _defined_in(policy: Policy) -> str:
    # A rule's own definition (its examples, patterns and names) never triggers it.
    return f"policies/{policy.name}.py"


def run_gate(
    root: Path,
    gate: Gate,
    files: list[str] | None = None,
    *,
    environment_factory: Callable[[], Environment] = Environment.current,
    today: date | None = None,
    trust: TrustRoot | None = None,
) -> GateResult:
    """Run every policy that applies at `gate` over the selected files, after checking policies.toml and the waivers
    against the policy floor of the trust root (`trust`: default, the one configured for this machine). Raises
    SettingsError for a malformed policies.toml, waivers.toml or floor; a policy that fails internally becomes an
    error of the result (never a pass)."""
    root = root.resolve()
    if not root.is_dir():  # fail closed: a mistyped root has nothing to examine, which must not read as a pass
        raise SettingsError(f"{root} does not exist or is not a folder; pass the checkout to check (--root DIR)")
    if trust is None:
        from guards.trust import load_trust_root

        trust = load_trust_root(root)
    floor = floor_of(trust)
    settings = load_settings(root)
    today = today or date.today()
    waivers = load_waivers(root, today=today)
    patterns = [pattern for policy in ALL_POLICIES if policy.patterns for pattern in policy.patterns(settings)]
    early: RipgrepJob | None = None
    if not files and gate is not Gate.commit and git.is_repository(root):
        # ripgrep walks the tree (honouring .gitignore, plus force-added files) while Python selects and sniffs
        try:
            early = RipgrepJob(root, patterns, settings.scan.max_file_bytes, None, git.ignored_but_tracked(root))
        except ScanError:
            early = None  # reported below, when the pass is made again
    sizes: dict[str, int] = {}
    selected, skipped = select_files(root, gate, files, settings, sizes)
    ctx = ScanContext(
        root=root,
        gate=gate,
        settings=settings,
        files=selected,
        environment_factory=environment_factory,
        verify_provenance=_lazy_provenance_verifier(root),
        sizes=sizes,
    )
    rules = [rule for policy in ALL_POLICIES for rule in policy.rules if gate in rule.gates]
    rules += [rule for rule in floor_rules.RULES if gate in rule.gates]
    result = GateResult(gate=gate, root=str(root), rules=rules, fail_on=settings.scan.fail_on)
    result.floor = trust.label
    waivers = _check_floor(root, gate, settings, floor, trust, waivers, today, result)
    try:
        ctx.prefetch(patterns, early)
    except ScanError as exc:
        result.errors.append(str(exc))
        return result
    gc.disable()  # the scan allocates many short-lived objects; a short-lived CLI need not collect meanwhile
    try:
        _run_policies(ctx, gate, waivers, skipped, result)
    finally:
        gc.enable()
    result.expired_waivers = [
        f"{w.rule} {w.selector} (owner {w.owner}) expired on {w.expires.isoformat()}" for w in waivers.expired
    ]
    result.stale_waivers = [
        f"{w.rule} {w.selector} (owner {w.owner}) matches no file of the tree: remove it" for w in waivers.stale
    ]
    return result


def _check_floor(
    root: Path,
    gate: Gate,
    settings: Settings,
    floor: PolicyFloor,
    trust: TrustRoot,
    waivers: Waivers,
    today: date,
    result: GateResult,
) -> Waivers:
    """TRU001 for settings looser than the floor, TRU002 for waivers outside its bounds; the waivers that may apply.
    Cheap (two small files and, when a path waiver needs counting, the tree's file list): it runs at every gate."""
    from guards.trust import WAIVER_APPROVAL

    result.findings.extend(floor_rules.check_settings(root, settings, floor, trust.label))
    bounded = bound_waivers(waivers, floor.waivers, lambda: _tree_files(root), trust.keys_for(WAIVER_APPROVAL), today)
    waivers_file = WAIVERS_FILE.as_posix()
    for waiver, problem in bounded.refused:
        line = bounded.lines.get(waiver, 0)
        result.findings.append(
            floor_rules.WAIVER_OUT_OF_BOUNDS.finding(
                waivers_file,
                line,
                1 if line else 0,
                f"waiver of {waiver.rule} for {waiver.selector} (owner {waiver.owner}) does not apply: {problem}",
                f"{waiver.rule} {waiver.selector} {waiver.created} {waiver.expires}",
            )
        )
    result.examined[floor_rules.NAME] = Examined(
        [name for name in (SETTINGS_FILE.as_posix(), waivers_file) if (root / name).is_file()], {}
    )
    return bounded


def _tree_files(root: Path) -> list[str]:
    """Every file of the tree a waiver's glob is counted against (whatever the gate selects to scan)."""
    return git.listed_files(root) if git.is_repository(root) else _walk(root)


def _lazy_provenance_verifier(root: Path) -> Callable[[str], bool]:
    """Signature checks import cryptography; most runs find no weights file and never need it."""
    verifier: Callable[[str], bool] | None = None

    def verify(relative: str) -> bool:
        nonlocal verifier
        if verifier is None:
            from guards.provenance import provenance_verifier

            verifier = provenance_verifier(root)
        return verifier(relative)

    return verify


def _run_policies(ctx: ScanContext, gate: Gate, waivers: Waivers, skipped: dict[str, str], result: GateResult) -> None:
    for policy in ALL_POLICIES:
        try:
            outcome = policy.check(ctx)
        except ScanError as exc:
            result.errors.append(f"{policy.name}: {exc}")
            continue
        except Exception as exc:  # fail closed: a check that raises is an error, never a pass
            result.errors.append(f"{policy.name}: the check failed internally: {type(exc).__name__}: {exc}")
            continue
        result.examined[policy.name] = Examined(outcome.examined, {**skipped, **outcome.skipped})
        own_file = _defined_in(policy)
        for finding in outcome.findings:
            rule = policy.rule(finding.rule_id)
            if gate not in rule.gates or finding.path == own_file:
                continue
            _apply_waivers(finding, rule, waivers, result)


def _apply_waivers(finding: Finding, rule: Rule, waivers: Waivers, result: GateResult) -> None:
    # Findings about the running environment have no file to name; a waiver could only ever be a blanket for them.
    waiver = waivers.match(finding) if rule.waivable and finding.path else None
    if waiver is None:
        result.findings.append(finding)
        return
    use = WaiverUse(
        rule_id=waiver.rule,
        reason=waiver.reason,
        owner=waiver.owner,
        expires=waiver.expires.isoformat(),
        selector=waiver.selector,
        created=waiver.created.isoformat(),
        fingerprints=(finding.fingerprint,),
    )
    result.waived.append((finding, use))


def run_and_record(root: Path, gate: Gate, files: list[str] | None = None, **kwargs: object) -> GateResult:
    """run_gate, then one audit-log entry for the decision (who, when, gate, commit, result, waivers used)."""
    from guards.audit import append_entry

    result = run_gate(root, gate, files, **kwargs)  # type: ignore[arg-type]
    commit = git.head_commit_or_none(root)
    waivers_used = sorted({f"{use.rule_id} {use.selector} ({use.owner})" for _, use in result.waived})
    append_entry(
        root,
        gate=str(gate),
        result="pass" if result.passed else "fail",
        commit=commit,
        waivers=waivers_used,
        details={"findings": len(result.findings), "errors": len(result.errors), "waived": len(result.waived)},
    )
    return result
