"""Policy `venv`: code runs only in the project's virtualenv, built from this machine's lock, and the locks are whole.

Rules VENV001-VENV008, VENV012 and VENV013. The environment rules look at the running interpreter (a ScanContext's
Environment) and, through policies/venv_integrity.py (the same code the training job's start runs), at its files; the
lock rules at the two locks (requirements.lock for machines without a GPU, requirements-gpu.lock for machines with an
NVIDIA driver: policies/lockfile.py says which a machine installs) and their declared input. Environment findings
have no path ("") and line 0, like every finding about the environment rather than the tree.
"""

from __future__ import annotations

import ast
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from policies.context import ScanContext
from policies.lockfile import (
    ACCELERATOR_ENV,
    AcceleratorError,
    Lock,
    LockEntry,
    declared_input_digest,
    declared_requirements,
    lock_names,
    machine_lock,
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
    example="$ python3 -m oracle_cli.app guards run    # the system python3",
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
NOT_A_CUDA_LOCK = Rule(
    id="VENV012",
    policy=NAME,
    title="requirements-gpu.lock is not requirements.lock with torch's CUDA build",
    severity=Severity.error,
    gates=_LOCK_GATES,
    rationale="A machine with an NVIDIA driver installs requirements-gpu.lock: it must hold torch's CUDA build (no "
    "`+cpu` local version) with its nvidia-* libraries, and otherwise the same pins as requirements.lock, or GPU jobs "
    "train on CPU, or run code CI never tested.",
    fix="Regenerate both locks with `make lock` (the GPU lock is compiled from PyPI with requirements.lock's pins as "
    "constraints).",
    example="torch==2.13.0+cpu \\\n    --hash=sha256:<digest>    # in requirements-gpu.lock",
    example_fix="$ make lock    # torch==2.13.0 from PyPI, nvidia-cublas, nvidia-nccl-cu13, ...",
)
ACCELERATOR_OVERRIDDEN = Rule(
    id="VENV013",
    policy=NAME,
    title="ORACLE_ACCELERATOR holds this machine to the other lock",
    severity=Severity.warning,
    gates=ALL_GATES,
    rationale="The venv of a machine with an NVIDIA driver is built from requirements-gpu.lock, elsewhere from "
    "requirements.lock; ORACLE_ACCELERATOR=cpu|cuda overrides that choice, so the report says so. A cluster job is "
    "held to the lock of the GPUs it requests, whatever the submitting shell sets.",
    fix="Unset ORACLE_ACCELERATOR unless the other lock is wanted on purpose (a CPU-only check on a GPU machine, a "
    "CUDA venv built on a login node for SLURM jobs).",
    example="$ ORACLE_ACCELERATOR=cpu make guards    # on a machine with an NVIDIA driver",
    example_fix="$ make guards",
)
RULES: tuple[Rule, ...] = (
    OUTSIDE_VENV,
    FOREIGN_VENV,
    UNLOCKED_DISTRIBUTION,
    UNHASHED_PIN,
    STALE_LOCK,
    MODIFIED_INSTALLATION,
    UNRECORDED_CODE,
    PATH_OUTSIDE_VENV,
    NOT_A_CUDA_LOCK,
    ACCELERATOR_OVERRIDDEN,
)
_RULE_OF_KIND = {Kind.modified: MODIFIED_INSTALLATION, Kind.unrecorded: UNRECORDED_CODE, Kind.path: PATH_OUTSIDE_VENV}
# The rules about the running interpreter rather than files of the tree: a scan of another repository drops them.
ENVIRONMENT_RULES: tuple[Rule, ...] = (
    OUTSIDE_VENV, FOREIGN_VENV, UNLOCKED_DISTRIBUTION, MODIFIED_INSTALLATION, UNRECORDED_CODE, PATH_OUTSIDE_VENV,
    ACCELERATOR_OVERRIDDEN,
)  # fmt: skip


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
    if judges_tree(ctx):
        check_tree(ctx, result)
    if not opted_in(ctx):
        result.skipped[lock_path] = "no requirements.lock and no policies.toml: the venv policy does not apply"
        result.findings[:] = [finding for finding in result.findings if finding.rule_id in _TREE_RULE_IDS]
        return result
    if not lock_file.exists():  # the checkout opted into the policy: it needs a lock
        result.findings.append(UNHASHED_PIN.finding(lock_path, 0, 0, f"{lock_path} does not exist", "missing-lock"))
        return result
    # exactly two locks: the CPU one the settings name (held equal by the policy floor) and the GPU one beside it
    locks = {path: parse_lock((ctx.root / path).read_text(encoding="utf-8"))
             for path in lock_names(lock_path).values() if (ctx.root / path).is_file()}  # fmt: skip
    for path, lock in locks.items():
        if ctx.gate is not Gate.commit or bool({path, input_path} & set(ctx.files)):
            _check_lock(ctx, lock, path, Path(input_path), result)
            if path != lock_path:
                _check_gpu_lock(locks[lock_path], lock_path, lock, path, result)

    if ctx.gate in UNLOCKED_DISTRIBUTION.gates and not result.findings_for(OUTSIDE_VENV, FOREIGN_VENV):
        machine = _machine_lock(ctx, lock_path, result)
        if machine is not None:
            _check_installed(ctx, locks[machine].entries, machine, result)
    return result


def _check_lock(ctx: ScanContext, lock: Lock, lock_path: str, input_path: Path, result: PolicyResult) -> None:
    """VENV004 and VENV005 over one lock."""
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
    _check_stale(ctx, lock, lock_path, input_path, result)


def _check_gpu_lock(cpu: Lock, cpu_path: str, gpu: Lock, gpu_path: str, result: PolicyResult) -> None:
    """VENV012: the GPU lock is the CPU lock with torch's CUDA build (and what that build depends on)."""

    def flag(line: int, message: str, matched: str) -> None:
        result.findings.append(NOT_A_CUDA_LOCK.finding(gpu_path, line, 1 if line else 0, message, matched))

    torch = gpu.entries.get("torch")
    if torch is None:
        flag(0, f"{gpu_path} does not pin torch", "torch")
    elif "+" in torch.version:
        flag(
            torch.line, f"{gpu_path} pins torch {torch.version}, a local build, not the registry's CUDA build", "torch"
        )
    elif (cpu_torch := cpu.entries.get("torch")) and torch.version != cpu_torch.version.split("+")[0]:
        flag(torch.line, f"{gpu_path} pins torch {torch.version}, {cpu_path} {cpu_torch.version}", "torch")
    if not any(name.startswith("nvidia-") for name in gpu.entries):
        flag(0, f"{gpu_path} pins no nvidia-* library: its torch cannot run on CUDA", "nvidia")
    for name, entry in gpu.entries.items():
        other = cpu.entries.get(name)
        if name != "torch" and other is not None and other.version != entry.version:
            flag(entry.line, f"{gpu_path} pins {name} {entry.version}, {cpu_path} {other.version}", name)
    missing = sorted(set(cpu.entries) - set(gpu.entries))
    if missing:
        flag(0, f"{gpu_path} lacks what {cpu_path} pins: {', '.join(missing)}", "missing " + " ".join(missing))


def _machine_lock(ctx: ScanContext, lock_path: str, result: PolicyResult) -> str | None:
    """The lock this machine's venv is held to (None: no lock can be, which is a finding)."""
    try:
        chosen = machine_lock(lock_path)
    except AcceleratorError as exc:
        message = f"{exc}: the gate cannot tell which lock this machine installs"
        result.findings.append(UNLOCKED_DISTRIBUTION.finding("", 0, 0, message, ACCELERATOR_ENV))
        return None
    if chosen.overridden:
        message = f"this machine's venv is held to {chosen.lock}: {chosen.why}"
        result.findings.append(ACCELERATOR_OVERRIDDEN.finding("", 0, 0, message, f"{ACCELERATOR_ENV} {chosen.lock}"))
    if (ctx.root / chosen.lock).is_file():
        return chosen.lock
    from policies.settings import oracle_checkout

    if oracle_checkout(ctx.root) is None:  # another repository that adopted the CPU lock alone
        return lock_path
    message = f"this machine installs {chosen.lock} ({chosen.why}), which does not exist; run `make lock`"
    result.findings.append(UNLOCKED_DISTRIBUTION.finding(chosen.lock, 0, 0, message, "missing " + chosen.lock))
    return None


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
    # Bytecode where a result leaves the machine (publish, submit): the gate's process stops reading caches and
    # verifies those it already ran (policies.bytecode); the job never reads any (PYTHONPYCACHEPREFIX in its script).
    bytecode = ctx.gate is not Gate.ci
    for problem in env.installation_problems(ctx.root, locked, allowed, lock_path, bytecode):
        rule = _RULE_OF_KIND.get(problem.kind)
        if rule is not None:  # Kind.lock repeats what the distributions above already said
            result.findings.append(rule.finding("", 0, 0, problem.message, problem.subject))


# --- Layer 5, the tree: files that install packages or reach another environment ---------------------------------
# Rules VENV009-VENV011 read the files of a checkout that opted into the policy (a lock or policies.toml): shell
# scripts, Makefiles, Dockerfiles, CI and compose YAML, JSON/TOML/INI task definitions, env files, notebooks and Python
# that runs commands. Documentation (Markdown, reST, plain text) is prose, never execution.

INSTALL_OUTSIDE_LOCK = Rule(
    id="VENV009",
    policy=NAME,
    title="A package install that leaves the locked venv",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="pip, uv, conda, mamba, pipx, poetry or pdm installing anything but requirements.lock (or this project "
    "itself) puts unpinned, unhashed code where the project's code runs, or builds another environment beside .venv.",
    fix="Add the package to pyproject.toml, run `make lock`, and rebuild .venv with `make venv` (it installs with "
    "`pip install --require-hashes -r requirements.lock`).",
    example="RUN pip install flash-attn\n!pip install -U transformers",
    example_fix="add flash-attn to pyproject.toml; make lock; make venv",
)
FOREIGN_IMPORT_PATH = Rule(
    id="VENV010",
    policy=NAME,
    title="Code puts another environment's packages on the import path",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="sys.path, site.addsitedir, PYTHONPATH or a .pth file naming another environment's site-packages (or "
    "a conda or virtualenv prefix) imports packages the lock never saw, whatever .venv holds.",
    fix="Remove the path; add what it provided to pyproject.toml, `make lock`, `make venv`.",
    example='sys.path.insert(0, "/opt/conda/lib/python3.11/site-packages")',
    example_fix="# dependency declared in pyproject.toml and installed from requirements.lock",
)
OTHER_ENVIRONMENT = Rule(
    id="VENV011",
    policy=NAME,
    title="Another Python environment declared or activated",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="A conda environment file, a direnv layout, `conda activate`, `source other/bin/activate` or a PATH "
    "into another prefix makes the code run in an environment that requirements.lock does not describe.",
    fix="Use the project's .venv (`make venv`; `source .venv/bin/activate`); declare dependencies in pyproject.toml.",
    example="name: scratch\ndependencies:\n  - pytorch=2.3\n  - pip:\n      - peft",
    example_fix="add peft to pyproject.toml; make lock; make venv",
)
TREE_RULES = (INSTALL_OUTSIDE_LOCK, FOREIGN_IMPORT_PATH, OTHER_ENVIRONMENT)

# One table of what installs. Program (argv[0]'s basename, or `python -m` module; versions and .exe dropped) →
# the subcommand word sequences that install; () means every use of the program installs.
INSTALL_COMMANDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pip": (("install",),),
    "uv": (("pip", "install"), ("pip", "sync"), ("add",), ("sync",), ("tool", "install"), ("tool", "run")),
    "uvx": ((),),
    "conda": (("install",), ("create",), ("update",), ("upgrade",), ("env", "create"), ("env", "update")),
    "mamba": (("install",), ("create",), ("update",), ("env", "create"), ("env", "update")),
    "micromamba": (("install",), ("create",), ("update",), ("env", "create"), ("env", "update")),
    "pipx": (("install",), ("inject",), ("run",), ("upgrade",), ("reinstall",), ("runpip",), ("install-all",)),
    "pipenv": (("install",), ("sync",), ("update",)),
    "poetry": (("install",), ("add",), ("update",)),
    "pdm": (("install",), ("add",), ("sync",), ("update",)),
    "hatch": (("env", "create"),),
    "pixi": (("install",), ("add",)),
    "easy_install": ((),),
    "pip-sync": ((),),
    "setup.py": (("install",), ("develop",)),
}
# Installs that may stay inside the venv: only the lock (`-r requirements.lock`, or the lock synced) and this
# project itself (`-e .`, `.[extras]`); anything else they name leaves the lock.
LOCK_AWARE = {("pip", "install"), ("uv", "pip", "install"), ("uv", "pip", "sync"), ("pip-sync",)}
# Commands that run the command after them (their own options skipped), and shells that run a string.
WRAPPERS = {"sudo", "env", "time", "nohup", "exec", "command", "builtin", "nice", "then", "do", "else", "if", "!"}
WRAPPERS |= {"xargs", "stdbuf", "timeout", "srun", "mpirun", "call"}
_RUNS_COMMANDS = {"conda", "mamba", "micromamba", "uv", "poetry", "pdm", "pipenv", "hatch", "pixi"}  # `X run CMD`
SHELLS = {"sh", "bash", "zsh", "dash", "ksh", "eval", "su", "cmd", "powershell", "pwsh", "fish", "csh", "tcsh"}
_PYTHON = re.compile(r"(?:python|pypy|py)[0-9.]*w?|\$?\w*python\w*", re.IGNORECASE)
# Options of the lock-aware installers that take a value (the value is not a package).
_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url", "--extra-index-url", "-f",
    "--find-links", "-t", "--target", "--prefix", "--root", "--python", "-p", "--platform", "--python-version",
    "--implementation", "--abi", "--upgrade-strategy", "--progress-bar", "--cache-dir", "--src", "-C",
    "--config-settings", "--global-option", "--no-binary", "--only-binary", "--trusted-host", "--log", "--timeout",
    "--retries", "--proxy", "--cert", "--client-cert", "--exists-action", "--report", "--root-user-action",
    "--index-strategy", "--index", "--keyring-provider", "--resolution", "--prerelease", "--default-index",
    "--override", "--build-constraint", "--link-mode", "--python-platform", "--torch-backend", "--group", "--extra",
}  # fmt: skip
_LEAVING_OPTIONS = {"--user", "-t", "--target", "--prefix", "--root", "--system", "--break-system-packages"}
# Paths that are another environment's packages or prefix.
FOREIGN_PREFIX = re.compile(
    r"site-packages|dist-packages|(?:^|[/\\])(?:ana|mini)?conda[0-9]?(?:[/\\]|$)|(?:^|[/\\])(?:mini)?forge[0-9]?[/\\]"
    r"|[/\\]envs[/\\][^/\\]+|\.virtualenvs[/\\]|\.pyenv[/\\]versions|(?:^|[/\\])lib[/\\]python[0-9.]+(?:[/\\]|$)"
    r"|\$\{?(?:CONDA_PREFIX|CONDA_DIR|MAMBA_ROOT_PREFIX|CONDA_HOME)\b|(?:^|[/\\])[\w.-]*venv[\w.-]*[/\\](?:bin|Scripts)"
    r"(?:[/\\]|$)",
    re.IGNORECASE,
)
_DOC_SUFFIXES = {".md", ".markdown", ".rst", ".txt", ".html", ".htm", ".adoc", ".tex"}
_PROSE_KEYS = re.compile(r"^(?:description|help|message|msg|title|summary|comment|note|notes|doc|text|label)$", re.I)
# Lines worth reading (one ripgrep pass for every policy): installer words, import-path writes, activations, env files.
_CANDIDATES = [
    # `\\n`: a notebook's JSON string has the newline escaped right before the command word
    r"(?:\b|\\[nrt])(pip[0-9.]*|pipx|uvx?|conda|mamba|micromamba|pipenv|poetry|pdm|pixi|easy_install|pip-sync|virtualenv)\b",
    r"-m\s+venv\b|setup\.py\s+(install|develop)|session\.(conda_)?install\b",
    r"sys\.path|addsitedir|add_entry|PYTHONPATH|site-packages|dist-packages",
    r"bin/activate|\bactivate\b|\bworkon\s|^\s*(layout|use)\s+\w",
    r"^\s*dependencies\s*:",
    r"\bPATH\b",
]
# The words a line must hold to be parsed as a command at all (the candidate patterns, in Python's syntax)
_COMMAND_WORDS = re.compile(
    r"\b(?:pip[0-9.]*|pipx|uvx?|conda|mamba|micromamba|pipenv|poetry|pdm|pixi|easy_install|pip-sync|virtualenv|venv"
    r"|setup\.py|activate|workon)\b"
)
_REFERENCE = re.compile(r"\$\{\{[^}]*\}\}|\$[({](\w+)[)}]")  # ${{ expr }}, $(NAME), ${NAME} as one word: $NAME
_SHLEX_LIMIT = 2000
_REDIRECT_FD = re.compile(r"(^|\s)\d+(?=[<>])")


