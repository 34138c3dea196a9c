"""Exit codes come from the error classes (oracle_base.errors), printed once by the front door's handler.

Every leaf command of `oracle` has a case below (a new command without one fails `test_every_command_has_a_case`).
Each case names a function the command calls; raising the command's own error kinds from it walks the command's
refusal (1), configuration (2), external-service (3) and internal-error (2, one line, no traceback) paths, and an
unknown option is click's usage error (2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner, Result

from guards.attestation import AttestationError
from guards.audit import AuditError
from guards.keys import SigningKeyError
from guards.runtime import DataJobRefusedError, ServingRefusedError, TrainingRefusedError
from guards.trust import TrustError
from hub.export import ExportError
from hub.publish import PublishError
from hub.stage import StageError as HubStageError
from infra.slurm import SlurmError
from infra.spec import ClusterError, SpecError
from infra.submit import SubmitRefusedError
from oracle.data.pipeline import StageError
from oracle.data.reader import ReaderError
from oracle.moe850b.config import ConfigError, load_config
from oracle.serve.loading import ServeLoadError
from oracle.tokenization.corpus import CorpusError
from oracle.train.plan import PlanError
from oracle_base.errors import ConfigurationError, ExternalServiceError, OracleError, Refused
from oracle_cli.app import app
from policies.settings import SettingsError

runner = CliRunner()
MINI_VOCAB = str(load_config("oracle-mini").vocab_size)

Raise = Callable[[], Exception]


@dataclass(frozen=True)
class Case:
    """`args` follow the command's words ({tmp}: the test's folder, also its working directory); `calls` is a
    function the command calls ("module.name", looked up when the command runs). `refused` is None where the
    command's exit 1 is a report on its normal path (findings, a check that failed, nothing confirmed)."""

    args: list[str]
    calls: str
    configuration: Raise
    refused: Raise | None = None
    external: Raise | None = None
    returns: dict[str, object] = field(default_factory=dict)  # other callees, stubbed to return these


STAGE = {"oracle.data.pipeline.load_plan": {}, "oracle.data.pipeline.plan_digest": "0" * 64}


def _stage(*args: str) -> Case:
    return Case(
        [*args],
        "guards.runtime.require_data_stage_allowed",
        configuration=lambda: AuditError("cannot write the audit log"),
        refused=lambda: DataJobRefusedError("data stage refused: submission record missing"),
        returns=STAGE,
    )


TRUST = Case(
    [],
    "guards.trust.load_trust_root",
    configuration=lambda: SettingsError("floor: bad"),
    refused=lambda: TrustError("trust root expired"),
)

