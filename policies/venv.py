"""Policy `venv`: code runs only in the project's virtualenv, built from requirements.lock, and the lock is whole.

Rules VENV001-VENV008. The environment rules look at the running interpreter (a ScanContext's Environment) and, through
policies/venv_integrity.py (the same code the training job's start runs), at its files; the lock rules at
requirements.lock and its declared input. Environment findings have no path ("") and line 0, like every finding
about the environment rather than the tree.
"""

from __future__ import annotations

from pathlib import Path

from policies.context import ScanContext
from policies.lockfile import (
    Lock,
    LockEntry,
    declared_input_digest,
    declared_requirements,
    normalise_name,
    parse_lock,
)
from policies.rule import ALL_GATES, Gate, Policy, PolicyResult, Rule, Severity
from policies.venv_integrity import Kind, lock_mismatches

NAME = "venv"
_LOCK_GATES = frozenset({Gate.ci, Gate.publish, Gate.submit, Gate.commit})

OUTSIDE_VENV = Rule(
    id="VENV001",
    policy=NAME,
    title="Running outside a virtualenv",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Packages from the system interpreter are unpinned and unhashed: what ran cannot be reproduced or "
    "proven to be what requirements.lock says.",
    fix="Run through `make guards` / `make test`, which build .venv from requirements.lock, or call .venv/bin/oracle.",
    example="$ python3 -m oracle.cli guards run    # the system python3",
    example_fix="$ make guards                       # or: .venv/bin/oracle guards run",
)
FOREIGN_VENV = Rule(
    id="VENV002",
    policy=NAME,
    title="Running in a virtualenv that is not the project's .venv",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Only .venv is built from requirements.lock; another virtualenv (a conda env, nox's own .nox/*) can "
    "hold anything.",
    fix="Use the project's .venv (`make guards` builds it); nox sessions run with python=False inside it.",
    example="$ ~/envs/scratch/bin/oracle guards run",
    example_fix="$ .venv/bin/oracle guards run",
)
UNLOCKED_DISTRIBUTION = Rule(
    id="VENV003",
    policy=NAME,
    title="Installed distributions differ from requirements.lock",
    severity=Severity.error,
    gates=frozenset({Gate.ci, Gate.publish, Gate.submit}),
    rationale="A package installed by hand, missing, or at another version means the gate ran on code the lock "
    "does not describe.",
    fix="Rebuild the environment from the lock: `make clean && make guards` (or `make lock` if the change is wanted).",
    example="$ .venv/bin/pip install requests     # not in requirements.lock",
    example_fix="add it to pyproject.toml, then `make lock` and `make guards`",
)
UNHASHED_PIN = Rule(
    id="VENV004",
    policy=NAME,
    title="Lock entry without a hash or an exact pin",
    severity=Severity.error,
    gates=_LOCK_GATES,
    rationale="Without --hash, pip installs whatever file the index serves under that version; without ==, any "
    "version at all.",
    fix="Regenerate the lock with hashes: `make lock` (uv pip compile --generate-hashes).",
    example="numpy==2.4.6",
    example_fix="numpy==2.4.6 \\\n    --hash=sha256:<digest of each file>",
)
STALE_LOCK = Rule(
    id="VENV005",
    policy=NAME,
    title="requirements.lock is older than its declared input",
    severity=Severity.error,
    gates=_LOCK_GATES,
    rationale="pyproject.toml declares what the project needs; a lock compiled before the last change to it "
    "installs something else.",
    fix="Run `make lock`, which compiles the lock from pyproject.toml and stamps the digest of its input.",
    example='pyproject.toml gains "httpx>=0.27" but requirements.lock is not regenerated',
    example_fix="$ make lock && git add requirements.lock pyproject.toml",
)
MODIFIED_INSTALLATION = Rule(
    id="VENV006",
    policy=NAME,
    title="An installed file differs from its distribution's RECORD",
    severity=Severity.error,
    gates=frozenset({Gate.ci, Gate.publish, Gate.submit}),
    rationale="A distribution at the locked version whose files were edited afterwards runs code the lock's hashes "
    "never covered; the name and version alone prove nothing. Bytecode caches Python would load instead of a source "
    "count as that source's files.",
    fix="Reinstall the environment from the lock: `make clean && make venv`.",
    example="$ sed -i 's/return x/return y/' .venv/lib/python3.11/site-packages/rich/text.py",
    example_fix="$ make clean && make venv",
)
UNRECORDED_CODE = Rule(
    id="VENV007",
    policy=NAME,
    title="Importable code in the venv that no installed distribution installed",
    severity=Severity.error,
    gates=frozenset({Gate.ci, Gate.publish, Gate.submit}),
    rationale="A module, extension, `.pth` or sitecustomize dropped into site-packages runs at import or at start-up "
    "without being in any RECORD, so without the lock's hashes behind it.",
    fix="Delete the file, or add what it belongs to to pyproject.toml, `make lock`, and rebuild with `make venv`.",
    example="$ cp ~/patch.py .venv/lib/python3.11/site-packages/sitecustomize.py",
    example_fix="$ rm .venv/lib/python3.11/site-packages/sitecustomize.py",
)
PATH_OUTSIDE_VENV = Rule(
    id="VENV008",
    policy=NAME,
    title="The import path reaches outside the venv",
    severity=Severity.error,
    gates=frozenset({Gate.ci, Gate.publish, Gate.submit}),
    rationale="A `.pth` line, a PYTHONPATH or sys.path entry naming another environment's site-packages (or any "
    "folder but the venv, the standard library and the checkout) imports packages the lock never saw.",
    fix="Unset PYTHONPATH (or point it at the checkout only) and remove `.pth` files that name folders outside .venv.",
    example="$ PYTHONPATH=~/envs/scratch/lib/python3.11/site-packages make guards",
    example_fix="$ make guards",
)
RULES = (
    OUTSIDE_VENV,
    FOREIGN_VENV,
    UNLOCKED_DISTRIBUTION,
    UNHASHED_PIN,
    STALE_LOCK,
    MODIFIED_INSTALLATION,
    UNRECORDED_CODE,
    PATH_OUTSIDE_VENV,
)
_RULE_OF_KIND = {Kind.modified: MODIFIED_INSTALLATION, Kind.unrecorded: UNRECORDED_CODE, Kind.path: PATH_OUTSIDE_VENV}


def check(ctx: ScanContext) -> PolicyResult:
    """Environment rules first, then the lock; a checkout without a lock or policies.toml has not opted in."""
    result = PolicyResult()
    settings = ctx.settings.venv
    env = ctx.environment
    project_venv = (ctx.root / settings.project_venv).resolve()
    if env.prefix.resolve() == env.base_prefix.resolve():
        result.findings.append(
            OUTSIDE_VENV.finding("", 0, 0, f"running in {env.prefix}, which is not a virtualenv", str(project_venv))
        )
    elif env.prefix.resolve() != project_venv:
        result.findings.append(
            FOREIGN_VENV.finding(
                "", 0, 0, f"running in the virtualenv {env.prefix}, not the project's {project_venv}", str(env.prefix)
            )
        )

    lock_path, input_path = settings.lock, settings.declared_input
    lock_file = ctx.root / lock_path
    if not lock_file.exists():
        if (ctx.root / "policies" / "policies.toml").exists():  # the checkout opted into the policy: it needs a lock
            result.findings.append(UNHASHED_PIN.finding(lock_path, 0, 0, f"{lock_path} does not exist", "missing-lock"))
        else:
            result.skipped[lock_path] = "no requirements.lock and no policies.toml: the venv policy does not apply"
            result.findings.clear()
        return result
    lock_touched = ctx.gate is not Gate.commit or bool({lock_path, input_path} & set(ctx.files))
    lock = parse_lock(lock_file.read_text(encoding="utf-8"))
    if lock_touched:
        result.examined.append(lock_path)
        for entry in lock.entries.values():
            if not entry.hashes:
                result.findings.append(
                    UNHASHED_PIN.finding(
                        lock_path, entry.line, 1, f"{entry.name}=={entry.version} has no --hash", entry.name
                    )
                )
        for number, text in lock.unpinned:
            result.findings.append(
                UNHASHED_PIN.finding(lock_path, number, 1, f"{text!r} is not pinned with == and hashes", text)
            )
        _check_stale(ctx, lock, lock_path, Path(input_path), result)

    if ctx.gate in UNLOCKED_DISTRIBUTION.gates and not result.findings_for(OUTSIDE_VENV, FOREIGN_VENV):
        _check_installed(ctx, lock.entries, lock_path, result)
    return result


def _check_stale(ctx: ScanContext, lock: Lock, lock_path: str, input_path: Path, result: PolicyResult) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    pyproject = ctx.root / input_path
    if not pyproject.exists():
        return
    result.examined.append(str(input_path))
    extras = ctx.settings.venv.lock_extras
    expected = declared_input_digest(pyproject, extras)
    if lock.stamp != expected:
        why = "has no declared-input stamp" if lock.stamp is None else "was compiled from another declared input"
        result.findings.append(
            STALE_LOCK.finding(lock_path, 1, 1, f"{lock_path} {why} than {input_path} declares now", "stamp")
        )
    requirements, _ = declared_requirements(pyproject, extras)
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        entry = lock.entries.get(normalise_name(requirement.name))
        if entry is None:
            message = f"{input_path} requires {text!r}, which {lock_path} does not pin"
        elif not requirement.specifier.contains(entry.version, prereleases=True):
            message = f"{input_path} requires {text!r}, {lock_path} pins {entry.version}"
        else:
            continue
        result.findings.append(STALE_LOCK.finding(lock_path, entry.line if entry else 0, 1, message, text))


def _check_installed(ctx: ScanContext, entries: dict[str, LockEntry], lock_path: str, result: PolicyResult) -> None:
    env = ctx.environment
    allowed = ctx.settings.venv.allow_unlocked
    locked = {name: (entry.version, entry.line) for name, entry in entries.items()}
    normalised = {normalise_name(name) for name in allowed}
    for line, message, matched in lock_mismatches(env.distributions, locked, normalised, lock_path):
        result.findings.append(UNLOCKED_DISTRIBUTION.finding(lock_path, line, 1 if line else 0, message, matched))
    # Recompiling every bytecode cache costs about 30 s on this project's venv: done where a result leaves the
    # machine (publish, submit; the job's start calls verify_venv, which always does it), not on each `make guards`.
    bytecode = ctx.gate is not Gate.ci
    for problem in env.installation_problems(ctx.root, locked, allowed, lock_path, bytecode):
        rule = _RULE_OF_KIND.get(problem.kind)
        if rule is not None:  # Kind.lock repeats what the distributions above already said
            result.findings.append(rule.finding("", 0, 0, problem.message, problem.subject))


POLICY = Policy(NAME, RULES, check)