def tree_patterns(settings: object = None) -> list[str]:
    return list(_CANDIDATES)


def opted_in(ctx: ScanContext) -> bool:
    """The venv policy applies to an Oracle checkout and to a repository that adopted our hashed lock; a tree that
    has neither has no locked venv for its files to leave (a policies.toml alone is only settings)."""
    from policies.settings import oracle_checkout

    return (ctx.root / ctx.settings.venv.lock).exists() or oracle_checkout(ctx.root) is not None


def judges_tree(ctx: ScanContext) -> bool:
    """Whether VENV009-VENV011 read this tree's files: where it opted in, and where it declares no Python project of
    its own (a bare folder of scripts is held to the lock it would run under); another project's pyproject.toml,
    setup.py or setup.cfg without our lock or settings means its own environment rules, not ours."""
    own_project = any((ctx.root / name).exists() for name in ("pyproject.toml", "setup.py", "setup.cfg"))
    return opted_in(ctx) or not own_project


# --- reading files whatever their kind (ScanContext's readers when it has them) -----------------------------------

# Until ScanContext.kind exists everywhere: kinds by extension and name only.
_FALLBACK_KINDS = {".py": "python", ".ipynb": "notebook", ".yml": "yaml", ".yaml": "yaml", ".json": "json"}
_FALLBACK_KINDS |= {".md": "markdown", ".rst": "markdown", ".ps1": "powershell", ".toml": "toml", ".env": "env"}