CASES: dict[str, Case] = {
    "params": Case(
        ["--config", "oracle-mini"], "oracle.moe850b.config.load_config", lambda: ConfigError("x.json: vocab_size")
    ),
    "plan": Case(
        ["--config", "oracle-mini", "--nodes", "1", "--gpus-per-node", "1"],
        "oracle.train.config.load_train_config",
        configuration=lambda: PlanError("--gpu tpu: unknown"),
    ),
    "train": Case(
        ["--config", "oracle-mini"],
        "guards.runtime.require_training_allowed",
        configuration=lambda: AuditError("cannot write the audit log .oracle/audit.jsonl"),
        refused=lambda: TrainingRefusedError("training refused: not inside a submitted job"),
    ),
    "submit": Case(
        ["--target", "slurm", "--config", "oracle-mini", "--dry-run"],
        "infra.submit.submit",
        configuration=lambda: SpecError("--time 99:00:00 exceeds the cap"),
        refused=lambda: SubmitRefusedError("no attestation"),
        external=lambda: ClusterError("sbatch: error: Slurm controller not responding"),
    ),
    "kill": Case(
        ["--target", "slurm", "--yes"],
        "infra.kill_switch.kill",
        configuration=lambda: SettingsError("policies.toml:3: cluster.project: empty"),
        external=lambda: SlurmError("squeue: error: Slurm controller not responding"),
    ),
    "serve": Case(
        ["--checkpoint", "{tmp}/ckpt", "--device", "cpu"],
        "oracle.serve.server.serve",
        configuration=lambda: ServeLoadError("ckpt/config.json: missing"),
        refused=lambda: ServingRefusedError("serving refused: no provenance"),
        returns={"faulthandler.register": None},  # it needs a real stderr; the runner's has no file descriptor
    ),
    "export": Case(
        ["--checkpoint", "{tmp}/ckpt", "--out", "{tmp}/out"],
        "hub.export.audited_export",
        configuration=lambda: ExportError("--out is not empty"),
        refused=lambda: ExportError("its provenance does not verify", refused=True),
    ),
    "guards run": Case(["--root", "{tmp}"], "guards.runner.check_root", lambda: SettingsError("--root: missing")),
    "guards rules": Case([], "policies.catalog", lambda: SettingsError("policies.toml:1: bad")),
    "guards explain": Case(["EXT001"], "policies.find_rule", lambda: SettingsError("policies.toml:1: bad")),
    "guards attest": Case(
        ["--root", "{tmp}"],
        "guards.runner.run_and_record",
        configuration=lambda: SettingsError("policies.toml:1: bad"),
        refused=lambda: AttestationError("failed", "the ci gate did not pass"),
    ),
    "guards verify": Case(
        ["--root", "{tmp}"],
        "guards.attestation.verify_attestation",
        configuration=lambda: SigningKeyError("ORACLE_SIGNING_KEY: not a PEM key"),
        refused=lambda: AttestationError("missing", "no attestation for HEAD"),
    ),
    "guards audit verify": Case(
        ["--root", "{tmp}"], "guards.audit.check_log", lambda: AuditError("cannot read .oracle/audit.jsonl")
    ),
    "trust init": Case(
        ["--out", "{tmp}/trust-root.json", "--root-key", "{tmp}/root.pem"],
        "guards.keys.load_signing_key",
        configuration=lambda: SigningKeyError("root.pem: missing"),
    ),
    "trust show": TRUST,
    "trust verify": TRUST,
    "keys new": Case(
        ["ci", "--dir", "{tmp}/keys"], "guards.keys.generate_keypair", lambda: SigningKeyError("cannot write")
    ),
    "tokenizer train": Case(
        ["--input", "{tmp}", "--out", "{tmp}/tok", "--config", "oracle-mini", "--vocab-size", MINI_VOCAB],
        "oracle.tokenization.tokenizer.train_tokenizer",
        configuration=lambda: CorpusError("in.txt: cannot read"),
    ),
    "data run": Case(
        ["--input", "{tmp}/in.jsonl", "--output", "{tmp}/out"],
        "oracle.data.pipeline.run_pipeline",
        configuration=lambda: ReaderError("in.jsonl: not found"),
    ),
    "data stage init": Case(
        ["--work", "{tmp}/work", "--input", "{tmp}/in.jsonl", "--tasks", "1"],
        "oracle.data.pipeline.init",
        configuration=lambda: StageError("work/run.json: another plan"),
    ),
    "data stage prepare": _stage("--work", "{tmp}/work", "--task", "0"),
    "data stage cluster": _stage("--work", "{tmp}/work"),
    "data stage write": _stage("--work", "{tmp}/work", "--task", "0"),
    "data stage finish": _stage("--work", "{tmp}/work", "--output", "{tmp}/out"),
    "hub build": Case(
        ["--out", "{tmp}/staged"],
        "hub.stage.build",
        configuration=lambda: SettingsError("policies.toml:1: bad"),
        refused=lambda: HubStageError("PUB004: weights without provenance"),
    ),
    "hub publish": Case(
        ["--repo-id", "org/name", "--dry-run"],
        "hub.publish.publish",
        configuration=lambda: ConfigError("oracle850b.moe.json: bad"),
        refused=lambda: PublishError("the tree has uncommitted changes", refused=True),
        external=lambda: PublishError("cannot reach the Hub at http://127.0.0.1:9 (ConnectError)"),
    ),
}


def leaf_commands(command: click.Command, words: tuple[str, ...] = ()) -> set[str]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return {" ".join(words)}
    return {leaf for name, sub in subcommands.items() for leaf in leaf_commands(sub, (*words, name))}


