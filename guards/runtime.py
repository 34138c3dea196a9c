"""Runtime checks that train and serve call before doing anything: kept free of heavy imports.

`require_serving_allowed(checkpoint)` lets a server load weights only when a trust root is configured, the
checkpoint's provenance verifies against that trust root's provenance keys (never the current directory's
policies/keys), and every file the folder holds is covered by it or is the trainer's own state
(guards.checkpoint_files); it audits either way.

`require_training_allowed()` lets training start only inside a cluster job started by `oracle submit`: the job's
environment carries the submission record's digest and path; the record must verify (guards.submission: signed by a
submission key of the trust root, naming the commit, tree, attestation and lock of the code that runs, which is the
job's read-only export of the commit), and the scheduler, not the environment, must confirm that this process runs
inside the job carrying that digest (guards.job_identity: `squeue`/`scontrol listpids`/slurmstepd ancestry on SLURM,
the pod's annotation through the Kubernetes API). Everywhere else it refuses with one clear line.
`ALLOW_LOCAL_TRAIN=true` overrides only when both policies.toml (`local_train.allow_override`) and the trust root's
policy floor allow it (the embedded floor does not). Every decision is appended to the audit log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oracle_base.errors import Refused


class TrainingRefusedError(Refused):
    """Training may not start here; the message says why and what to do instead."""


@dataclass(frozen=True)
class TrainingDecision:
    allowed: bool
    reason: str
    job_id: str | None = None
    override: bool = False
    record: Any = None  # the verified guards.submission.SubmissionRecord (never read from its file again)

    @property
    def config_hash(self) -> str | None:
        """The submitted recipe's TrainConfig.sha256(), which training must use; None outside a submitted job."""
        return None if self.record is None else str(self.record.config_hash)


def _code_root() -> Path:
    """The checkout (or export) this module was imported from: the code that runs, which the record must name."""
    return Path(__file__).resolve().parents[1]


def _job_identity(environ: Mapping[str, str], target: str, digest: str, spec_hash: str) -> str:
    """The job id once the scheduler confirms this process runs in the job carrying `digest`; JobIdentityError
    otherwise (an environment that merely names a job proves nothing)."""
    from guards.job_identity import JobIdentityError, verify_k8s_pod, verify_slurm_job

    if target == "slurm":
        job_id = environ.get("SLURM_JOB_ID", "")
        if not job_id:
            raise JobIdentityError("no SLURM_JOB_ID: the record must be used inside its job")
        verify_slurm_job(job_id, digest, environ, spec_hash=spec_hash)
        return job_id
    verify_k8s_pod(digest, environ)
    return environ["POD_NAME"]


def _override_allowed(root: Path, environ: Mapping[str, str]) -> bool:
    from guards.trust import load_trust_root, require_protected
    from policies.floor import floor_of
    from policies.settings import load_settings

    trust = load_trust_root(root, environ)
    if not trust.development:  # a floor that allows the override counts only in a trust root only root can change
        require_protected(trust, "ALLOW_LOCAL_TRAIN=true")
    floor = floor_of(trust).settings.local_train.allow_override
    return bool(floor and load_settings(root).local_train.allow_override)


