"""`oracle submit --target slurm` and `oracle kill --target slurm` against a real one-node SLURM cluster.

End to end: an attested checkout of this repository is submitted; the job runs `oracle train` (oracle-mini, two
CPU processes under torchrun, on the token shards at data/mini) to completion and writes a checkpoint whose signed
provenance names the commit, the attestation and the SLURM job id. Refusals leave the queue untouched; a duplicate
is refused; the kill switch cancels our jobs and leaves another's alone.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest

from guards.attestation import verify_attestation
from guards.provenance import verify_provenance
from guards.submission import load_record
from tests.checkouts import attest, git, make_repository_checkout, oracle
from tests.infra.slurm_cluster import SlurmCluster

SUBMIT = ["submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0", "--time", "00:15:00"]


def _audit(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]


def _last_submit_decision(root: Path) -> object:
    """The submit gate's latest result (jobs already running in the checkout append their own `train` entries)."""
    return [e for e in _audit(root) if e["gate"] == "submit"][-1]["result"]


def _queue(cluster: SlurmCluster) -> list[str]:
    return cluster.run("squeue", "--noheader", "--all", "--format=%i|%k").stdout.splitlines()


def _our_jobs(cluster: SlurmCluster) -> list[str]:
    return [line.split("|")[0] for line in _queue(cluster) if "|oracle:commit=" in line]


def test_submit_runs_oracle_train_to_completion(repository_checkout: Path, slurm_cluster: SlurmCluster) -> None:
    root = repository_checkout
    key = root.parent / "signing.pem"
    done = oracle(root, *SUBMIT, "--format", "json", env={**slurm_cluster.env, "ORACLE_SIGNING_KEY": str(key)})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    job_id = answer["job_id"]
    assert job_id.isdigit()
    assert answer["submitted"] is True
    record = load_record(Path(answer["record"]))  # a DSSE envelope signed by the submitter's key
    head = git(root, "rev-parse", "HEAD")
    attestation = verify_attestation(root)
    assert (record.commit, record.target, record.attestation_digest) == (head, "slurm", attestation.digest)

    state = slurm_cluster.wait_for_state(job_id, {"COMPLETED"}, timeout=600)
    log = root / "runs" / "slurm" / f"oracle-train-oracle-mini-{job_id}.out"
    assert state == "COMPLETED", log.read_text() if log.exists() else slurm_cluster.logs()
    run = root / "runs" / f"oracle-mini-{job_id}"
    final = run / "step-00000040"
    provenance = verify_provenance(final, root)  # signed with the key the job inherited from the submitter
    assert (provenance["commit"], provenance["job_id"], provenance["step"]) == (head, job_id, 40)
    assert provenance["attestation_digest"] == attestation.digest
    assert provenance["submission_digest"] == answer["digest"]
    assert "training finished" in log.read_text()
    assert git(root, "status", "--porcelain") == ""  # the job's outputs never dirty the tree
    decisions = [(e["gate"], e["result"]) for e in _audit(root)]
    assert ("submit", "submitted") in decisions
    assert decisions.count(("train", "allowed")) == 2  # one decision per rank, inside the job