def _invoke(name: str, case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Raise | None) -> Result:
    """Run `oracle <name> <args>` in `tmp_path` with `case.calls` raising `error()` (None: leave it alone)."""
    monkeypatch.chdir(tmp_path)
    for env in ("ORACLE_DEBUG", "ORACLE_SUBMISSION_DIGEST", "ORACLE_SUBMISSION_RECORD", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(env, raising=False)
    for hub_env in ("HF_HUB_DISABLE_TELEMETRY", "HF_HUB_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(hub_env, "error" if hub_env == "HF_HUB_VERBOSITY" else "1")  # publish sets them
    for target, value in case.returns.items():
        monkeypatch.setattr(target, lambda *args, _value=value, **kwargs: _value)
    if error is not None:

        def fail(*args: object, **kwargs: object) -> None:
            raise error()

        monkeypatch.setattr(case.calls, fail)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in case.args]
    return runner.invoke(app, [*name.split(), *args])


def _one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_every_command_has_a_case() -> None:
    commands = leaf_commands(typer.main.get_command(app))
    assert len(commands) > 20  # the walk found the nested groups (guards audit, data stage)
    assert sorted(commands - CASES.keys()) == [], "add a case for each new command"
    assert sorted(CASES.keys() - commands) == [], "a case for a command that no longer exists"


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_unknown_option_is_a_usage_error(name: str) -> None:
    result = runner.invoke(app, [*name.split(), "--no-such-option"])
    assert result.exit_code == 2, result.output
    assert "No such option" in result.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_configuration_error_exits_2_in_one_line(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    assert isinstance(case.configuration(), ConfigurationError)
    result = _invoke(name, case, tmp_path, monkeypatch, case.configuration)
    assert result.exit_code == 2, result.output
    assert _one_error_line(result) == f"error: {case.configuration()}"


@pytest.mark.parametrize("name", sorted(name for name, case in CASES.items() if case.refused))
def test_a_refusal_exits_1_in_one_line(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    assert case.refused is not None
    refusal = case.refused()
    assert isinstance(refusal, OracleError)
    assert refusal.exit_code == 1
    result = _invoke(name, case, tmp_path, monkeypatch, case.refused)
    assert result.exit_code == 1, result.output
    line = _one_error_line(result)
    assert line.startswith("error: ")
    assert str(refusal) in line


@pytest.mark.parametrize("name", sorted(name for name, case in CASES.items() if case.external))
def test_an_external_service_failure_exits_3(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    assert case.external is not None
    assert isinstance(case.external(), ExternalServiceError)
    result = _invoke(name, case, tmp_path, monkeypatch, case.external)
    assert result.exit_code == 3, result.output
    assert _one_error_line(result) == f"error: {case.external()}"


def test_the_external_service_code_covers_submit_kill_and_publish() -> None:
    assert {"submit", "kill", "hub publish"} <= {name for name, case in CASES.items() if case.external}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_internal_error_exits_2_in_one_line_without_a_traceback(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _invoke(name, CASES[name], tmp_path, monkeypatch, lambda: RuntimeError("boom\nsecond line"))
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert line.startswith("internal error: ") or line.startswith("error: the ci gate could not run"), line
    assert "RuntimeError: boom; second line" in line


def test_an_internal_error_names_oracle_debug_and_it_prints_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = _invoke("params", CASES["params"], tmp_path, monkeypatch, lambda: KeyError("n_layers"))
    assert _one_error_line(quiet) == ("internal error: KeyError: 'n_layers' (set ORACLE_DEBUG=1 for the traceback)")
    monkeypatch.setenv("ORACLE_DEBUG", "1")
    result = runner.invoke(app, ["params", "--config", "oracle-mini"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "load_config" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("internal error: KeyError")


def test_an_interrupt_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _invoke("params", CASES["params"], tmp_path, monkeypatch, KeyboardInterrupt)  # type: ignore[arg-type]
    assert result.exit_code == 130


def test_train_with_an_audit_log_it_cannot_write_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's traceback: `oracle train` refused outside a job, and the refusal cannot be recorded."""
    (tmp_path / ".oracle").write_text("a file where the log's folder goes\n")
    result = _invoke("train", CASES["train"], tmp_path, monkeypatch, None)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert line.startswith("error: cannot write the audit log"), line
    assert isinstance(result.exception, SystemExit)


def test_a_refused_verification_is_audited_and_keeps_its_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _invoke("guards verify", CASES["guards verify"], tmp_path, monkeypatch, CASES["guards verify"].refused)
    assert result.exit_code == 1
    entries = [json.loads(line) for line in (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert (entries[-1]["gate"], entries[-1]["result"]) == ("verify", "refused")
    assert entries[-1]["details"]["reason"] == "TRU003 no attestation for HEAD"


def test_a_refusal_the_audit_log_cannot_take_says_so_on_the_same_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".oracle").write_text("a file where the log's folder goes\n")
    result = _invoke("guards verify", CASES["guards verify"], tmp_path, monkeypatch, CASES["guards verify"].refused)
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line.startswith("error: TRU003 no attestation for HEAD (and the audit log could not record this: "), line


def test_the_kinds_carry_the_documented_codes() -> None:
    assert [kind.exit_code for kind in (Refused, ConfigurationError, ExternalServiceError)] == [1, 2, 3]
    assert PublishError("x").exit_code == 3
    assert PublishError("x", refused=True).exit_code == 1
    assert ExportError("x").exit_code == 2
    assert ExportError("x", refused=True).exit_code == 1
    assert issubclass(SlurmError, ExternalServiceError)
    assert issubclass(HubStageError, Refused)