def file_kind(ctx: ScanContext, relative: str) -> str:
    """What a file is ("python", "notebook", "shell", "make", "docker", "yaml", "env", ...), from ScanContext.kind."""
    kind = getattr(ctx, "kind", None)
    if callable(kind):
        return str(kind(relative))
    name = relative.rsplit("/", 1)[-1].lower()
    if name.startswith(("makefile", "dockerfile")):
        return name[:-4] if name.startswith("makefile") else "docker"
    return _FALLBACK_KINDS.get(os.path.splitext(name)[1], "shell" if name.endswith((".sh", ".envrc")) else "text")


def not_analysed(ctx: ScanContext, result: PolicyResult, relative: str, why: str) -> None:
    """A file a check could not read in full: ScanContext.not_analysed reports it where it exists (fail closed)."""
    report = getattr(ctx, "not_analysed", None)
    if callable(report):
        report(relative, why)
    result.skipped[relative] = why


def logical_lines(text: str, kind: str) -> list[tuple[int, str]]:
    """(first line number, text) with continuations joined (`\\` in shells, Makefiles and Dockerfiles, a backtick
    in PowerShell); Makefile `$$` is `$`."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    marker = "`" if kind == "powershell" else "\\"
    for number, line in enumerate(text.splitlines(), start=1):
        if kind == "make":
            line = line.replace("$$", "$")
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith(marker):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        joined.append((number, line))
    if pending is not None:
        joined.append(pending)
    return joined


def notebook_shell(ctx: ScanContext, relative: str) -> list[tuple[int, int, str]]:
    """(cell, line, command) of the shell commands a notebook runs (`!cmd`, `%pip ...` as `pip ...`, `%%bash` cells,
    `%env X=v` as `export X=v`): PythonProgram.shell, or its `%`/`!` lines where that is not there."""
    program = ctx.python_program(relative)
    if program is None:
        return []
    lines = getattr(program, "shell", None)
    if lines is None:
        lines = [(cell, line, text.strip().lstrip("!%")) for cell, line, text in program.magics]
    return [(cell, line, text.strip()) for cell, line, text in lines]


# --- shell commands -----------------------------------------------------------------------------------------------


def shell_commands(text: str, powershell: bool = False) -> list[list[str]]:
    """The simple commands of one logical shell line, as argv lists: split at ; && || | & ( ) and backticks, with
    redirections dropped and `$(NAME)`/`${NAME}` kept as one word."""
    import shlex

    text = _REDIRECT_FD.sub(r"\1", _REFERENCE.sub(lambda m: f"${m[1] or 'EXPR'}", text))
    if powershell:
        text = text.replace("\\", "/")
    text = text.replace("`", " ; ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    try:
        if len(text) > _SHLEX_LIMIT:  # shlex reads a character at a time: a minified line would take seconds
            raise ValueError(text[:20])
        tokens = list(lexer)
    except ValueError:  # an unclosed quote (or a very long line): words as they stand
        tokens = re.findall(r"[;&|()<>]+|[^\s;&|()<>]+", text.replace('"', " ").replace("'", " "))
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token and set(token) <= set(";&|()<>"):
            if "<" in token or ">" in token:
                skip_next = True  # a redirection's target
            else:
                commands.append([])
            continue
        commands[-1].append(token)
    return [command for command in commands if command]


def _program(word: str) -> str:
    name = re.split(r"[/\\]", word)[-1].lower().lstrip("$").removesuffix(".exe")
    return name if name in INSTALL_COMMANDS else re.sub(r"[0-9.]+$", "", name)


@dataclass(frozen=True)
class Install:
    shown: str  # the command as written, for the message
    what: str  # what it installs that is not the lock, or why it leaves the venv


def install_of(
    argv: list[str], lock: str, project_venv: str, depth: int = 0, allowed: frozenset[str] = frozenset()
) -> Install | None:
    """The install an argv runs, unless it installs only the lock, this project, or distributions the settings allow
    without a pin (`venv.allow_unlocked`, normalised names) into the venv."""
    if not argv or depth > 4:
        return None
    head = _program(argv[0])
    if head in SHELLS:  # bash -c "pip install x", eval "..."
        for word in argv[1:]:
            if " " in word.strip():
                for inner in shell_commands(word):
                    if found := install_of(inner, lock, project_venv, depth + 1, allowed):
                        return found
        return None
    if head in WRAPPERS or argv[0] in WRAPPERS or ("=" in argv[0] and not argv[0].startswith("-")):
        for index in range(1, len(argv)):
            if _program(argv[index]) in INSTALL_COMMANDS or _PYTHON.fullmatch(_program(argv[index])):
                return install_of(argv[index:], lock, project_venv, depth + 1, allowed)
        return None
    if len(argv) == 1 and " " in argv[0].strip():  # a whole command quoted as one word ("pip install x")
        return next(
            (f for c in shell_commands(argv[0]) if (f := install_of(c, lock, project_venv, depth + 1, allowed))), None
        )
    rest = argv[1:]
    if head not in INSTALL_COMMANDS and _PYTHON.fullmatch(head):
        at = next((i for i, word in enumerate(rest) if not word.startswith("-") or word == "-m"), None)
        if at is None:
            return None
        if rest[at] == "-m" and at + 1 < len(rest):
            head, rest = _program(rest[at + 1]), rest[at + 2 :]
            if head == "venv":
                return None  # creating a venv is VENV011's business (activation), not an install
        elif rest[at].endswith("setup.py"):
            head, rest = "setup.py", rest[at + 1 :]
        else:
            return None
    subcommands = INSTALL_COMMANDS.get(head)
    if subcommands is None:
        return None
    words = [word for word in rest if not word.startswith("-")]
    if words[:1] == ["run"] and head in _RUNS_COMMANDS:
        if head == "uv" and any(word == "--with" or word.startswith("--with=") for word in rest):
            return Install(" ".join([head, *rest]), "`uv run --with` installs packages into a temporary environment")
        after = rest[rest.index("run") + 1 :]
        for index, word in enumerate(after):
            if _program(word) in INSTALL_COMMANDS or _PYTHON.fullmatch(_program(word)):
                return install_of(after[index:], lock, project_venv, depth + 1, allowed)
        return None
    for sequence in subcommands:
        if tuple(words[: len(sequence)]) != sequence:
            continue
        shown = " ".join([head, *rest])
        if (head, *sequence) in LOCK_AWARE:
            start = rest.index(sequence[-1]) + 1 if sequence else 0
            sync = sequence[-1:] == ("sync",) or not sequence
            problem = _leaves_lock(rest[start:], lock, project_venv, sync, allowed)
            return Install(shown, problem) if problem else None
        return Install(shown, f"`{' '.join([head, *sequence])}` builds or changes an environment from outside the lock")
    return None


def _project_name(ctx: ScanContext) -> str:
    import tomllib

    try:
        declared = tomllib.loads((ctx.root / ctx.settings.venv.declared_input).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    name = declared.get("project", {}).get("name", "") if isinstance(declared.get("project"), dict) else ""
    return normalise_name(name) if isinstance(name, str) else ""


def _is_lock(value: str, lock: str) -> bool:
    """Whether an install names one of the two locks (the CPU lock the settings name, or the GPU lock beside it)."""
    value = re.sub(r"^\$\w+/", "", value).removeprefix("./")
    return any(value == name or value.endswith("/" + name) for name in lock_names(lock).values())


def _is_project(value: str) -> bool:
    value = re.sub(r"\[[^\]]*\]$", "", value.removeprefix("file://").removeprefix("file:")).rstrip("/")
    return value in {".", "", "$PWD", "$CURDIR", "$(pwd)", "$ROOT", "$PROJECT_ROOT"}


def _leaves_lock(args: list[str], lock: str, project_venv: str, sync: bool, allowed: frozenset[str]) -> str | None:
    """Why installing these arguments leaves the locked venv (None: only the lock or the project, into the venv)."""
    others: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        option, has_value, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if word.startswith("-r") and len(word) > 2 and not word.startswith("--"):
            option, has_value, inline = "-r", "=", word[2:]
        if option in _LEAVING_OPTIONS:
            return f"`{option}` installs outside the venv"
        if option in {"--python", "-p"}:
            value = inline if has_value else (args[index + 1] if index + 1 < len(args) else "")
            if not value.removeprefix("./").startswith(project_venv.rstrip("/") + "/"):
                return f"`{option} {value}` installs into another interpreter"
        if option in _VALUE_OPTIONS:
            value = inline if has_value else (args[index + 1] if index + 1 < len(args) else "")
            index += 1 if has_value else 2
            if option in {"-r", "--requirement"} and not _is_lock(value, lock):
                others.append(f"-r {value}")
            elif option in {"-e", "--editable"} and not _is_project(value):
                others.append(value)
            continue
        named = normalise_name(re.split(r"[\[<>=!~;@ ]", word, maxsplit=1)[0])
        kept = _is_lock(word, lock) if sync else _is_project(word) or named in allowed
        if not word.startswith("-") and not kept:
            others.append(word)
        index += 1
    if others:
        return f"installs {', '.join(others)}, which requirements.lock does not pin with hashes"
    return None


# --- the tree check -----------------------------------------------------------------------------------------------


class _TreeFindings:
    def __init__(self, result: PolicyResult, path: str, allowed: frozenset[str] = frozenset()) -> None:
        self.result, self.path, self.allowed = result, path, allowed
        self.seen: set[tuple[str, int, str]] = set()

    def add(self, rule: Rule, line: int, column: int, message: str, matched: str) -> None:
        if (rule.id, line, matched) not in self.seen:
            self.seen.add((rule.id, line, matched))
            self.result.findings.append(rule.finding(self.path, line, column, message, matched))


def check_tree(ctx: ScanContext, result: PolicyResult) -> None:
    """VENV009-VENV011 over the files selected for this gate."""
    venv = ctx.settings.venv
    lock, project_venv = venv.lock, venv.project_venv.rstrip("/")
    # what may sit in .venv without a pin (pip itself); the project's own name only from `.`, never from an index
    allowed = frozenset(normalise_name(name) for name in venv.allow_unlocked) - {_project_name(ctx)}
    candidates = ctx.grep(_CANDIDATES)
    for path in ctx.files:
        if path.endswith(".pth"):
            _check_pth(ctx, path, _TreeFindings(result, path))
        if path not in candidates:
            continue
        kind = file_kind(ctx, path)
        if kind in {"markdown", "binary"} or os.path.splitext(path)[1].lower() in _DOC_SUFFIXES:
            continue
        findings = _TreeFindings(result, path, allowed)
        if kind == "python":
            _check_python_tree(ctx, path, lock, project_venv, findings, result)
            continue
        if kind == "notebook":
            for cell, number, text in notebook_shell(ctx, path):
                where = f"cell {cell}, line {number}: "
                _check_command_line(text, "shell", lock, project_venv, findings, 0, where)
            _check_python_tree(ctx, path, lock, project_venv, findings, result)
            continue
        content = ctx.text(path)
        if content is None:
            continue  # binary or oversize: the selection already reports it
        conda = _conda_environment(path, content) if kind == "yaml" else None
        if conda is not None:
            findings.add(OTHER_ENVIRONMENT, 1, 1, conda, "conda environment file")
        direnv = path.rsplit("/", 1)[-1].startswith(".envrc")
        lines = logical_lines(content, kind)
        for index, (number, line) in enumerate(lines):
            stripped = line.strip()
            if not stripped or (stripped.startswith(("#", "//", ";", "REM ", "::")) and not stripped.startswith("#!")):
                continue
            if direnv and (layout := re.match(r"(layout|use)\s+(\w+)", stripped)):
                findings.add(
                    OTHER_ENVIRONMENT,
                    number,
                    1,
                    f"direnv `{layout[0]}` makes another environment, not the project's {project_venv}",
                    layout[0],
                )
            _check_path_assignments(stripped, project_venv, findings, number)
            if not _COMMAND_WORDS.search(line):
                continue
            command = _command_text(stripped, kind)
            if command is None:
                continue
            if _opens_array(command):
                command = _close_array(command, lines[index + 1 : index + 40])
            _check_command_line(command, kind, lock, project_venv, findings, number, "")


_LEAD_IN = re.compile(
    r"""^[{\s]*(?:-\s+)*(?:(?P<key>"[\w.-]+"|'[\w.-]+'|[\w.-]+)\s*(?::=|\?=|\+=|=|:)\s*[|>]?[-+]?\s*)?"""
    r"""(?:RUN\s+(?:--\S+\s+)*|[@+-]+)?"""
)


_QUOTED = re.compile(r""""((?:[^"\\]|\\.)*)"|'([^']*)'""")
_PLAIN_LEAD_IN = re.compile(r"^(?:RUN\s+(?:--\S+\s+)*|[@+-]+)?")
_KEYED_KINDS = {"yaml", "json", "toml", "ini", "make", "hcl", "text"}  # where `key: command` / `KEY = command` runs


