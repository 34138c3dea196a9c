"""Attack 1: training on a laptop with a submission record and a job id written by hand.

A record naming HEAD, the attestation's digest and the recipe hash, `ORACLE_SUBMISSION_*` and `SLURM_JOB_ID=4242`
in the environment let `oracle train` run to exit 0 and audit "allowed: submitted slurm job 4242". Now the record is
a DSSE envelope that only a submission key of the trust root can sign, and the scheduler itself (the real one-node
SLURM cluster of the tests: `squeue`, `scontrol listpids`, the slurmstepd the process descends from; no mock) must
confirm that the process runs inside the job whose comment carries the record's digest. Each form of the attack is
refused before anything is built, with one line and an audit entry; even a genuine record, signed by the trusted
submitter's own key, trains nowhere but inside its job.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest

from guards import git as guards_git
from guards.attestation import verify_attestation
from guards.job_identity import comment_for
from guards.keys import generate_keypair, load_signing_key
from guards.submission import DIGEST_ENV, RECORD_ENV, new_record, write_submission_record
from guards.trust import load_trust_root
from oracle.train.config import load_train_config
from tests.checkouts import oracle
from tests.infra.slurm_cluster import SlurmCluster

FORGED_JOB = "4242"


def _refused(root: Path, env: dict[str, str], *expected: str) -> str:
    """`oracle train` in the checkout with `env`: exit 1, one line on stderr naming `expected`, nothing trained,
    and the train gate's last audit entry says refused, for that reason."""
    done = oracle(root, "train", "--config", "oracle-mini", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: RUN001 training refused:"), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (root / "runs" / "oracle-mini").exists()
    entries = [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    reason = lines[0].removeprefix("error: ")
    mine = [e for e in entries if e["gate"] == "train" and e["details"].get("reason") == reason]  # a job may append too
    assert [e["result"] for e in mine][-1:] == ["refused"]
    return lines[0]


def _fields(root: Path, target: str = "slurm") -> dict[str, object]:
    """What `oracle submit` puts in a record for this checkout: HEAD, its tree, attestation, recipe and lock."""
    return {
        "commit": guards_git.head_commit(root),
        "tree": guards_git.head_tree(root),
        "attestation_digest": verify_attestation(root).digest,
        "config_hash": load_train_config("oracle-mini").sha256(),
        "spec_hash": "0" * 64,
        "target": target,
        "lock_sha256": hashlib.sha256((root / "requirements.lock").read_bytes()).hexdigest(),
        "trust": load_trust_root(root).describe(),
        "audit": None,
        "waivers": [],
    }


def _signed(root: Path, key: Path, name: str, target: str = "slurm") -> tuple[Path, str]:
    """A record as `oracle submit` writes it, signed with `key`; returns its path (outside the tree) and digest."""
    path = root.parent / "records" / f"{name}.json"
    digest = write_submission_record(
        path, new_record(**_fields(root, target)), load_signing_key({"ORACLE_SIGNING_KEY": str(key)})
    )
    return path, digest


def _job_env(record: Path, digest: str, job_id: str, cluster: SlurmCluster) -> dict[str, str]:
    return {**cluster.env, DIGEST_ENV: digest, RECORD_ENV: str(record), "SLURM_JOB_ID": job_id}


@pytest.fixture
def root(repository_checkout: Path) -> Path:
    return repository_checkout


def test_the_hand_written_record_of_the_report_is_refused(root: Path, slurm_cluster: SlurmCluster) -> None:
    """The attack as reported: plain JSON with HEAD, the attestation's digest and the recipe hash."""
    path = root.parent / "records" / "by-hand.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(_fields(root)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _refused(root, _job_env(path, digest, FORGED_JOB, slurm_cluster), "by-hand.json is malformed")


def test_a_record_signed_with_the_users_own_key_is_refused(
    root: Path, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    generate_keypair(tmp_path / "mine.pem", tmp_path / "mine.pub")
    path, digest = _signed(root, tmp_path / "mine.pem", "self-signed")
    _refused(root, _job_env(path, digest, FORGED_JOB, slurm_cluster), "not a submission key of the trust root")


def test_a_genuine_record_with_a_job_id_the_controller_does_not_know_is_refused(
    root: Path, slurm_cluster: SlurmCluster
) -> None:
    assert slurm_cluster.job_state(FORGED_JOB) is None  # no such job on this cluster
    path, digest = _signed(root, root.parent / "signing.pem", "genuine-4242")
    _refused(
        root,
        _job_env(path, digest, FORGED_JOB, slurm_cluster),
        f"the SLURM controller does not know job {FORGED_JOB}",
    )


def test_a_genuine_record_with_the_id_of_another_running_job_is_refused(
    root: Path, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    path, digest = _signed(root, root.parent / "signing.pem", "genuine-other")
    other = slurm_cluster.sbatch(f"--output={tmp_path}/other-%j.out", "--wrap", "sleep 300")
    try:
        assert slurm_cluster.wait_for_state(other, {"RUNNING"}, timeout=60) == "RUNNING"
        _refused(
            root,
            _job_env(path, digest, other, slurm_cluster),
            f"SLURM job {other} does not carry this submission's digest",
        )
    finally:
        slurm_cluster.run("scancel", other)


def test_a_process_beside_the_genuine_job_is_refused(root: Path, slurm_cluster: SlurmCluster) -> None:
    """`oracle submit` starts the real job; the user then trains beside it, outside the job, with that job's own
    record, digest and id: everything the controller says about the job checks out, but this process is not one of
    its processes. The job's own files lie in the checkout meanwhile (its export and its private sitecustomize under
    `.oracle/jobs/<id>/`): the refusal must be for what this process is, not for those files, so the command starts
    once the job has written them."""
    env = {**slurm_cluster.env, "ORACLE_SIGNING_KEY": str(root.parent / "signing.pem")}
    submit = ["submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0", "--force"]
    answer = json.loads(oracle(root, *submit, "--format", "json", env=env).stdout)
    job = answer["job_id"]
    try:
        assert slurm_cluster.wait_for_state(job, {"RUNNING"}, timeout=60) == "RUNNING"
        site_hook = root / ".oracle" / "jobs" / job / "site" / "sitecustomize.py"
        deadline = time.monotonic() + 60
        while not site_hook.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert site_hook.is_file(), f"job {job} never wrote {site_hook}"
        _refused(
            root,
            _job_env(Path(answer["record"]), answer["digest"], job, slurm_cluster),
            f"is not one of SLURM job {job}'s processes on this node",
        )
    finally:
        slurm_cluster.run("scancel", job)


def test_the_kubernetes_form_is_refused_off_a_pod(root: Path, slurm_cluster: SlurmCluster) -> None:
    path, digest = _signed(root, root.parent / "signing.pem", "genuine-k8s", target="k8s")
    env = {
        DIGEST_ENV: digest,
        RECORD_ENV: str(path),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "POD_NAME": "oracle-train-oracle-mini-0",
    }
    _refused(root, env, "no service-account token")


def test_an_altered_genuine_record_is_refused(root: Path, slurm_cluster: SlurmCluster) -> None:
    path, _ = _signed(root, root.parent / "signing.pem", "altered")
    document = json.loads(path.read_text())
    payload = json.loads(base64.b64decode(document["payload"]))
    payload["config_hash"] = "f" * 64  # another recipe
    document["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(document))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # the attacker recomputes the digest
    _refused(root, _job_env(path, digest, FORGED_JOB, slurm_cluster), "altered after signing")


def test_a_job_of_ones_own_making_that_carries_the_digest_is_refused(
    root: Path, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The user sbatches their own script with the record's digest in its comment and runs `oracle train` inside
    that real job (a slurmstepd of it is an ancestor, its pids are the job's): the controller's copy of the batch
    script is not the script the record was signed for, so the record is refused there too."""
    path, digest = _signed(root, root.parent / "signing.pem", "genuine-own-job")
    comment = comment_for("oracle:commit=x:config=y", digest)
    script = tmp_path / "own.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"cd {root}\n"
        f"export PYTHONPATH={root} {DIGEST_ENV}={digest} {RECORD_ENV}={path}\n"
        f"exec {root}/.venv/bin/oracle train --config oracle-mini\n"
    )
    script.chmod(0o755)
    out = tmp_path / "own.out"
    job = slurm_cluster.sbatch(f"--comment={comment}", f"--output={out}", str(script))
    state = slurm_cluster.wait_for_state(job, {"COMPLETED", "FAILED"}, timeout=120)
    text = out.read_text() if out.exists() else ""
    assert state == "FAILED", text + slurm_cluster.logs()
    assert f"SLURM job {job}'s batch script is not the one this submission was signed for" in text, text
    assert not (root / "runs" / "oracle-mini").exists()
    entries = [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    refused = [e for e in entries if e["gate"] == "train" and e["result"] == "refused"]
    assert "batch script is not the one" in refused[-1]["details"]["reason"]
