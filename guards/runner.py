"""Running a gate: select the files, run every policy (fail closed), apply waivers, and record the decision.

`run_gate` is pure (no writes); `run_and_record` also appends the decision to the audit log, which is what the CLI,
the Hub publisher and the cluster submitter call.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
import os
import re
import stat
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from guards import git
from guards.paths import AUDIT_LOG, SETTINGS_FILE, WAIVERS_FILE
from guards.result import Examined, GateResult, WaiverUse
from guards.waivers import Waivers, bound_waivers, load_waivers
from policies import ALL_POLICIES
from policies import floor as floor_rules
from policies.context import Environment, RipgrepJob, ScanContext, ScanError
from policies.floor import PolicyFloor, floor_of
from policies.rule import Finding, Gate, Policy, Rule
from policies.settings import Settings, SettingsError, resolve_settings

if TYPE_CHECKING:
    from guards.trust import TrustRoot

# Never scanned unless tracked: version control internals and what the tools write at run time (also in .gitignore).
# A file that git tracks there is part of the tree like any other and is scanned.
_RUN_TIME = (".venv/*", ".nox/*", ".oracle/*", "*/__pycache__/*", "__pycache__/*")
_RUN_TIME_DIRS = frozenset({".git", ".venv", ".nox", ".oracle", "__pycache__"})
# A link into a model hub's download cache is a weights reference, whatever the link is called.
_HUB_CACHES = re.compile(r"huggingface/hub|\.cache/huggingface|\.cache/torch|torch/hub|/models--[^/]+--", re.IGNORECASE)


def select_files(
    root: Path, gate: Gate, files: list[str] | None, settings: Settings, sizes: dict[str, int] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The regular files inside root to scan, and the paths left out with the reason (sizes, when given, are filled
    in for the selected files). Every path left out is reported by the gate (a finding), never passed over."""
    root = root.resolve()
    repository = git.is_repository(root)
    if files:
        candidates = []
        for name in files:
            path = Path(name)
            absolute = path if path.is_absolute() else root / path
            try:
                candidates.append(absolute.relative_to(root).as_posix() if absolute.is_absolute() else name)
            except ValueError:
                candidates.append(name)
    elif gate is Gate.commit and repository:
        candidates = git.staged_files(root)
    elif repository:
        candidates = git.listed_files(root)
    else:
        candidates = _walk(root)
    selected: list[str] = []
    skipped: dict[str, str] = {}
    excluded = (
        re.compile("|".join(fnmatch.translate(p) for p in settings.scan.exclude)) if settings.scan.exclude else None
    )
    run_time = re.compile("|".join(fnmatch.translate(p) for p in (".git/*", *_RUN_TIME)))
    tracked: set[str] | None = None
    limit = settings.scan.max_file_bytes
    root_str = str(root)
    listed = set(candidates)
    for relative in candidates:
        if excluded is not None and excluded.match(relative):
            continue
        if run_time.match(relative):
            if relative.startswith(".git/") or not repository:
                continue
            if tracked is None:
                tracked = _tracked(root)
            if relative not in tracked:
                continue  # what the tools wrote at run time; a tracked file there is scanned
        location = os.path.join(root_str, relative)
        try:
            info = os.lstat(location)  # one system call decides the common case
        except FileNotFoundError:
            continue  # deleted in the work tree
        except OSError as exc:
            skipped[relative] = f"unreadable ({exc.strerror})"
            continue
        if stat.S_ISLNK(info.st_mode):
            link = os.readlink(location)
            target = Path(location).resolve()
            inside = target.relative_to(root).as_posix() if target.is_relative_to(root) else None
            if inside is not None and not inside.startswith(".git/") and (inside in listed or target.is_dir()):
                skipped[relative] = "symlink (its target is scanned as itself)"
            elif inside is not None:  # into .git (git-annex objects) or to a file nothing selects: never read
                annex = "/annex/objects/" in f"/{inside}"
                what = "a git-annex object (content kept outside git: a weights reference)" if annex else "not scanned"
                skipped[relative] = f"symlink to {inside}, {what}"
            elif _HUB_CACHES.search(link) or _HUB_CACHES.search(str(target)):
                skipped[relative] = f"symlink into a model hub cache (to {link}): a weights reference"
            else:
                skipped[relative] = f"symlink leaving the tree (to {link}; not followed)"
        elif stat.S_ISDIR(info.st_mode):
            skipped[relative] = "a folder where git tracks one entry (a submodule, or a file now a folder): unexamined"
        elif not stat.S_ISREG(info.st_mode):
            skipped[relative] = "not a regular file"
        elif relative.startswith("../") or "/../" in relative:
            skipped[relative] = "outside the root"
        elif not os.access(location, os.R_OK):
            skipped[relative] = "unreadable (permission denied)"
        else:
            if info.st_size > limit:  # still selected: weight sniffing reads it, the coverage policy reports the text
                skipped[relative] = f"larger than scan.max_file_bytes ({limit} bytes): its text was not analysed"
            selected.append(relative)
            if sizes is not None:
                sizes[relative] = info.st_size
    return selected, skipped