def training_decision(root: Path, environ: Mapping[str, str], code_root: Path | None = None) -> TrainingDecision:
    """`root`: where the job keeps its state (the audit log, runs/); `code_root`: the code that runs (default: the
    folder this module was imported from)."""
    from guards.job_identity import JobIdentityError
    from guards.submission import DIGEST_ENV, RECORD_ENV, SubmissionError, verify_submission
    from guards.trust import TrustError
    from policies.settings import SettingsError

    digest, record_path = environ.get(DIGEST_ENV), environ.get(RECORD_ENV)
    if digest and record_path:
        try:
            record = verify_submission(Path(record_path), digest, code_root or _code_root())
            job_id = _job_identity(environ, record.target, digest, record.spec_hash)
        except (SubmissionError, JobIdentityError) as exc:
            return TrainingDecision(False, f"training refused: {exc}")
        if record.kind != "train":
            return TrainingDecision(
                False, f"training refused: the submission record is for a {record.kind} job, not for training"
            )
        return TrainingDecision(
            True,
            f"submitted {record.target} job {job_id} for commit {record.commit[:12]} (confirmed by the scheduler)",
            job_id,
            record=record,
        )
    if environ.get("ALLOW_LOCAL_TRAIN", "false").lower() == "true":
        try:
            allowed = _override_allowed(root, environ)
        except (TrustError, SettingsError) as exc:
            return TrainingDecision(False, f"training refused: ALLOW_LOCAL_TRAIN=true cannot be checked: {exc}")
        if allowed:
            return TrainingDecision(True, "local training allowed by ALLOW_LOCAL_TRAIN=true (override)", override=True)
        return TrainingDecision(
            False,
            "training refused: ALLOW_LOCAL_TRAIN=true is not honoured (it needs local_train.allow_override = true in "
            "both policies.toml and the trust root's policy floor; allow_override = false); submit with "
            "`oracle submit --target slurm|k8s`",
        )
    return TrainingDecision(
        False,
        "training refused: not inside a job started by `oracle submit` (no ORACLE_SUBMISSION_DIGEST); "
        "submit with `oracle submit --target slurm|k8s`",
    )


def require_training_allowed(
    root: Path | None = None, environ: Mapping[str, str] | None = None, *, code_root: Path | None = None
) -> TrainingDecision:
    """Return the decision when training may start; raise TrainingRefusedError otherwise. Audits either way (in
    `root`, default the working directory: the checkout whose .oracle/ and runs/ the job writes)."""
    from guards.audit import append_entry

    root = (root or Path.cwd()).resolve()
    env = os.environ if environ is None else environ
    decision = training_decision(root, env, code_root)
    result = "allowed-override" if decision.override else "allowed" if decision.allowed else "refused"
    from guards import git

    commit = git.head_commit_or_none(code_root or _code_root()) if decision.job_id else git.head_commit_or_none(root)
    reason = decision.reason if decision.allowed else f"RUN001 {decision.reason}"  # a refusal names its rule
    details: dict[str, object] = {"reason": reason}
    if not decision.allowed:
        details["rule"] = "RUN001"
    append_entry(root, gate="train", result=result, commit=commit, details=details)
    if not decision.allowed:
        raise TrainingRefusedError(reason)
    return decision


class DataJobRefusedError(Refused):
    """A pipeline stage inside a submitted job that cannot show it runs what was submitted; one line, with why."""


def require_data_stage_allowed(
    stage: str, plan_digest: str, environ: Mapping[str, str] | None = None, *, code_root: Path | None = None
) -> str | None:
    """Inside a job `oracle submit --data` started (ORACLE_SUBMISSION_DIGEST set): the record must verify (signed,
    for the commit and attested tree that runs, with its lock), the scheduler must confirm this process runs in the
    job carrying it, and a data job's record must name this plan. Returns the job id, audited; raises
    DataJobRefusedError otherwise (audited too). Outside a job: None, nothing checked (processing data on one's own
    machine is no policy's concern; training is)."""
    from guards.audit import append_entry
    from guards.job_identity import JobIdentityError
    from guards.submission import DIGEST_ENV, RECORD_ENV, SubmissionError, verify_submission

    env = os.environ if environ is None else environ
    digest, record_path = env.get(DIGEST_ENV), env.get(RECORD_ENV)
    if not digest and not record_path:
        return None
    root = Path.cwd().resolve()
    code = code_root or _code_root()
    try:
        if not (digest and record_path):
            raise SubmissionError(f"{DIGEST_ENV} and {RECORD_ENV} must both be set in a submitted job")
        record = verify_submission(Path(record_path), digest, code)
        job_id = _job_identity(env, record.target, digest, record.spec_hash)
        # a data job's record names its plan; a training workflow's record (Argo: its data steps make the plan in
        # the workflow, from inputs its spec names) binds the spec, which the scheduler just confirmed this job runs
        if record.kind != "data" and record.target == "slurm":  # a SLURM training job's steps run no data stage
            raise SubmissionError("the submission record is a SLURM training job's; data stages need a data job's")
        if record.kind == "data" and record.config_hash != plan_digest:
            raise SubmissionError("the plan in --work is not the one the job was submitted with (its digest differs)")
    except (SubmissionError, JobIdentityError) as exc:
        reason = f"RUN003 data stage {stage} refused: {exc}"
        append_entry(root, gate="data", result="refused", commit=None, details={"reason": reason, "rule": "RUN003"})
        raise DataJobRefusedError(reason) from exc
    details: dict[str, object] = {"stage": stage, "job_id": job_id, "plan": plan_digest}
    append_entry(root, gate="data", result="allowed", commit=record.commit, details=details)
    return job_id