def _command_text(line: str, kind: str) -> str | None:
    """The command a line runs, with its lead-in (a YAML/JSON/INI key, a list dash, Dockerfile RUN, Makefile @-+)
    removed; None for prose keys."""
    match = (_LEAD_IN if kind in _KEYED_KINDS else _PLAIN_LEAD_IN).match(line)
    if match is None:
        return line
    key = (match.groupdict().get("key") or "").strip("\"'")
    if key and _PROSE_KEYS.match(key):
        return None
    command = line[match.end() :].rstrip(",")
    if kind == "json":
        command = command.rstrip().rstrip("},").rstrip()
    if kind == "docker" and not line.upper().startswith("RUN") and not key:
        # Dockerfile instructions other than RUN (and their continuation) run nothing at build time
        first = line.split(None, 1)[0].upper() if line.split() else ""
        if first in {"FROM", "COPY", "ADD", "LABEL", "EXPOSE", "WORKDIR", "USER", "VOLUME", "ARG", "ENV"}:
            return None
    if _QUOTED.fullmatch(command) and kind in {"json", "yaml", "toml"}:
        import json

        try:
            decoded = json.loads(command) if command[0] == '"' else command[1:-1]
            return decoded if isinstance(decoded, str) else command
        except ValueError:
            return command[1:-1]
    return command