def _tracked(root: Path) -> set[str]:
    """Every path in git's index (what the tree holds, whether or not .gitignore would exclude it)."""
    return set(git._nul_separated(git._git(root, "ls-files", "-z", "--cached")))


def _left_out_is_reported(relative: str, why: str) -> bool:
    """Whether a path the selection left out needs a finding: all but a link whose target is scanned itself, and
    files over the size limit (selected all the same; the coverage policy reports their text)."""
    return not why.startswith(("symlink (its target", "larger than"))


def _walk(root: Path) -> list[str]:
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _RUN_TIME_DIRS]
        for name in names:
            found.append((Path(directory) / name).relative_to(root).as_posix())
    return sorted(found)


def _defined_in(policy: Policy) -> str:
    # A rule's own definition (its examples, patterns and names) never triggers it.
    return f"policies/{policy.name}.py"


class RootError(SettingsError):
    """The --root given cannot be a tree to judge (missing, empty, not a git repository)."""


def check_root(root: Path) -> Path:
    """The resolved root of a run asked for by a person (the CLI): a folder holding files, in a git repository. A
    mistyped or wrong root has nothing to examine, which must never read as a pass: RootError with one clear line."""
    root = root.resolve()
    if not root.is_dir():
        raise RootError(f"{root} does not exist or is not a folder; pass the checkout to check (--root DIR)")
    try:
        empty = next(root.iterdir(), None) is None
    except OSError as exc:
        raise RootError(f"{root} cannot be listed ({exc.strerror}); pass a checkout you can read") from exc
    if empty:
        raise RootError(f"{root} is empty: there is nothing to check; pass the checkout to check (--root DIR)")
    if not git.is_repository(root):
        raise RootError(
            f"{root} is not a git repository: the gate checks what git tracks; run `git init && git add -A` there, "
            "or point --root at the checkout"
        )
    return root


def scanner_checkout() -> Path | None:
    """The checkout the running `oracle` code belongs to (the invoking project), or None for an installed copy."""
    import oracle

    top = Path(oracle.__file__).resolve().parents[1]
    return top if (top / ".git").exists() and (top / "pyproject.toml").is_file() else None


def runs_from(root: Path, project_venv: str) -> bool:
    """Whether the scanner runs from `root`: its code is that checkout's, or its interpreter is that tree's venv.
    Only then is the running environment the scanned tree's to judge."""
    return scanner_checkout() == root.resolve() or Path(sys.prefix).resolve() == (root / project_venv).resolve()


