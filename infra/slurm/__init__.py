"""The SLURM target: render the sbatch script, submit it with `sbatch --parsable`, find and cancel this project's jobs.

The scheduler is driven through its own clients (`sbatch`, `squeue`, `scancel`), which every SLURM site has and
which speak every Slurm version; PyPI's pyslurm binds one Slurm release only. A job is this project's when its
comment starts with `<project>:commit=` (`JobRequest.mark`); the same comment names the commit and config hash, which
is how a duplicate submission is found, and ends with `:digest=<submission digest>`, which the training runtime check
reads back from the controller (guards.job_identity) to bind the record to this job.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from guards.job_identity import DIGEST_FIELD, comment_for
from guards.startup import JOB_SITE_HOOK
from infra.spec import RENDEZVOUS_PORT, ClusterError, JobRequest, PartialCancelError

TEMPLATE = Path(__file__).with_name("train.sbatch.j2")
LOG_DIR = Path("runs") / "slurm"  # the jobs' output, relative to the checkout they run in
# States after which a job never runs again; squeue may still list them for a moment (everything else is live).
FINAL_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"}
)
# Free text (the comment, the name) goes last in each query, so a `|` in it cannot shift the other fields.
_STATE_FIELDS = "%i|%T|%u|%k"
_NAME_FIELDS = "%i|%j"


class SlurmError(ClusterError):
    """A SLURM client failed or is missing; the message is one line with the client's own words."""


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    name: str
    state: str
    user: str
    comment: str

    def belongs_to(self, project: str) -> bool:
        return self.comment.startswith(f"{project}:commit=")


def render_sbatch(
    request: JobRequest,
    env: Mapping[str, str],
    *,
    lock_sha256: str,
    log_dir: Path,
    digest: str,
    tree: str,
) -> str:
    """The batch script for `request`, bound to the submission `digest` (in its comment) and running from an export
    of the commit whose tree is `tree`; values that reach the shell are quoted. Nothing of the submitting shell
    reaches the job (--export=NONE): its trust root and its signing key (a provenance key) come from the cluster's
    own configuration (docs/security.md)."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, trim_blocks=False
    )
    environment.filters["shell"] = lambda value: shlex.quote(str(value))
    template = environment.from_string(TEMPLATE.read_text(encoding="utf-8"))  # training or the data stages
    return template.render(
        request=request,
        env=dict(env),
        root=request.root,
        venv=request.venv,
        lock_sha256=lock_sha256,
        log_dir=log_dir,
        comment=comment_for(request.mark, digest),
        tree=tree,
        port=RENDEZVOUS_PORT,
        site_hook=JOB_SITE_HOOK,
    )


def _client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"`{name}` is not on PATH: run `oracle submit --target slurm` on a SLURM login node")
    return path


def _run(args: list[str], *, stdin: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            text=True,
            env=None if environ is None else dict(environ),
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"`{' '.join(args[:2])}` did not answer within 60 s: is slurmctld reachable?") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise SlurmError(f"`{Path(args[0]).name}` failed: {said[-1] if said else f'exit {done.returncode}'}")
    return done.stdout


def submit(
    script: Path,
    *,
    options: list[str] | None = None,
    args: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """`sbatch --parsable [OPTIONS] SCRIPT [ARGS]`; returns the job id."""
    command = [_client("sbatch"), "--parsable", *(options or []), str(script), *(args or [])]
    out = _run(command, environ=environ).strip()
    job_id = out.split(";", 1)[0]  # "<id>[;<cluster>]"
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    return job_id


def queued_jobs(*, environ: Mapping[str, str] | None = None) -> list[SlurmJob]:
    """Every job squeue lists (all users): queued, running or completing."""
    squeue = _client("squeue")
    states = _run([squeue, "--noheader", "--all", f"--format={_STATE_FIELDS}"], environ=environ)
    names = _run([squeue, "--noheader", "--all", f"--format={_NAME_FIELDS}"], environ=environ)
    name_of = dict(line.split("|", 1) for line in names.splitlines() if "|" in line)
    jobs = []
    for line in states.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            job_id, state, user, comment = parts
            jobs.append(SlurmJob(job_id.strip(), name_of.get(job_id, "").strip(), state.strip(), user.strip(), comment))
    return jobs


def project_jobs(project: str, *, environ: Mapping[str, str] | None = None) -> list[SlurmJob]:
    """This project's jobs that may still run (by the comment `<project>:commit=…`, never by the name)."""
    return [job for job in queued_jobs(environ=environ) if job.belongs_to(project) and job.state not in FINAL_STATES]


def find_duplicate(request: JobRequest, *, environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """A queued or running job of this project for the same commit and config."""
    for job in project_jobs(request.project, environ=environ):
        if job.comment == request.mark or job.comment.startswith(f"{request.mark}:{DIGEST_FIELD}"):
            return job
    return None


def cancel(job_ids: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    """`scancel` each job; returns the ids cancelled. A job that cannot be cancelled (another user's, without the
    rights) does not stop the others: the error names every job left, after all were tried."""
    scancel = _client("scancel")
    cancelled, failures = [], []
    for job_id in job_ids:
        try:
            _run([scancel, job_id], environ=environ)
        except SlurmError as exc:
            failures.append(f"{job_id} ({exc})")
        else:
            cancelled.append(job_id)
    if failures:
        raise PartialCancelError(cancelled, f"could not cancel {len(failures)} job(s): {'; '.join(failures)}")
    return cancelled
