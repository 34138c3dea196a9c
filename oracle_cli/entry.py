"""The `oracle` console script: oracle_cli.app's commands, with one line instead of a traceback where a command needs
the `runtime` extra and only the gates are installed.

The base install of this project is the policy gates (`oracle guards`, `oracle trust`, `oracle keys`): the pre-commit
hook's environment in another repository holds nothing else. The other commands import the model, data, training,
cluster, hub or serving libraries when they run; without them they fail with exit 2 and say what to install.
"""

from __future__ import annotations

import sys
from importlib import metadata

DISTRIBUTION = "oracle"
RUNTIME_EXTRA = "runtime"
EXIT_ERROR = 2


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
        f"error: `oracle {command}` needs the `{RUNTIME_EXTRA}` extra ({module} is not installed; missing: {shown}): "
        f"install it with `pip install 'oracle[{RUNTIME_EXTRA}]'`; this install runs only the gates "
        "(`oracle guards`, `oracle trust`, `oracle keys`)"
    )


def main() -> None:
    # The runtime layer first, before typer, torch or the model are imported (guards.process_policy: stdlib only).
    from guards.process_policy import install_for_argv

    install_for_argv(sys.argv[1:])
    try:
        from oracle_cli.app import main as cli_main

        cli_main()
    except ModuleNotFoundError as exc:
        missing = missing_extra_requirements()
        if not missing:  # the extra is installed (or not declared): a genuine error, with its traceback
            raise
        print(runtime_message(sys.argv[1:], (exc.name or "a module").split(".")[0], missing), file=sys.stderr)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
