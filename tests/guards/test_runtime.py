"""The training runtime check: only inside a job started by `oracle submit`, whose record verifies."""

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards.attestation import verify_attestation, write_attestation
from guards.keys import load_signing_key
from guards.result import GateResult
from guards.runtime import TrainingRefusedError, require_training_allowed
from guards.submission import DIGEST_ENV, RECORD_ENV, SubmissionRecord, new_record, write_submission_record
from policies.rule import Gate
from tests.trust import session_key

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
    write_attestation(tmp_path, GateResult(gate=Gate.ci, root=str(tmp_path), rules=[]), _key())
    return tmp_path


def _key() -> Ed25519PrivateKey:
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())})
    assert key is not None
    return key


def _submitted(root: Path, **overrides: str) -> dict[str, str]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    tree = subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=root, capture_output=True, text=True).stdout
    fields: dict[str, object] = {
        "commit": head,
        "tree": tree.strip(),
        "attestation_digest": verify_attestation(root).digest,
        "config_hash": "c",
        "spec_hash": "s",
        "target": "slurm",
        "lock_sha256": hashlib.sha256(b"").hexdigest(),
        "trust": {"development": False, "version": 1, "digest": "0" * 64},
        "audit": None,
        "waivers": [],
    }
    fields.update(overrides)
    record = root / "jobs" / "submission.json"
    digest = write_submission_record(record, new_record(**fields), _key())
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


def test_the_override_allowed_by_policies_toml_but_not_by_the_floor_is_refused(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policies.toml").write_text("[local_train]\nallow_override = true\n")
    with pytest.raises(TrainingRefusedError, match="trust root's policy floor"):
        require_training_allowed(tmp_path, {"ALLOW_LOCAL_TRAIN": "true"})
    assert _audit(tmp_path)[-1]["result"] == "refused"


def test_a_valid_record_with_an_environment_that_merely_names_a_job_is_refused(attested: Path) -> None:
    # SLURM_JOB_ID=4242 names a job no scheduler here knows: the record is valid, the job is not confirmed
    with pytest.raises(TrainingRefusedError, match=r"training refused: .*(SLURM|squeue)"):
        require_training_allowed(code_root=attested, root=attested, environ=_submitted(attested))
    assert _audit(attested)[-1]["result"] == "refused"


def test_a_record_signed_by_a_key_outside_the_trust_root_is_refused(attested: Path) -> None:
    from guards.keys import generate_keypair

    env = _submitted(attested)
    keys = attested / "jobs"  # ignored by git: the tree stays clean
    generate_keypair(keys / "other.pem", keys / "other.pub")
    record = Path(env[RECORD_ENV])
    fields = json.loads(base64.b64decode(json.loads(record.read_bytes())["payload"]))
    other = load_signing_key({"ORACLE_SIGNING_KEY": str(keys / "other.pem")})
    assert other is not None
    env[DIGEST_ENV] = write_submission_record(record, SubmissionRecord(**fields), other)
    with pytest.raises(TrainingRefusedError, match="not a submission key of the trust root"):
        require_training_allowed(code_root=attested, root=attested, environ=env)


def test_an_altered_submission_record_is_refused(attested: Path) -> None:
    env = _submitted(attested)
    record = Path(env[RECORD_ENV])
    record.write_bytes(record.read_bytes() + b" ")  # any change to the bytes changes the digest
    with pytest.raises(TrainingRefusedError, match="altered or replaced"):
        require_training_allowed(code_root=attested, root=attested, environ=env)


def test_a_record_without_the_schedulers_job_identity_is_refused(attested: Path) -> None:
    env = _submitted(attested)
    del env["SLURM_JOB_ID"]
    with pytest.raises(TrainingRefusedError, match="no SLURM_JOB_ID"):
        require_training_allowed(code_root=attested, root=attested, environ=env)


def test_a_record_for_another_commit_is_refused(attested: Path) -> None:
    env = _submitted(attested, commit="0" * 40)
    with pytest.raises(TrainingRefusedError, match="submitted for 000000000000"):
        require_training_allowed(code_root=attested, root=attested, environ=env)


def test_a_record_naming_another_attestation_is_refused(attested: Path) -> None:
    env = _submitted(attested)
    attestation = verify_attestation(attested).path
    attestation.write_text(attestation.read_text() + "\n")  # same statement, other bytes: another digest
    with pytest.raises(TrainingRefusedError, match="not the one the submission names"):
        require_training_allowed(code_root=attested, root=attested, environ=env)