class ServingRefusedError(Refused):
    """These weights may not be served; the message says why and what to do instead."""


def require_serving_allowed(
    checkpoint: Path, root: Path | None = None, *, tokenizer: Path | None = None
) -> dict[str, Any]:
    """The verified provenance record of `checkpoint`, against the trust root only (whatever `root`, the current
    directory, holds under policies/keys); ServingRefusedError when no trust root is configured, the record does not
    verify, it does not cover every file the server needs (guards.checkpoint_files.missing_required), the folder
    holds a file it does not cover, or `tokenizer` (--tokenizer) is not the tokenizer it signs. Audits either way
    (gate `serve`)."""
    from guards import git
    from guards.audit import append_entry
    from guards.checkpoint_files import TOKENIZER, missing_required, uncovered_files, uncovered_message
    from guards.keys import SigningKeyError
    from guards.process_policy import unsealed_reads
    from guards.provenance import PROVENANCE_FILE, ProvenanceError, verify_provenance
    from guards.trust import TrustError, load_trust_root, require_protected

    root = (root or Path.cwd()).resolve()
    details: dict[str, object] = {"checkpoint": str(checkpoint)}
    reason = ""
    record: dict[str, Any] = {}
    try:
        trust = load_trust_root(root)
        details["trust"] = trust.describe()
        require_protected(trust, f"serving {checkpoint}")
        with unsealed_reads():  # hashing the weights is not loading them (the process policy is sealed below)
            record = verify_provenance(checkpoint, root, trust=trust)  # every file it lists, against the signed sha256
        files: dict[str, object] = record["files"]  # verify_provenance checked it is a mapping
        unlisted = missing_required(files)
        if unlisted:
            raise ProvenanceError(
                f"{checkpoint / PROVENANCE_FILE} does not list {', '.join(unlisted)}; serve a checkpoint `oracle "
                "train` wrote (it signs the weights, their config and the data's tokenizer)"
            )
        uncovered = uncovered_files(checkpoint, files)
        if uncovered:
            raise ProvenanceError(uncovered_message(checkpoint, uncovered))
        named = re.fullmatch(r"step-(\d{8})", checkpoint.name)
        if named and type(record.get("step")) is int and record["step"] != int(named.group(1)):
            raise ProvenanceError(
                f"{checkpoint} is named for step {int(named.group(1))} but its signed record is of step "
                f"{record['step']}: an older checkpoint put in its place; serve the folder `oracle train` named"
            )
        if tokenizer is not None and _sha256_or_none(tokenizer / TOKENIZER) != files[TOKENIZER]:
            raise ProvenanceError(
                f"--tokenizer {tokenizer}: its {TOKENIZER} is not the one {checkpoint / PROVENANCE_FILE} signs; "
                "drop --tokenizer (the checkpoint's own tokenizer is used)"
            )
    except (TrustError, ProvenanceError, SigningKeyError, OSError) as exc:
        reason = f"serving refused: {exc}"
    if not reason:
        details.update({k: record[k] for k in ("commit", "run", "step", "job_id") if k in record})
        from guards.process_policy import allow_and_seal

        # the process policy lets this process read these weights and no others (sealed: nothing widens it later)
        allow_and_seal(read_files=[checkpoint / name for name in record["files"]])
    else:
        reason = f"RUN002 {reason}"
        details.update(reason=reason, rule="RUN002")
    append_entry(
        root,
        gate="serve",
        result="refused" if reason else "allowed",
        commit=git.head_commit_or_none(root),
        details=details,
    )
    if reason:
        raise ServingRefusedError(reason)
    return record


def _sha256_or_none(path: Path) -> str | None:
    from oracle_base.digests import sha256_file

    return sha256_file(path) if path.is_file() else None
