"""The kinds of error this project raises, each with the exit code the `oracle` command ends with.

Every exception class of the project derives from one of these, and one handler at the front door
(`oracle_cli.app.OracleGroup`) turns it into `error: <message>` on stderr and `exc.exit_code`; commands do not pick
codes for errors. The codes:

- 0 success;
- 1 `Refused`: a check or policy blocks the action (a gate, a signature, provenance, the trust root);
- 2 `ConfigurationError` / `UsageError`: bad input, settings, config or files; fix them and run again;
- 2 `InternalError`, and any exception that is not an `OracleError`: a defect, reported in one line
  (`ORACLE_DEBUG=1` prints the traceback);
- 3 `ExternalServiceError`: a cluster, a scheduler, the Hub or the network failed; the same command may succeed
  later, nothing in this checkout needs to change;
- 130 interrupted (Ctrl-C).

A class may keep a builtin base beside its kind (`class ConfigError(ConfigurationError, ValueError)`) where callers
catch the builtin, or pydantic validators need a ValueError.
"""

from __future__ import annotations

EXIT_REFUSED = 1
EXIT_ERROR = 2
EXIT_EXTERNAL = 3
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """`text` on one line: its non-blank lines, stripped, joined with "; " (what every error line is printed as)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


class OracleError(Exception):
    """Base of the project's errors: `exit_code` says how the `oracle` command ends; `str()` is one line. A class
    whose instances are of two kinds (a refusal or a failure) may set `exit_code` on the instance."""

    exit_code: int = EXIT_ERROR

    def __str__(self) -> str:
        text = super().__str__()
        return text if "\n" not in text else one_line(text)


class Refused(OracleError):  # noqa: N818 (the kind, as the issue names it: `except Refused`)
    """A check or policy blocks the action; nothing was done. Exit 1."""

    exit_code = EXIT_REFUSED


class ConfigurationError(OracleError):
    """Settings, a config, an input file or the environment cannot be used as given; the message names which and the
    fix. Exit 2."""

    exit_code = EXIT_ERROR


class UsageError(ConfigurationError):
    """The options or arguments of a command do not go together or name nothing usable. Exit 2, as click's own usage
    errors."""


class ExternalServiceError(OracleError):
    """A service outside this process failed or could not be reached: a cluster or its scheduler, the Hub, the
    network. Exit 3: running the same command again later may succeed."""

    exit_code = EXIT_EXTERNAL


class InternalError(OracleError):
    """A defect of this project, or a check that could not run (fail closed: never a pass). Exit 2."""

    exit_code = EXIT_ERROR
