"""`oracle submit`: the submit gate, the submission record, and the hand-over to SLURM, Kubernetes or Argo.

In order, and stopping at the first refusal with one line that says why (nothing reaches a scheduler then):
1. the tree is clean and the attestation verifies for HEAD (guards.attestation.verify_attestation);
2. the request is within policy (policies.toml `[cluster]` caps) and matches the recipe's world size;
3. the `submit` gate's policies pass over the job's recipe (venv, external weights, local train, architecture),
   the recipe's plan fits the requested GPUs (SUB005), and the job's data holds no foreign weights (SUB003);
4. the spec is rendered and checked (SUB001 ALLOW_LOCAL_TRAIN=false, SUB002 the locked venv or image);
5. no job of this project for the same commit and config is queued or running on the target (SLURM, Kubernetes,
   Argo: infra.scheduler; `--force` overrides);
6. the submission record is written and its digest put into the job's environment, then the job is submitted.
Every decision — refused, dry run, submitted — is appended to the audit log.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from guards import git
from guards.attestation import AttestationError, VerifiedAttestation, verify_attestation
from guards.audit import AuditError, current_anchor
from guards.keys import SigningKeyError, key_id, load_signing_key
from guards.paths import SUBMISSIONS_DIR
from guards.submission import new_record, write_submission_record
from guards.trust import SUBMISSION, TrustError, TrustRoot, load_trust_root, require_trusted
from infra import checks
from infra.scheduler import Rendered, Scheduler, scheduler_for
from infra.spec import (
    PENDING_DIGEST,
    ClusterError,
    JobRequest,
    SpecError,
    Target,
    image_for,
    job_labels,
    parse_time,
    spec_digest,
)
from oracle_base.digests import sha256_file
from oracle_base.errors import Refused
from policies.settings import Settings, SettingsError, load_settings

SUBMISSIONS_LOCK = SUBMISSIONS_DIR / ".lock"
LOCK_WAIT_S = 600
RECIPES_DIR = Path("oracle") / "moe850b" / "configs"


class SubmitRefusedError(Refused):
    """The submit gate refuses: nothing was submitted. The message is one line: why, and what to do."""


@dataclass(frozen=True)
class SubmitOptions:
    target: Target
    config: str = "oracle850b"
    nodes: int | None = None
    gpus_per_node: int | None = None
    time: str = "24:00:00"
    dry_run: bool = False
    force: bool = False


@dataclass
class Submission:
    """What `oracle submit` did: the rendered spec, the record (unless a dry run) and the scheduler's answer."""

    target: Target
    request: JobRequest
    spec: str
    spec_hash: str
    dry_run: bool
    record_path: Path | None = None
    digest: str | None = None
    job_id: str | None = None
    applied: list[str] = field(default_factory=list)
    submitted: bool = False
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "job_id": self.job_id,
            "record": None if self.record_path is None else str(self.record_path),
            "digest": self.digest,
            "spec_hash": self.spec_hash,
            "submitted": self.submitted,
            "dry_run": self.dry_run,
            "applied": self.applied,
            "note": self.note,
        }


def _resolve_recipe(root: Path, config: str) -> Path:
    """A preset name (the checkout's own recipes) or a path inside the checkout; must be committed."""
    path = root / RECIPES_DIR / f"{config}.yaml" if not Path(config).suffix else Path(config)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise SubmitRefusedError(
            f"--config {config}: {path} is outside the checkout; commit the recipe under {root} so the "
            "attestation covers it"
        )
    relative = path.relative_to(root).as_posix()
    if not path.is_file():
        raise SubmitRefusedError(f"--config {config}: no recipe at {relative}")
    if relative not in set(git.listed_files(root)):
        raise SubmitRefusedError(f"--config {config}: {relative} is not committed; commit it, then `make guards`")
    return path