def run_gate(
    root: Path,
    gate: Gate,
    files: list[str] | None = None,
    *,
    environment_factory: Callable[[], Environment] | None = None,
    today: date | None = None,
    trust: TrustRoot | None = None,
    settings_file: Path | None = None,
    recognise: bool = False,
) -> GateResult:
    """Run every policy that applies at `gate` over the selected files, after checking policies.toml and the waivers
    against the policy floor of the trust root (`trust`: default, the one configured for this machine). Raises
    SettingsError for a malformed policies.toml, waivers.toml or floor; a policy that fails internally becomes an
    error of the result (never a pass).

    `settings_file`: settings to use instead of the tree's (see policies.settings.resolve_settings). `recognise`
    (the CLI): a tree that is not an Oracle checkout gets generic defaults and none of the checks that assume this
    project's layout; False treats every tree as ours (in-process callers, the small trees tests write).
    `environment_factory`: the environment the venv policy judges; by default the running one, and only when the
    scanner runs from `root` (another tree's environment is not the scanner's)."""
    root = root.resolve()
    if not root.is_dir():  # fail closed: a mistyped root has nothing to examine, which must not read as a pass
        raise RootError(f"{root} does not exist or is not a folder; pass the checkout to check (--root DIR)")
    resolved = resolve_settings(root, settings_file, recognise=recognise)
    settings = resolved.settings
    if trust is None:
        from guards.trust import load_trust_root

        trust = load_trust_root(root)
    floor = floor_of(trust)
    today = today or date.today()
    waivers = load_waivers(root, today=today)
    judge_environment = environment_factory is not None or runs_from(root, settings.venv.project_venv)
    if environment_factory is None:
        environment_factory = Environment.current if judge_environment else _unjudged(root, settings)
    patterns = [pattern for policy in ALL_POLICIES if policy.patterns for pattern in policy.patterns(settings)]
    early: RipgrepJob | None = None
    if not files and gate is not Gate.commit and git.is_repository(root):
        # ripgrep walks the tree (honouring .gitignore, plus force-added files) while Python selects and sniffs
        try:
            early = RipgrepJob(root, patterns, settings.scan.max_file_bytes, None)  # the walk starts at once
            try:
                early.add(git.ignored_but_tracked(root))  # then the tracked files it skips, once git has said
            except BaseException:
                early.stop()
                raise
        except ScanError:
            early = None  # reported below, when the pass is made again
    sizes: dict[str, int] = {}
    selected, skipped = select_files(root, gate, files, settings, sizes)
    if not files and gate is not Gate.commit and not selected and not skipped and not _tree_files(root):
        # a tree with no file at all (settings that exclude every file are judged by the floor: TRU001)
        raise RootError(f"{root} holds no file to check; pass the checkout to check (--root DIR)")
    ctx = ScanContext(
        root=root,
        gate=gate,
        settings=settings,
        files=selected,
        environment_factory=environment_factory,
        verify_provenance=_lazy_provenance_verifier(root),
        sizes=sizes,
        left_out=skipped,
    )
    for relative, why in skipped.items():
        if _left_out_is_reported(relative, why):
            ctx.not_analysed(relative, why)
    rules = [rule for policy in ALL_POLICIES for rule in policy.rules if gate in rule.gates]
    rules += [rule for rule in floor_rules.RULES if gate in rule.gates]
    result = GateResult(gate=gate, root=str(root), rules=rules, fail_on=settings.scan.fail_on)
    result.floor = trust.label
    result.settings = resolved.as_json()
    if not judge_environment:
        result.settings["environment"] = (
            f"not judged: the scanner runs from {sys.prefix}, not from {root} (run the gate with that tree's own "
            "interpreter to judge its environment)"
        )
    waivers = _check_floor(root, gate, settings, floor, trust, waivers, today, result, judge=resolved.oracle_checks)
    try:
        ctx.prefetch(patterns, early)
    except ScanError as exc:
        result.errors.append(str(exc))
        return result
    policies = [p for p in ALL_POLICIES if resolved.oracle_checks or p.name not in ORACLE_ONLY_POLICIES]
    gc.disable()  # the scan allocates many short-lived objects; a short-lived CLI need not collect meanwhile
    try:
        _run_policies(
            ctx, gate, waivers, skipped, result, policies, judge_environment, foreign=not resolved.oracle_checkout
        )
    finally:
        gc.enable()
    result.expired_waivers = [
        f"{w.rule} {w.selector} (owner {w.owner}) expired on {w.expires.isoformat()}" for w in waivers.expired
    ]
    result.stale_waivers = [
        f"{w.rule} {w.selector} (owner {w.owner}) matches no file of the tree: remove it" for w in waivers.stale
    ]
    return result


