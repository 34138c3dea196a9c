"""The `oracle` console script: oracle_cli.app's commands, and the one place an error becomes a line and an exit code.

`report_error` is the handler every command's exceptions reach (oracle_cli.app.OracleGroup, and this `main` for what
fails before a command runs): an `oracle_base.errors.OracleError` prints `error: <message>` and exits with the code
its class carries; anything else is a defect, printed as one `internal error:` line (the traceback with
ORACLE_DEBUG=1), exit 2.

The base install of this project is the policy gates (`oracle guards`, `oracle trust`, `oracle keys`): the pre-commit
hook's environment in another repository holds nothing else. The other commands import the model, data, training,
cluster, hub or serving libraries when they run; without them they fail with exit 2 and say what to install.
"""

from __future__ import annotations

import os
import sys
import traceback
from importlib import metadata

from oracle_base.errors import EXIT_ERROR, OracleError, one_line

DISTRIBUTION = "oracle"
RUNTIME_EXTRA = "runtime"
DEBUG_ENV = "ORACLE_DEBUG"


def missing_extra_requirements(extra: str = RUNTIME_EXTRA, distribution: str = DISTRIBUTION) -> list[str]:
    """The requirements only `extra` adds whose distribution is not installed (empty when this project is not installed
    as a distribution, or when its metadata declares no such extra)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        declared = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for text in declared:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": ""}) or not marker.evaluate({"extra": extra}):
            continue  # a base requirement, or another extra's
        try:
            metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(requirement.name)
    return missing


def runtime_message(argv: list[str], module: str, missing: list[str]) -> str:
    command = " ".join(word for word in argv[:2] if not word.startswith("-")) or "this command"
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    return (
        f"`oracle {command}` needs the `{RUNTIME_EXTRA}` extra ({module} is not installed; missing: {shown}): "
        f"install it with `pip install 'oracle[{RUNTIME_EXTRA}]'`; this install runs only the gates "
        "(`oracle guards`, `oracle trust`, `oracle keys`)"
    )


def _print_error(label: str, message: str) -> None:
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        label = f"\x1b[1;31m{label}\x1b[0m"
    print(f"{label} {message}", file=sys.stderr)


def report_error(exc: Exception, argv: list[str] | None = None) -> int:
    """Print `exc` as one line on stderr and return the exit code: the class's for an OracleError (notes added with
    `add_note` follow the message in parentheses), 2 for anything else; with ORACLE_DEBUG=1 the traceback first."""
    if os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, OracleError):
        message = str(exc)
        notes = [one_line(note) for note in getattr(exc, "__notes__", ())]
        _print_error("error:", f"{message} ({'; '.join(notes)})" if notes else message)
        return exc.exit_code
    if isinstance(exc, ModuleNotFoundError):
        missing = missing_extra_requirements()
        if missing:  # only the gates are installed: say what to install, not what failed
            words = sys.argv[1:] if argv is None else argv
            _print_error("error:", runtime_message(words, (exc.name or "a module").split(".")[0], missing))
            return EXIT_ERROR
    message = one_line(str(exc))
    _print_error(
        "internal error:",
        f"{type(exc).__name__}{': ' + message if message else ''} (set {DEBUG_ENV}=1 for the traceback)",
    )
    return EXIT_ERROR


def main() -> None:
    # The runtime layer first, before typer, torch or the model are imported (guards.process_policy: stdlib only).
    from guards.process_policy import install_for_argv

    install_for_argv(sys.argv[1:])
    try:
        from oracle_cli.app import main as cli_main

        cli_main()
    except Exception as exc:  # what failed before a command ran (the commands' own errors end in OracleGroup)
        sys.exit(report_error(exc))


if __name__ == "__main__":
    main()