def _refused(root: Path, cluster: SlurmCluster, reason: str) -> None:
    before = _our_jobs(cluster)
    done = oracle(root, *SUBMIT, env=cluster.env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert reason in lines[0], lines[0]
    assert done.stdout == ""
    assert _our_jobs(cluster) == before  # nothing reached the scheduler
    assert _last_submit_decision(root) == "refused"


def test_refusals_submit_nothing(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    root = make_repository_checkout(tmp_path)
    _refused(root, slurm_cluster, "no attestation")  # never attested

    attest(root, tmp_path / "signing.pem")
    (root / "notes.txt").write_text("uncommitted\n")
    _refused(root, slurm_cluster, "uncommitted changes (notes.txt)")

    git(root, "add", "notes.txt")
    git(root, "commit", "-qm", "a commit made after the attestation")
    _refused(root, slurm_cluster, "but HEAD is commit")  # stale: the attestation vouches for the previous commit

    attest(root, tmp_path / "signing.pem")
    (root / "data" / "mini" / "tokens" / "index.json").unlink()  # data is outside git: the job's inputs are checked
    weights = pickle.dumps({"w": [0.5] * 64}, protocol=4)  # a pickle by its content (opcodes to STOP), not its name
    (root / "data" / "mini" / "weights.bin").write_bytes(weights)
    _refused(root, slurm_cluster, "SUB003")


def test_duplicate_is_refused_and_the_kill_switch_cancels_only_ours(
    tmp_path: Path, repository_checkout: Path, slurm_cluster: SlurmCluster
) -> None:
    root = repository_checkout
    # the node is taken by another's job for the whole test, so ours stay queued (a duplicate is one that may still
    # run: a short training run could otherwise finish before the second submit's gate is done)
    blocker = slurm_cluster.sbatch("--exclusive", f"--output={tmp_path}/blocker-%j.out", "--wrap", "sleep 600")
    try:
        assert slurm_cluster.wait_for_state(blocker, {"RUNNING"}, timeout=60) == "RUNNING"
        _duplicates_and_kill(tmp_path, root, slurm_cluster)
    finally:
        slurm_cluster.run("scancel", blocker)


def _duplicates_and_kill(tmp_path: Path, root: Path, slurm_cluster: SlurmCluster) -> None:
    submitter = {**slurm_cluster.env, "ORACLE_SIGNING_KEY": str(root.parent / "signing.pem")}
    first = oracle(root, *SUBMIT, "--format", "json", env=submitter)
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["job_id"]

    again = oracle(root, *SUBMIT, env=submitter)
    assert again.returncode == 1
    (line,) = again.stderr.strip().splitlines()
    assert "already" in line
    assert f"SLURM job {job_id}" in line
    assert "--force" in line
    assert _last_submit_decision(root) == "refused"

    forced = oracle(root, *SUBMIT, "--force", "--format", "json", env=submitter)
    assert forced.returncode == 0, forced.stderr
    second = json.loads(forced.stdout)["job_id"]
    out = f"--output={tmp_path}/foreign-%j.out"
    foreign = [  # not ours: another project's mark, our job name without our mark, a name that fakes squeue fields
        slurm_cluster.sbatch(
            "--job-name=oracle-train-oracle-mini", "--comment=oracle2:commit=x:config=y", out, "--wrap", "sleep 300"
        ),
        slurm_cluster.sbatch("--job-name=x|RUNNING|root|oracle:commit=a:config=b", out, "--wrap", "sleep 300"),
    ]
    assert sorted(_our_jobs(slurm_cluster)) == sorted([job_id, second])

    unconfirmed = oracle(root, "kill", "--target", "slurm", env=slurm_cluster.env)  # no terminal to confirm on
    assert unconfirmed.returncode == 1
    assert sorted(_our_jobs(slurm_cluster)) == sorted([job_id, second])

    killed = oracle(root, "kill", "--target", "slurm", "--yes", "--format", "json", env=slurm_cluster.env)
    assert killed.returncode == 0, killed.stderr
    assert sorted(json.loads(killed.stdout)["cancelled"]) == sorted([job_id, second])
    # scancel returns before slurmctld has removed them; how fast is not asserted here (a loaded machine stretches
    # it), only that they go. A behaviour bound, not a timing claim: 30 s is far beyond any healthy cluster.
    deadline = time.monotonic() + 30
    while _our_jobs(slurm_cluster) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _our_jobs(slurm_cluster) == []
    assert slurm_cluster.job_state(job_id) == "CANCELLED"
    for other in foreign:
        assert slurm_cluster.job_state(other) in {"RUNNING", "PENDING"}  # not ours: left alone
    slurm_cluster.run("scancel", *foreign)
    assert [e["result"] for e in _audit(root) if e["gate"] == "kill"][-2:] == ["not-confirmed", "cancelled"]


@pytest.mark.parametrize("target", ["slurm"])
def test_dry_run_prints_the_script_and_sends_nothing(
    repository_checkout: Path, slurm_cluster: SlurmCluster, target: str
) -> None:
    before = _our_jobs(slurm_cluster)
    args = ["submit", "--target", target, "--config", "oracle-mini", "--gpus-per-node", "0", "--dry-run"]
    done = oracle(repository_checkout, *args, env=slurm_cluster.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/bin/bash\n")
    assert "export ALLOW_LOCAL_TRAIN=false" in done.stdout
    assert _our_jobs(slurm_cluster) == before