def _shape(options: SubmitOptions, world: int, settings: Settings) -> tuple[int, int, int]:
    """(nodes, gpus per node, processes per node) for a recipe that trains on `world` processes."""
    cap = settings.cluster
    gpus = options.gpus_per_node if options.gpus_per_node is not None else min(cap.max_gpus_per_node, world)
    if gpus < 0:
        raise SpecError("--gpus-per-node must be 0 (CPU) or more")
    nodes = options.nodes if options.nodes is not None else max(1, world // gpus) if gpus else 1
    if nodes < 1:
        raise SpecError("--nodes must be at least 1")
    if nodes > cap.max_nodes:
        raise SpecError(
            f"--nodes {nodes} exceeds the policy's cap of {cap.max_nodes} (policies.toml cluster.max_nodes)"
        )
    if gpus > cap.max_gpus_per_node:
        raise SpecError(
            f"--gpus-per-node {gpus} exceeds the policy's cap of {cap.max_gpus_per_node} "
            "(policies.toml cluster.max_gpus_per_node)"
        )
    if nodes * gpus > cap.max_total_gpus:
        raise SpecError(
            f"{nodes} nodes × {gpus} GPUs = {nodes * gpus} exceeds the policy's cap of {cap.max_total_gpus} GPUs "
            "(policies.toml cluster.max_total_gpus)"
        )
    if gpus:
        procs = gpus
        if nodes * gpus != world:
            raise SpecError(
                f"{nodes} nodes × {gpus} GPUs = {nodes * gpus} processes, but the recipe trains on {world} "
                f"(parallelism.data); pass e.g. --nodes {max(1, world // gpus)} --gpus-per-node {min(gpus, world)}"
            )
    else:
        if world % nodes:
            raise SpecError(f"the recipe's {world} processes (parallelism.data) do not divide over {nodes} CPU nodes")
        procs = world // nodes
    return nodes, gpus, procs


def build_request(root: Path, options: SubmitOptions, settings: Settings, commit: str) -> tuple[JobRequest, Path, Path]:
    """The request, the recipe file and the job's data directory."""
    from oracle.moe850b.config import ConfigError
    from oracle.train.config import load_train_config

    recipe = _resolve_recipe(root, options.config)
    try:
        config = load_train_config(recipe)
    except ConfigError as exc:
        raise SubmitRefusedError(str(exc)) from exc
    nodes, gpus, procs = _shape(options, config.parallelism.data, settings)
    cluster = settings.cluster
    venv = root / settings.venv.project_venv
    request = JobRequest(
        target=options.target,
        project=cluster.project,
        config=recipe.relative_to(root).as_posix() if Path(options.config).suffix else options.config,
        config_name=config.name,
        config_hash=config.sha256(),
        commit=commit,
        root=root,
        nodes=nodes,
        gpus_per_node=gpus,
        procs_per_node=procs,
        time=parse_time(options.time, cluster.max_hours),
        image=image_for(root, settings),
        venv=venv,
        partition=cluster.slurm_partition,
        namespace=cluster.k8s_namespace,
        egress_cidrs=tuple(cluster.egress_cidrs),
    )
    request = replace(request, labels=job_labels(request))
    data_dir = Path(config.data.path)
    return request, recipe, data_dir if data_dir.is_absolute() else root / data_dir


def check_rendered(scheduler: Scheduler, rendered: Rendered) -> None:
    """Refuse a spec the submit gate's checks find a problem in (a schema error is a SpecError, refused as well)."""
    problems = scheduler.validate(rendered)
    if problems:
        raise SubmitRefusedError(f"the rendered {scheduler.name} spec fails the submit gate: {problems[0]}")


def refuse_duplicate(scheduler: Scheduler, request: JobRequest, what: str) -> None:
    """Step 5: refuse when a job of this project for the same commit and config (`what`) may still run."""
    duplicate = scheduler.find_duplicate(request)
    if duplicate is None:
        return
    remedy = (
        "or pass --force"
        if scheduler.allows_copies
        else f"--force cannot help: {scheduler.job_kind} names are unique, so a second one cannot start beside it"
    )
    raise SubmitRefusedError(
        f"commit {request.commit[:12]} with {what} is already {duplicate.state.lower()} as {scheduler.job_kind} "
        f"{duplicate.id}; cancel it (`oracle kill --target {scheduler.name}`) {remedy}"
    )


def _audit(root: Path, result: str, commit: str | None, details: dict[str, object]) -> None:
    from guards.audit import append_entry

    append_entry(root, gate="submit", result=result, commit=commit, details=details)


def audited(root: Path, details: dict[str, object], attempt: Callable[[str], Submission]) -> tuple[str, Submission]:
    """`attempt(commit)` for HEAD, with every refusal appended to the audit log and raised as SubmitRefusedError in one
    line; an unreadable file or malformed settings is audited as an error and raised as it is. Both kinds of job
    (training, the data pipeline) go through here."""
    commit: str | None = None
    try:
        commit = git.head_commit(root)
        return commit, attempt(commit)
    except (
        SubmitRefusedError,
        SpecError,
        ClusterError,
        AttestationError,
        TrustError,
        SigningKeyError,
        AuditError,
    ) as exc:
        reason = str(exc)
        _audit(root, "refused", commit, {**details, "reason": reason})
        raise SubmitRefusedError(reason) from exc
    except git.GitError as exc:
        _audit(root, "refused", commit, {**details, "reason": str(exc)})
        raise SubmitRefusedError(f"{root} is not a git checkout ({exc}); submit from the repository") from exc
    except (SettingsError, OSError) as exc:  # a malformed policies.toml, an unreadable file: audited, then reported
        with contextlib.suppress(Exception):
            _audit(root, "error", commit, {**details, "reason": str(exc)})
        raise


def submit(root: Path, options: SubmitOptions, environ: Mapping[str, str] | None = None) -> Submission:
    """Run the submit gate and, when it passes, submit (or render, for a dry run). Raises SubmitRefusedError."""
    root = root.resolve()
    env = dict(os.environ if environ is None else environ)
    details: dict[str, object] = {"target": options.target, "config": options.config, "dry_run": options.dry_run}
    commit, outcome = audited(root, details, lambda commit: _submit(root, options, env, commit))
    result = "dry-run" if outcome.dry_run else "submitted" if outcome.submitted else "rendered"
    _audit(
        root,
        result,
        commit,
        {
            **details,
            "job_id": outcome.job_id,
            "digest": outcome.digest,
            "spec_hash": outcome.spec_hash,
            "nodes": outcome.request.nodes,
            "gpus_per_node": outcome.request.gpus_per_node,
            "applied": outcome.applied,
        },
    )
    return outcome


def preflight(root: Path) -> tuple[Settings, VerifiedAttestation]:
    """Steps 1 of every submission: the running code is the checkout's, the tree is clean, HEAD is attested."""
    if not Path(__file__).resolve().is_relative_to(root):
        raise SubmitRefusedError(
            f"the running oracle code ({Path(__file__).parent.parent}) is not the checkout's ({root}); run the "
            "checkout's own `oracle` (its .venv, or PYTHONPATH set to the checkout): the spec is rendered from it"
        )
    settings = load_settings(root)
    dirty = git.dirty_paths(root)
    if dirty:
        shown = ", ".join(dirty[:3]) + (f" and {len(dirty) - 3} more" if len(dirty) > 3 else "")
        raise SubmitRefusedError(
            f"the tree has uncommitted changes ({shown}); commit them and run `make guards`, then submit"
        )
    return settings, verify_attestation(root, require_signature=settings.attestation.require_signature)


def run_submit_gate(root: Path, paths: list[str]) -> None:
    """Step 3: the `submit` gate's policies over `paths` (the job's recipe), refused at its first problem."""
    from guards.runner import run_gate
    from policies.rule import Gate

    gate = run_gate(root, Gate.submit, paths)
    if not gate.passed:
        first = (
            gate.errors[0]
            if gate.errors
            else (lambda f: f"{f.rule_id} {f.path}:{f.line}: {f.message}")(gate.findings[0])
        )
        count = len(gate.errors) + len(gate.findings)
        raise SubmitRefusedError(
            f"the submit gate failed ({count} problem{'s' if count > 1 else ''}; first: {first}); "
            "run `oracle guards run --gate submit` for all"
        )


def signed_record(
    root: Path, request: JobRequest, attestation: VerifiedAttestation, spec_hash: str, lock_sha: str, trust: TrustRoot
) -> Any:
    """Step 6's record, unsigned: what the job will run (commit, tree, attestation, config, spec, lock, kind) and
    under which trust root, audit head and waivers."""
    return new_record(
        commit=request.commit,
        tree=git.head_tree(root),
        attestation_digest=attestation.digest,
        config_hash=request.config_hash,
        spec_hash=spec_hash,
        target=request.target,
        lock_sha256=lock_sha,
        trust=trust.describe(),
        audit=current_anchor(root),
        waivers=list(attestation.statement["predicate"].get("waivers") or []),
        kind=request.kind,
    )


def _submit(root: Path, options: SubmitOptions, env: dict[str, str], commit: str) -> Submission:
    settings, attestation = preflight(root)
    request, recipe, data_dir = build_request(root, options, settings, commit)
    scheduler = scheduler_for(options.target, environ=env, namespace=request.namespace)
    run_submit_gate(root, [recipe.relative_to(root).as_posix()])
    from oracle.train.config import load_train_config

    problems = checks.check_plan(load_train_config(recipe), request, gpu=settings.cluster.gpu)
    problems += scheduler.check_inputs(request, data_dir)
    if problems:
        raise SubmitRefusedError(problems[0])

    lock_sha = sha256_file(root / settings.venv.lock)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    record_path = root / SUBMISSIONS_DIR / f"{stamp}-{options.target}-{request.config_name}.json"

    pending = scheduler.render(
        request, digest=PENDING_DIGEST, record_path=record_path, record_json="{}", lock_sha=lock_sha
    )
    check_rendered(scheduler, pending)
    spec_hash = spec_digest(pending.text)

    if options.dry_run:
        return Submission(options.target, request, pending.text, spec_hash, dry_run=True, note="dry run: nothing sent")
    trust = load_trust_root(root)
    signing_key = _submitter_key(trust, env, options.target)

    with submissions_lock(root):  # two submits of the same commit and config cannot both pass the duplicate check
        if not options.force:
            refuse_duplicate(scheduler, request, f"config {request.config_name}")
        record = signed_record(root, request, attestation, spec_hash, lock_sha, trust)
        digest = write_submission_record(record_path, record, signing_key)
        spec_file = record_path.with_suffix(scheduler.spec_suffix)
        try:
            return _send(root, scheduler, request, record_path, digest, spec_file, spec_hash, lock_sha, commit)
        except BaseException:
            # nothing reached the scheduler: no record may claim otherwise
            record_path.unlink(missing_ok=True)
            spec_file.unlink(missing_ok=True)
            raise


def _submitter_key(trust: TrustRoot, env: Mapping[str, str], target: str) -> Any:
    """The submitter's private key, once the trust root is a real one and names it for submissions."""
    require_trusted(trust, f"submitting to {target}")
    signing_key = load_signing_key(env)
    if signing_key is None:
        raise SubmitRefusedError(
            f"submitting to {target} refused: ORACLE_SIGNING_KEY is not set; point it at your submitter key (a "
            f"submission key of the trust root, {trust.label}); `--dry-run` needs none"
        )
    keyid = key_id(signing_key.public_key())
    if keyid not in trust.keys_for(SUBMISSION):
        raise SubmitRefusedError(
            f"submitting to {target} refused: ORACLE_SIGNING_KEY is key {keyid}, which is not a submission key of "
            f"the trust root ({trust.label}); ask its owners to add it (`oracle trust init --submission <key>.pub`)"
        )
    return signing_key


@contextlib.contextmanager
def submissions_lock(root: Path) -> Iterator[None]:
    """One submit at a time per checkout, from the duplicate check until the scheduler has the job."""
    path = root / SUBMISSIONS_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=LOCK_WAIT_S, fallback_to_soft=False)  # a real flock or an error, as the audit log
    try:
        lock.acquire()
    except Timeout as exc:
        raise SubmitRefusedError(
            f"another `oracle submit` has held {path} for {LOCK_WAIT_S} s; let it finish (or end it), then submit"
        ) from exc
    try:
        yield
    finally:
        lock.release()


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
) -> Submission:
    """Render the spec bound to the record, check it once more, audit the intent, then hand it to the scheduler."""
    from oracle_base.atomic_write import write_atomically

    record_json = record_path.read_text(encoding="utf-8")
    rendered = scheduler.render(
        request, digest=digest, record_path=record_path, record_json=record_json, lock_sha=lock_sha
    )
    check_rendered(scheduler, rendered)  # the final rendering differs from the checked one only by the digest
    outcome = Submission(
        scheduler.name, request, rendered.text, spec_hash, dry_run=False, record_path=record_path, digest=digest
    )
    write_atomically(spec_file, rendered.text.encode())
    conflict = scheduler.conflict(request)
    if conflict is not None:
        raise SubmitRefusedError(conflict)
    # the decision is on the audit log before anything reaches a scheduler (an audit failure stops here)
    _audit(root, "submitting", commit, {"target": scheduler.name, "digest": digest, "spec_hash": spec_hash})
    sent = scheduler.submit(rendered, spec_file)
    outcome.job_id, outcome.applied, outcome.note = sent.job_id, sent.applied, sent.note
    outcome.submitted = sent.job_id is not None
    return outcome


def describe(outcome: Submission) -> str:
    """The one-line human summary printed after the spec or job id."""
    if outcome.dry_run:
        return f"dry run: the {outcome.target} spec above passes the submit gate (spec sha256:{outcome.spec_hash[:16]})"
    record = f"record {outcome.record_path} sha256:{outcome.digest}"
    if outcome.submitted:
        return f"submitted {outcome.target} job {outcome.job_id} ({record})"
    return f"{outcome.note} ({record})"


def dumps(outcome: Submission) -> str:
    return json.dumps(outcome.as_json(), indent=2)
