"""The training runtime check: only inside a job started by `oracle submit`, whose record verifies."""

import json
import subprocess
from pathlib import Path

import pytest

from guards.attestation import verify_attestation, write_attestation
from guards.result import GateResult
from guards.runtime import TrainingRefusedError, require_training_allowed
from guards.submission import DIGEST_ENV, RECORD_ENV, new_record, write_submission_record
from policies.rule import Gate

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]


def _commit_all(root: Path, message: str = "x") -> None:
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=root, check=True)


@pytest.fixture
def attested(tmp_path: Path) -> Path:
    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text(".oracle/\njobs/\n")
    (tmp_path / "requirements.lock").write_text("")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policies.toml").write_text("")
    _commit_all(tmp_path, "init")
    write_attestation(tmp_path, GateResult(gate=Gate.ci, root=str(tmp_path), rules=[]), None)
    return tmp_path


def _submitted(root: Path, **overrides: str) -> dict[str, str]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    fields = {
        "commit": head,
        "tree": "t",
        "attestation_digest": verify_attestation(root).digest,
        "config_hash": "c",
        "spec_hash": "s",
        "target": "slurm",
    }
    fields.update(overrides)
    record = root / "jobs" / "submission.json"
    digest = write_submission_record(record, new_record(**fields))
    return {DIGEST_ENV: digest, RECORD_ENV: str(record), "SLURM_JOB_ID": "4242"}


def _audit(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]


def test_training_outside_a_submitted_job_is_refused_and_audited(tmp_path: Path) -> None:
    with pytest.raises(TrainingRefusedError, match="not inside a job started by `oracle submit`"):
        require_training_allowed(tmp_path, {})
    assert _audit(tmp_path)[-1]["result"] == "refused"


def test_allow_local_train_does_not_override_by_default(tmp_path: Path) -> None:
    with pytest.raises(TrainingRefusedError, match="allow_override = false"):
        require_training_allowed(tmp_path, {"ALLOW_LOCAL_TRAIN": "true"})


def test_the_override_when_settings_allow_it_is_audited(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policies.toml").write_text("[local_train]\nallow_override = true\n")
    decision = require_training_allowed(tmp_path, {"ALLOW_LOCAL_TRAIN": "true"})
    assert decision.override
    assert _audit(tmp_path)[-1]["result"] == "allowed-override"


def test_training_inside_a_submitted_slurm_job_is_allowed(attested: Path) -> None:
    decision = require_training_allowed(attested, _submitted(attested))
    assert decision.allowed
    assert decision.job_id == "4242"
    assert _audit(attested)[-1]["result"] == "allowed"


def test_an_altered_submission_record_is_refused(attested: Path) -> None:
    env = _submitted(attested)
    record = Path(env[RECORD_ENV])
    record.write_text(record.read_text().replace('"c"', '"other-config"'))
    with pytest.raises(TrainingRefusedError, match="altered or replaced"):
        require_training_allowed(attested, env)


def test_a_record_without_the_schedulers_job_identity_is_refused(attested: Path) -> None:
    env = _submitted(attested)
    del env["SLURM_JOB_ID"]
    with pytest.raises(TrainingRefusedError, match="no SLURM_JOB_ID"):
        require_training_allowed(attested, env)


def test_a_record_for_another_commit_is_refused(attested: Path) -> None:
    env = _submitted(attested, commit="0" * 40)
    with pytest.raises(TrainingRefusedError, match="submitted for 000000000000"):
        require_training_allowed(attested, env)


def test_a_record_naming_another_attestation_is_refused(attested: Path) -> None:
    env = _submitted(attested)
    attestation = verify_attestation(attested).path
    attestation.write_text(attestation.read_text() + "\n")  # same statement, other bytes: another digest
    with pytest.raises(TrainingRefusedError, match="not the one the submission names"):
        require_training_allowed(attested, env)


def test_an_unsigned_attestation_is_refused_when_signatures_are_required(attested: Path) -> None:
    (attested / "policies" / "policies.toml").write_text("[attestation]\nrequire_signature = true\n")
    _commit_all(attested, "require signatures")
    write_attestation(attested, GateResult(gate=Gate.ci, root=str(attested), rules=[]), None)
    with pytest.raises(TrainingRefusedError, match=r"attestation does not verify.*unsigned"):
        require_training_allowed(attested, _submitted(attested))
