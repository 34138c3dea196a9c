"""`oracle submit --target slurm --data WORK --output OUT`: the data pipeline's stages as gated SLURM jobs.

The same gate as training (infra/submit.py), in the same order, over a plan made with `oracle data stage init`
instead of a training recipe:
1. the tree is clean and the attestation verifies for HEAD; the running code is the checkout's;
2. the plan is readable, names absolute inputs, and the work and output folders lie outside the checkout (a job
   writing into the tree would leave it dirty);
3. the `submit` gate's policies pass;
4. the one script (infra/slurm/train.sbatch.j2, its data branch) is rendered and checked: SUB001, SUB002 (the locked
   venv), SUB004 (`-m oracle data stage` under the process policy);
5. no job of this project for the same commit and plan is queued or running (`--force` overrides);
6. the signed submission record (kind `data`, its config hash the plan's digest) is written, and the script is sent
   four times, each after the one before it succeeded: `prepare` as a job array of the plan's tasks, `cluster`,
   `write` as a job array, `finish`. Inside each job `oracle data stage` verifies the record, asks the scheduler
   whether it runs in the job carrying it, and checks the plan's digest (guards.runtime.require_data_stage_allowed).
Every decision is appended to the audit log. A stage that failed is resubmitted the same way: finished tasks are
no-ops (oracle/data/pipeline.py), so only what was left runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from guards.paths import SUBMISSIONS_DIR
from guards.submission import write_submission_record
from guards.trust import load_trust_root
from infra import slurm
from infra.scheduler import Scheduler, scheduler_for
from infra.spec import PENDING_DIGEST, ClusterError, JobRequest, image_for, job_labels, parse_time, spec_digest
from infra.submit import (
    Submission,
    SubmitRefusedError,
    _audit,
    _submitter_key,
    audited,
    check_rendered,
    preflight,
    refuse_duplicate,
    run_submit_gate,
    signed_record,
    submissions_lock,
)
from oracle_base.digests import sha256_file
from policies.settings import Settings, load_settings

STAGES = ("prepare", "cluster", "write", "finish")


def submit_data(
    root: Path,
    work: Path,
    output: Path,
    *,
    time: str = "24:00:00",
    dry_run: bool = False,
    force: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Submission:
    """Run the gate and, when it passes, submit the four stages (or render, for a dry run). Raises
    SubmitRefusedError, audited."""
    root = root.resolve()
    env = dict(os.environ if environ is None else environ)
    details: dict[str, object] = {"target": "slurm", "kind": "data", "work": str(work), "dry_run": dry_run}
    commit, outcome = audited(
        root, details, lambda commit: _submit(root, work, output, time, dry_run, force, env, commit)
    )
    result = "dry-run" if outcome.dry_run else "submitted"
    _audit(root, result, commit, {**details, "job_id": outcome.job_id, "digest": outcome.digest, "note": outcome.note})
    return outcome


def _plan_request(root: Path, work: Path, output: Path, time: str, commit: str) -> JobRequest:
    from oracle.data.pipeline import StageError, load_plan, plan_digest

    work, output = work.resolve(), output.resolve()
    for name, folder in (("--data", work), ("--output", output)):
        if folder.is_relative_to(root):
            raise SubmitRefusedError(
                f"{name} {folder} is inside the checkout: the job would write into the tree; use a folder on the "
                "cluster's shared filesystem outside it"
            )
    try:
        plan = load_plan(work)  # schema-checked: tasks 1..inputs, absolute strings, …
    except StageError as exc:
        raise SubmitRefusedError(str(exc)) from exc
    relative = [uri for uri in plan["inputs"] if "://" not in uri and not Path(uri).is_absolute()]
    if relative:
        raise SubmitRefusedError(
            f"the plan names the relative input {relative[0]!r}: the job runs elsewhere; run `oracle data stage init` "
            "again with absolute paths"
        )
    settings = load_settings(root)
    _check_inputs(plan["inputs"], settings)
    cluster = settings.cluster
    request = JobRequest(
        target="slurm",
        project=cluster.project,
        config=str(work),
        config_name=f"data-{work.name}",
        config_hash=plan_digest(work),
        commit=commit,
        root=root,
        nodes=1,
        gpus_per_node=0,
        procs_per_node=1,
        time=parse_time(time, cluster.max_hours),
        image=image_for(root, settings),
        venv=root / settings.venv.project_venv,
        partition=cluster.slurm_partition,
        namespace=cluster.k8s_namespace,
        egress_cidrs=tuple(cluster.egress_cidrs),
        kind="data",
        work=work,
        output=output,
        tasks=int(plan["tasks"]),
    )
    return replace(request, labels=job_labels(request))


def _check_inputs(inputs: list[str], settings: Settings) -> None:
    """The plan is where outside content enters: its inputs are judged like a reference in the tree (EXT002: no
    file of a foreign model repository, whatever the host spelling), and none is fetched in plain text."""
    from policies import text_references
    from policies.external_weights import family_of

    rules = settings.external_weights
    judge = text_references.Judge(
        allowed_namespaces=tuple(rules.allowed_namespaces),
        is_local_dir=lambda first: False,
        family_of=lambda value: family_of(value, tuple(rules.extra_forbidden_names)),
    )
    for uri in inputs:
        if uri.lower().startswith("http://"):
            raise SubmitRefusedError(f"the plan's input {uri} is fetched in plain text; use https:// (or a local copy)")
        reason = text_references.foreign_url(uri, judge) if "://" in uri else None
        if reason:
            raise SubmitRefusedError(f"EXT002 the plan's input {uri}: {reason}; a data job reads our own corpus only")


def _submit(
    root: Path, work: Path, output: Path, time: str, dry_run: bool, force: bool, env: dict[str, str], commit: str
) -> Submission:
    settings, attestation = preflight(root)
    request = _plan_request(root, work, output, time, commit)
    scheduler = scheduler_for("slurm", environ=env, namespace=request.namespace)
    run_submit_gate(root, [])

    lock_sha = sha256_file(root / settings.venv.lock)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    record_path = root / SUBMISSIONS_DIR / f"{stamp}-slurm-{request.config_name}.json"
    pending = scheduler.render(
        request, digest=PENDING_DIGEST, record_path=record_path, record_json="{}", lock_sha=lock_sha
    )
    check_rendered(scheduler, pending)
    spec_hash = spec_digest(pending.text)
    if dry_run:
        return Submission("slurm", request, pending.text, spec_hash, dry_run=True, note="dry run: nothing sent")
    trust = load_trust_root(root)
    signing_key = _submitter_key(trust, env, "slurm")
    with submissions_lock(root):
        if not force:
            refuse_duplicate(scheduler, request, "this plan")
        record = signed_record(root, request, attestation, spec_hash, lock_sha, trust)
        digest = write_submission_record(record_path, record, signing_key)
        spec_file = record_path.with_suffix(scheduler.spec_suffix)
        try:
            return _send(root, scheduler, request, record_path, digest, spec_file, spec_hash, lock_sha, commit, env)
        except BaseException:
            record_path.unlink(missing_ok=True)
            spec_file.unlink(missing_ok=True)
            raise


def _send(
    root: Path,
    scheduler: Scheduler,
    request: JobRequest,
    record_path: Path,
    digest: str,
    spec_file: Path,
    spec_hash: str,
    lock_sha: str,
    commit: str,
    env: dict[str, str],
) -> Submission:
    """The stages as a chain of sbatch calls, each after the one before it succeeded (SLURM's dependencies: the one
    thing here that the scheduler interface's single `submit` does not express)."""
    from oracle_base.atomic_write import write_atomically

    rendered = scheduler.render(request, digest=digest, record_path=record_path, record_json="", lock_sha=lock_sha)
    check_rendered(scheduler, rendered)
    write_atomically(spec_file, rendered.text.encode())
    _audit(root, "submitting", commit, {"target": "slurm", "kind": "data", "digest": digest, "spec_hash": spec_hash})
    (root / slurm.LOG_DIR).mkdir(parents=True, exist_ok=True)
    array = ["--array", f"0-{request.tasks - 1}"]
    sent: list[str] = []
    try:
        for stage in STAGES:
            options = ["--job-name", f"{request.job_name}-{stage}"]
            if sent:  # each stage only once every task of the one before it succeeded; never, if one failed
                options += ["--dependency", f"afterok:{sent[-1]}", "--kill-on-invalid-dep=yes"]
            if stage in ("prepare", "write"):
                options += array
            sent.append(slurm.submit(spec_file, options=options, args=[stage], environ=env))
    except BaseException:
        with contextlib.suppress(ClusterError):
            slurm.cancel(sent, environ=env)  # a chain cut short would never finish: nothing of it may stay queued
        raise
    note = ", ".join(f"{stage} {job}" for stage, job in zip(STAGES, sent, strict=True))
    outcome = Submission("slurm", request, rendered.text, spec_hash, dry_run=False, note=note)
    outcome.record_path, outcome.digest, outcome.job_id, outcome.submitted = record_path, digest, sent[-1], True
    return outcome