def _opens_array(command: str) -> bool:
    return bool(re.match(r"""^\[?\s*["'][^"']+["']\s*,""", command)) and "]" not in command


def _close_array(command: str, following: list[tuple[int, str]]) -> str:
    parts = [command]
    for _, line in following:
        parts.append(line.strip())
        if "]" in line or ")" in line:
            break
    return " ".join(parts)


def _argv_of_array(command: str) -> list[str] | None:
    """`["pip", "install", "x"]` or `"uv", "pip", "install",` (an argv written as a list of strings)."""
    stripped = command.strip().lstrip("[(").rstrip(",])")
    if not stripped or stripped[0] not in "\"'":
        return None
    words = [a or b for a, b in _QUOTED.findall(stripped)]
    rest = _QUOTED.sub("", stripped)
    return words if words and not re.sub(r"[\s,\[\](){}]", "", rest) else None


def _check_command_line(
    command: str, kind: str, lock: str, project_venv: str, findings: _TreeFindings, line: int, where: str
) -> None:
    array = _argv_of_array(command)
    commands = [array] if array else shell_commands(command, powershell=kind == "powershell")
    for argv in commands:
        install = install_of(argv, lock, project_venv, allowed=findings.allowed)
        if install is not None:
            message = f"{where}`{_short(install.shown)}`: {install.what}"
            findings.add(INSTALL_OUTSIDE_LOCK, line, 1, message, install.shown)
        activation = _activation(argv, project_venv, posixpath.dirname(findings.path))
        if activation is not None:
            findings.add(OTHER_ENVIRONMENT, line, 1, f"{where}{activation}", " ".join(argv))


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _activation(argv: list[str], project_venv: str, folder: str = "") -> str | None:
    """Why this command runs the rest in another environment (None: it does not)."""
    while argv and (argv[0] in WRAPPERS or ("=" in argv[0] and not argv[0].startswith("-"))):
        argv = argv[1:]
    if len(argv) < 2:
        return None
    head, target = _program(argv[0]), argv[1]
    if head in {"source", "."} and re.search(r"(?:^|[/\\])activate(?:\.\w+)?$", target):
        venv = re.sub(r"[/\\](?:bin|Scripts)[/\\]activate(?:\.\w+)?$", "", target)
        if _is_project_venv(venv, project_venv, folder):
            return None
        if re.fullmatch(r"activate", target):  # `source activate NAME`: the conda form
            return f"`{' '.join(argv)}` activates a conda environment"
        return f"`{' '.join(argv)}` activates {venv}, not the project's {project_venv}"
    if head in {"conda", "mamba", "micromamba", "pyenv"} and target in {"activate", "shell", "local"}:
        name = argv[2] if len(argv) > 2 else ""
        return f"`{' '.join(argv[:3])}` activates another environment{'' if name else ' (base)'}"
    if head == "workon":
        return f"`workon {target}` activates a virtualenvwrapper environment"
    if _PYTHON.fullmatch(head) and "-m" in argv and argv.index("-m") + 2 <= len(argv):
        index = argv.index("-m")
        if argv[index + 1] == "venv":
            created = next((w for w in argv[index + 2 :] if not w.startswith("-")), "")
            if created and not _is_project_venv(created, project_venv, folder):
                return f"`{' '.join(argv)}` creates the virtualenv {created} beside the project's {project_venv}"
    if head in {"virtualenv"} or (head == "uv" and target == "venv"):
        created = next((w for w in argv[1 + (head == "uv") :] if not w.startswith("-")), project_venv)
        if not _is_project_venv(created, project_venv, folder):
            return f"`{' '.join(argv)}` creates the virtualenv {created} beside the project's {project_venv}"
    return None


