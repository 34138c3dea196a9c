"""Runtime checks that train and serve call before doing anything: kept free of heavy imports.

`require_serving_allowed(checkpoint)` lets a server load weights only when a trust root is configured, the
checkpoint's provenance verifies against that trust root's provenance keys (never the current directory's
policies/keys), and every file the folder holds is covered by it or is the trainer's own state
(guards.checkpoint_files); it audits either way.

`require_training_allowed()` lets training start only inside a cluster job started by `oracle submit`: the job's
environment carries the submission record's digest and path, the record must verify (guards.submission), and the
scheduler's job identity must be present (SLURM_JOB_ID, or the pod name on Kubernetes). Everywhere else it refuses
with one clear line. `ALLOW_LOCAL_TRAIN=true` overrides only when policies.toml allows it
(`local_train.allow_override`, default false). Every decision is appended to the audit log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TrainingRefusedError(RuntimeError):
    """Training may not start here; the message says why and what to do instead."""


@dataclass(frozen=True)
class TrainingDecision:
    allowed: bool
    reason: str
    job_id: str | None = None
    override: bool = False
    config_hash: str | None = None  # the submitted recipe's TrainConfig.sha256(); training must use that recipe


def _job_identity(environ: Mapping[str, str], target: str) -> str | None:
    if target == "slurm":
        return environ.get("SLURM_JOB_ID") or None
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return environ.get("POD_NAME") or environ.get("HOSTNAME") or None
    return None


def training_decision(root: Path, environ: Mapping[str, str]) -> TrainingDecision:
    from guards.submission import DIGEST_ENV, RECORD_ENV, SubmissionError, verify_submission
    from policies.settings import load_settings

    digest, record_path = environ.get(DIGEST_ENV), environ.get(RECORD_ENV)
    if digest and record_path:
        try:
            record = verify_submission(Path(record_path), digest, root)
        except SubmissionError as exc:
            return TrainingDecision(False, f"training refused: {exc}")
        job_id = _job_identity(environ, record.target)
        if job_id is None:
            wanted = "SLURM_JOB_ID" if record.target == "slurm" else "a Kubernetes pod name (POD_NAME)"
            return TrainingDecision(False, f"training refused: no {wanted}; the record must be used inside its job")
        return TrainingDecision(
            True,
            f"submitted {record.target} job {job_id} for commit {record.commit[:12]}",
            job_id,
            config_hash=record.config_hash,
        )
    if environ.get("ALLOW_LOCAL_TRAIN", "false").lower() == "true":
        if load_settings(root).local_train.allow_override:
            return TrainingDecision(True, "local training allowed by ALLOW_LOCAL_TRAIN=true (override)", override=True)
        return TrainingDecision(
            False,
            "training refused: ALLOW_LOCAL_TRAIN=true is not honoured (policies.toml local_train.allow_override = "
            "false); submit with `oracle submit --target slurm|k8s`",
        )
    return TrainingDecision(
        False,
        "training refused: not inside a job started by `oracle submit` (no ORACLE_SUBMISSION_DIGEST); "
        "submit with `oracle submit --target slurm|k8s`",
    )


def require_training_allowed(root: Path | None = None, environ: Mapping[str, str] | None = None) -> TrainingDecision:
    """Return the decision when training may start; raise TrainingRefusedError otherwise. Audits either way."""
    from guards.audit import append_entry

    root = (root or Path.cwd()).resolve()
    env = os.environ if environ is None else environ
    decision = training_decision(root, env)
    result = "allowed-override" if decision.override else "allowed" if decision.allowed else "refused"
    from guards import git

    append_entry(
        root, gate="train", result=result, commit=git.head_commit_or_none(root), details={"reason": decision.reason}
    )
    if not decision.allowed:
        raise TrainingRefusedError(decision.reason)
    return decision


class ServingRefusedError(RuntimeError):
    """These weights may not be served; the message says why and what to do instead."""


def require_serving_allowed(
    checkpoint: Path, root: Path | None = None, *, tokenizer: Path | None = None
) -> dict[str, Any]:
    """The verified provenance record of `checkpoint`, against the trust root only (whatever `root`, the current
    directory, holds under policies/keys); ServingRefusedError when no trust root is configured, the record does not
    verify, it does not cover every file the server needs (guards.checkpoint_files.REQUIRED), the folder holds a file
    it does not cover, or `tokenizer` (--tokenizer) is not the tokenizer it signs. Audits either way (gate `serve`)."""
    from guards import git
    from guards.audit import append_entry
    from guards.checkpoint_files import REQUIRED, TOKENIZER, uncovered_files, uncovered_message
    from guards.keys import SigningKeyError
    from guards.provenance import PROVENANCE_FILE, ProvenanceError, verify_provenance
    from guards.trust import TrustError, load_trust_root, require_trusted

    root = (root or Path.cwd()).resolve()
    details: dict[str, object] = {"checkpoint": str(checkpoint)}
    reason = ""
    record: dict[str, Any] = {}
    try:
        trust = load_trust_root(root)
        details["trust"] = trust.describe()
        require_trusted(trust, f"serving {checkpoint}")
        record = verify_provenance(checkpoint, root, trust=trust)  # every file it lists, against the signed sha256
        files: dict[str, object] = record["files"]  # verify_provenance checked it is a mapping
        unlisted = [name for name in REQUIRED if name not in files]
        if unlisted:
            raise ProvenanceError(
                f"{checkpoint / PROVENANCE_FILE} does not list {', '.join(unlisted)}; serve a checkpoint `oracle "
                "train` wrote (it signs the weights, their config and the data's tokenizer)"
            )
        uncovered = uncovered_files(checkpoint, files)
        if uncovered:
            raise ProvenanceError(uncovered_message(checkpoint, uncovered))
        if tokenizer is not None and _sha256_or_none(tokenizer / TOKENIZER) != files[TOKENIZER]:
            raise ProvenanceError(
                f"--tokenizer {tokenizer}: its {TOKENIZER} is not the one {checkpoint / PROVENANCE_FILE} signs; "
                "drop --tokenizer (the checkpoint's own tokenizer is used)"
            )
    except (TrustError, ProvenanceError, SigningKeyError, OSError) as exc:
        reason = f"serving refused: {exc}"
    if not reason:
        details.update({k: record[k] for k in ("commit", "run", "step", "job_id") if k in record})
    else:
        details["reason"] = reason
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
    from guards.attestation import file_digest

    return file_digest(path) if path.is_file() else None