# Policies that judge this project's own layout (its model package and flagship config): they apply to an Oracle
# checkout, or a tree whose settings switch them on (oracle_checks = true).
ORACLE_ONLY_POLICIES = frozenset({"architecture"})


def _unjudged(root: Path, settings: Settings) -> Callable[[], Environment]:
    """An environment that stands for the scanned tree's own venv, described with nothing in it; the venv policy's
    findings about the environment are then dropped (see _environment_rules)."""
    return lambda: Environment(root / settings.venv.project_venv, Path(sys.base_prefix), {}, None)


def _environment_rules() -> frozenset[str]:
    """The venv policy's rules about the running interpreter (not about files of the tree)."""
    from policies import venv

    return frozenset(rule.id for rule in venv.ENVIRONMENT_RULES)


# Fix hints that name this project's own modules, said for a repository that is not ours.
_FOREIGN_FIXES = {
    "EXT001": "Remove the reference, or load weights your project trained itself; repo ids in your own Hub "
    "namespaces are allowed once declared (external_weights.allowed_namespaces in --settings, [tool.oracle] of "
    "pyproject.toml or policies/policies.toml).",
    "EXT004": "Define the model in your own code instead of importing a foreign implementation.",
    "EXT006": "Use safetensors, or torch.load(..., weights_only=True).",
}


def _check_floor(
    root: Path,
    gate: Gate,
    settings: Settings,
    floor: PolicyFloor,
    trust: TrustRoot,
    waivers: Waivers,
    today: date,
    result: GateResult,
    *,
    judge: bool = True,
) -> Waivers:
    """TRU001 for settings looser than the floor, TRU002 for waivers outside its bounds; the waivers that may apply.
    Cheap (two small files and, when a path waiver needs counting, the tree's file list): it runs at every gate."""
    from guards.trust import WAIVER_APPROVAL

    if judge:  # the floor is this project's minimum policy: it judges the settings of a tree that is ours
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


def _run_policies(
    ctx: ScanContext,
    gate: Gate,
    waivers: Waivers,
    skipped: dict[str, str],
    result: GateResult,
    policies: list[Policy],
    judge_environment: bool,
    *,
    foreign: bool,
) -> None:
    unjudged = frozenset() if judge_environment else _environment_rules()
    for policy in policies:
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
            if gate not in rule.gates or finding.path == own_file or finding.rule_id in unjudged:
                continue
            if foreign and finding.rule_id in _FOREIGN_FIXES:
                finding = dataclasses.replace(finding, fix=_FOREIGN_FIXES[finding.rule_id])
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


def run_and_record(
    root: Path, gate: Gate, files: list[str] | None = None, *, audit_root: Path | None = None, **kwargs: object
) -> GateResult:
    """run_gate, then one audit-log entry for the decision (who, when, gate, commit, result, waivers used), appended
    to the log of `audit_root` (default: the scanned checkout's own, `.oracle/audit.jsonl`)."""
    from guards.audit import append_entry

    result = run_gate(root, gate, files, **kwargs)  # type: ignore[arg-type]
    commit = git.head_commit_or_none(root)
    waivers_used = sorted({f"{use.rule_id} {use.selector} ({use.owner})" for _, use in result.waived})
    details: dict[str, object] = {
        "findings": len(result.findings),
        "errors": len(result.errors),
        "waived": len(result.waived),
    }
    if audit_root is not None and audit_root.resolve() != root.resolve():
        details["root"] = str(root.resolve())  # the entry lives in another project's log: say which tree it judged
    append_entry(
        audit_root or root,
        gate=str(gate),
        result="pass" if result.passed else "fail",
        commit=commit,
        waivers=waivers_used,
        details=details,
    )
    result.settings["audit"] = str((audit_root or root).resolve() / AUDIT_LOG)
    return result