def _is_project_venv(path: str, project_venv: str, folder: str = "") -> bool:
    """Whether a venv path names the project's own: relative to the root, or to the folder of the file naming it."""
    path = re.sub(r"^\$\w+[/\\]", "", path).removeprefix("./").rstrip("/\\")
    beside = posixpath.normpath(posixpath.join(folder, path)) if folder and not path.startswith(("/", "~", "$")) else ""
    return project_venv in {path, beside} or path == "$VENV"


_PATH_ASSIGNMENT = re.compile(
    r"""(?<![\w$])(?:export\s+|ENV\s+|setenv\s+|set\s+-x\s+|\$env:)?(?P<name>PYTHONPATH|PATH|VIRTUAL_ENV)"""
    r"""["']?\s*(?::=|\?=|\+=|=|:|\s)\s*(?P<value>["']?[^\s"';]+)"""
)


def _check_path_assignments(line: str, project_venv: str, findings: _TreeFindings, number: int) -> None:
    for match in _PATH_ASSIGNMENT.finditer(line):
        value = _REFERENCE.sub(lambda m: f"${m[1] or 'EXPR'}", match["value"].strip("\"'"))
        if (match["name"] != "VIRTUAL_ENV" and not FOREIGN_PREFIX.search(value)) or _under_project_venv(
            value, project_venv
        ):
            continue
        if match["name"] == "VIRTUAL_ENV" and (_is_project_venv(value, project_venv) or value.startswith("$")):
            continue
        rule = FOREIGN_IMPORT_PATH if match["name"] == "PYTHONPATH" else OTHER_ENVIRONMENT
        findings.add(rule, number, match.start() + 1, f"{match['name']} names {value}, another environment", value)


