"""Task runner sessions. nox runs inside the project's .venv (built by `make` from requirements.lock) and never
builds virtualenvs of its own: every session is `python=False` and refuses to run from any other interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent.resolve()
PROJECT_VENV = ROOT / ".venv"

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "docs", "tests"]


def _require_project_venv(session: nox.Session) -> None:
    if Path(sys.prefix).resolve() != PROJECT_VENV.resolve():  # .venv may be a link (a worktree sharing one venv)
        session.error(
            f"nox runs from {sys.prefix}, not the project's virtualenv {PROJECT_VENV}; "
            "run `make guards` / `make test`, which build .venv from requirements.lock"
        )


@nox.session(python=False)
def guards(session: nox.Session) -> None:
    """The ci gate over the whole tree (venv, local_train, external_weights, architecture); on a pass over a clean
    tree it writes the attestation for HEAD (signed when ORACLE_SIGNING_KEY names a key)."""
    _require_project_venv(session)
    session.run("oracle", "guards", "run", "--gate", "ci", "--attest", *session.posargs)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    _require_project_venv(session)
    session.run("pytest", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    _require_project_venv(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # the layering contracts of pyproject's [tool.importlinter], and every import a declared dependency ([tool.deptry])
    session.run("lint-imports")
    session.run("deptry", ".")


@nox.session(python=False)
def typecheck(session: nox.Session) -> None:
    _require_project_venv(session)
    session.run("mypy")


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml, docs/), built with --strict: a broken link or anchor, a nav entry without a
    page, or a warning of the pages generated from the code (docs/hooks.py) fails it. The site is written to
    build/site, which git ignores."""
    _require_project_venv(session)
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "build" / "site"))


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    _require_project_venv(session)
    for script in sorted((ROOT / "bench").glob("*.py")):
        if script.name not in {GPU_CHECK.name, "datatrove_compare.py"}:  # CUDA (own session, below); a throwaway venv
            session.run("python", str(script), *session.posargs)


GPU_CHECK = ROOT / "bench" / "gpu_check.py"


@nox.session(python=False)
def gpu(session: nox.Session) -> None:
    """The one-run GPU check (issue 18): MoE layer TFLOP/s, flash-SDPA parity, bench-recipe steps with MFU, as JSON
    (`nox -s gpu -- --out FILE`; default $OUT/gpu_check.json). Refuses without CUDA; `-- --cpu-smoke` runs it tiny."""
    _require_project_venv(session)
    session.run(sys.executable, str(GPU_CHECK), *session.posargs)  # the venv's python, whatever PATH holds