def _under_project_venv(value: str, project_venv: str) -> bool:
    entries = [entry for entry in re.split(r"[:;]", value) if entry and not entry.startswith("$")]
    return bool(entries) and all(_is_project_venv(e.split("/bin")[0].split("/lib")[0], project_venv) for e in entries)


def _check_pth(ctx: ScanContext, path: str, findings: _TreeFindings) -> None:
    for number, line in enumerate((ctx.text(path) or "").splitlines(), start=1):
        if line.strip() and not line.startswith(("#", "import ")) and FOREIGN_PREFIX.search(line):
            findings.add(FOREIGN_IMPORT_PATH, number, 1, f"a .pth file adds {line.strip()} to the import path", line)


def _conda_environment(path: str, text: str) -> str | None:
    """Why a YAML file is a conda environment file (None: it is not): a top-level `dependencies` list of package
    specs with `channels`, a `pip:` sub-list, conda `=` pins, or the environment file's usual name."""
    if not re.search(r"^dependencies\s*:", text, re.MULTILINE):
        return None
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("dependencies"), list):
        return None
    items = document["dependencies"]
    specs = [item for item in items if isinstance(item, str) and re.match(r"^[A-Za-z0-9_.-]+(\s*[=<>!~].*)?$", item)]
    pip = any(isinstance(item, dict) and "pip" in item for item in items)
    named = re.search(r"(?:^|/)(?:environment|conda|env)[\w.-]*\.ya?ml$", path, re.IGNORECASE) is not None
    conda_pins = any(re.match(r"^[\w.-]+=[^=]", spec) for spec in specs)
    if pip or (specs and ("channels" in document or named or conda_pins)):
        what = "with a pip: list " if pip else ""
        return f"a conda environment file {what}declares an environment beside the locked .venv"
    return None


# --- Python that runs commands or edits the import path -----------------------------------------------------------

# Calls that run a command: an argv list, several string arguments, or one shell string.
RUNNERS = {
    "run", "call", "check_call", "check_output", "Popen", "system", "popen", "getoutput", "getstatusoutput",
    "create_subprocess_exec", "create_subprocess_shell", "spawn", "run_always", "run_install", "execv", "execvp",
    "execve", "execvpe", "execl", "execlp", "execle", "execlpe", "spawnv", "spawnvp", "spawnl", "spawnlp", "sh",
    "local", "sudo", "run_command",
}  # fmt: skip
_PATH_CALLS = {"insert", "append", "extend", "addsitedir", "add_entry"}


def _check_python_tree(
    ctx: ScanContext, path: str, lock: str, project_venv: str, findings: _TreeFindings, result: PolicyResult
) -> None:
    program = ctx.python_program(path)
    if program is None or program.tree is None:
        why = "notebook that is not valid JSON" if program is None else "Python that does not parse"
        not_analysed(ctx, result, path, why)
        return
    tree, cells = program.tree, program.cells
    values = _assigned_values(tree)

    def where(node: ast.AST) -> tuple[int, str]:
        line = getattr(node, "lineno", 0)
        if cells and 0 < line <= len(cells):
            cell, cell_line = cells[line - 1]
            return 0, f"cell {cell}, line {cell_line}: "
        return line, ""

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for argv in _argvs_of_call(node, values):
                install = install_of(argv, lock, project_venv, allowed=findings.allowed)
                if install is not None:
                    line, prefix = where(node)
                    message = f"{prefix}`{_short(install.shown)}`: {install.what}"
                    findings.add(INSTALL_OUTSIDE_LOCK, line, node.col_offset + 1, message, install.shown)
            _check_path_call(node, values, project_venv, findings, where)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                written = target.value if isinstance(target, ast.Subscript) else target
                if _dotted(written) == "sys.path":
                    _report_paths(node, _strings(node.value, values), project_venv, findings, where, "sys.path")
                if isinstance(target, ast.Subscript) and _constant(target.slice) == "PYTHONPATH":
                    _report_paths(node, _strings(node.value, values), project_venv, findings, where, "PYTHONPATH")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return ""


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _assigned_values(tree: ast.Module) -> dict[str, list[ast.AST]]:
    values: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            values.setdefault(node.target.id, []).append(node.value)
    return values


def _word(node: ast.AST, values: dict[str, list[ast.AST]], depth: int = 0) -> str:
    """One argument as text: constants as they are, sys.executable as python, other names as $NAME."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if _dotted(node) in {"sys.executable", "shutil.which()"}:
        return "python"
    if isinstance(node, ast.JoinedStr):
        return "".join(_word(part, values, depth) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        return _word(node.value, values, depth)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Div):
        joiner = "/" if isinstance(node.op, ast.Div) else ""
        return _word(node.left, values, depth) + joiner + _word(node.right, values, depth)
    if isinstance(node, ast.Name) and depth < 3 and len(values.get(node.id, [])) == 1:
        return _word(values[node.id][0], values, depth + 1)
    if isinstance(node, ast.Call) and _dotted(node.func) in {"os.path.join", "Path", "pathlib.Path", "str"}:
        return "/".join(_word(arg, values, depth) for arg in node.args)
    if isinstance(node, ast.Call) and _dotted(node.func) in {"os.path.expanduser", "os.path.abspath", "glob.glob"}:
        return _word(node.args[0], values, depth) if node.args else ""
    owner = node.value if isinstance(node, ast.Subscript) else getattr(node, "func", node)
    if isinstance(node, ast.Subscript | ast.Call) and "environ" in _dotted(owner):
        key = _constant(node.slice) if isinstance(node, ast.Subscript) else None
        if isinstance(node, ast.Call) and node.args:
            key = _constant(node.args[0])
        return f"${key or 'ENV'}"
    if isinstance(node, ast.Call) and _dotted(node.func) in {"os.getenv"} and node.args:
        return f"${_constant(node.args[0]) or 'ENV'}"
    if isinstance(node, ast.Subscript):
        return _word(node.value, values, depth)
    return f"${_dotted(node) or 'VALUE'}"


def _sequence(node: ast.AST, values: dict[str, list[ast.AST]], depth: int = 0) -> list[ast.AST] | None:
    if isinstance(node, ast.List | ast.Tuple):
        items: list[ast.AST] = []
        for element in node.elts:
            inner = _sequence(element.value, values, depth + 1) if isinstance(element, ast.Starred) else None
            items.extend(inner if inner is not None else [element])
        return items
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _sequence(node.left, values, depth), _sequence(node.right, values, depth)
        return [*left, *right] if left is not None and right is not None else left
    if isinstance(node, ast.Name) and depth < 3:
        for value in values.get(node.id, []):
            if (found := _sequence(value, values, depth + 1)) is not None:
                return found
    if isinstance(node, ast.Call) and _dotted(node.func) == "shlex.split" and node.args:
        return [ast.Constant(word) for word in _first_command(_word(node.args[0], values))] or None
    return None


def _first_command(text: str) -> list[str]:
    commands = shell_commands(text)
    return commands[0] if commands else []


def _argvs_of_call(node: ast.Call, values: dict[str, list[ast.AST]]) -> list[list[str]]:
    """The argv lists a call runs: subprocess/os/asyncio/nox/invoke runners, pip's own main(), IPython's system()
    and run_line_magic()."""
    called = _dotted(node.func)
    name = called.rsplit(".", 1)[-1]
    if called.startswith("pip.") and name == "main" and node.args:
        sequence = _sequence(node.args[0], values)
        return [["pip", *(_word(item, values) for item in sequence)]] if sequence else []
    if name == "run_module" and node.args and _constant(node.args[0]) in {"pip", "uv", "conda"}:
        return [[_constant(node.args[0]) or "", "install", "$ARGV"]]
    if name == "run_line_magic" and len(node.args) >= 2:
        return [[_word(node.args[0], values), *_first_command(_word(node.args[1], values))]]
    if name in {"install", "conda_install"} and called.split(".", 1)[0] == "session":  # nox installs into its venv
        return [["pip", "install", *(_word(arg, values) for arg in node.args)]] if node.args else []
    if name not in RUNNERS or not node.args:
        return []
    first = node.args[0]
    sequence = _sequence(first, values)
    if sequence is not None:
        return [[_word(item, values) for item in sequence]]
    words = [_word(arg, values) for arg in node.args if not isinstance(arg, ast.Starred)]
    if len(node.args) == 1 or any(k.arg == "shell" for k in node.keywords):
        return shell_commands(words[0])
    return [words, words[1:]]  # run("pip", "install", x), execlp("pip", "pip", "install", x)


def _strings(node: ast.AST, values: dict[str, list[ast.AST]]) -> list[str]:
    sequence = _sequence(node, values)
    return [_word(item, values) for item in sequence] if sequence is not None else [_word(node, values)]


def _check_path_call(
    node: ast.Call, values: dict[str, list[ast.AST]], project_venv: str, findings: _TreeFindings, where: object
) -> None:
    called = _dotted(node.func)
    name = called.rsplit(".", 1)[-1]
    if name in {"insert", "append", "extend"} and called.rsplit(".", 1)[0] == "sys.path" and node.args:
        _report_paths(node, _strings(node.args[-1], values), project_venv, findings, where, "sys.path")
    elif name in {"addsitedir", "add_entry"} and node.args:
        _report_paths(node, _strings(node.args[0], values), project_venv, findings, where, called)
    elif name in {"putenv", "setdefault"} and len(node.args) >= 2 and _constant(node.args[0]) == "PYTHONPATH":
        _report_paths(node, _strings(node.args[1], values), project_venv, findings, where, "PYTHONPATH")
    for keyword in node.keywords:
        if keyword.arg == "PYTHONPATH":
            _report_paths(node, _strings(keyword.value, values), project_venv, findings, where, "PYTHONPATH")
    for argument in node.args:
        if isinstance(argument, ast.Dict):
            for key, value in zip(argument.keys, argument.values, strict=True):
                if _constant(key) == "PYTHONPATH":
                    _report_paths(node, _strings(value, values), project_venv, findings, where, "PYTHONPATH")


def _report_paths(
    node: ast.AST, paths: list[str], project_venv: str, findings: _TreeFindings, where: object, what: str
) -> None:
    assert callable(where)
    for entry in paths:
        if FOREIGN_PREFIX.search(entry) and not _under_project_venv(entry, project_venv):
            line, prefix = where(node)
            message = f"{prefix}{what} gets {entry}, another environment's packages"
            findings.add(FOREIGN_IMPORT_PATH, line, getattr(node, "col_offset", 0) + 1, message, entry)


RULES = RULES + TREE_RULES
_TREE_RULE_IDS = {rule.id for rule in TREE_RULES}
POLICY = Policy(NAME, RULES, check, tree_patterns)
