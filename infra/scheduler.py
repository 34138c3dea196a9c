"""One interface over the three schedulers a job can go to (SLURM, Kubernetes, Argo Workflows), so that the submit
gate, its duplicate check and the kill switch are written once: render the spec, validate it, find a live job of this
project for the same commit and config, submit, list this project's jobs, cancel them. `scheduler_for` is the one
place that maps a target to its scheduler.

A job is this project's by what it carries, never by its name alone: on SLURM the comment `<project>:commit=…`, on
Kubernetes and Argo the label `oracle.dev/project=<project>` (selected by the API server, and checked again here). A
duplicate also carries the same mark (JobRequest.mark: project, commit and the full config hash): the SLURM comment,
the `oracle.dev/mark` annotation elsewhere.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guards import git
from infra import checks, slurm
from infra.spec import (
    K8S_RECORD_PATH,
    MARK_ANNOTATION,
    PROJECT_LABEL,
    ClusterError,
    JobRequest,
    PartialCancelError,
    Target,
    duplicate_labels,
    job_environment,
)


@dataclass(frozen=True)
class ProjectJob:
    """One job of this project as its scheduler lists it."""

    id: str  # what cancel() acts on and messages name: the SLURM job id, `<namespace>/<name>` on Kubernetes and Argo
    name: str
    state: str
    mark: str = ""  # JobRequest.mark of the submission that made it ("" when it carries none)
    # the project label it was listed by (Kubernetes, Argo): what a cancel holds it to again; not part of its identity
    project: str = field(default="", compare=False)

    def describe(self) -> str:
        """`<id> <name> <state>` (the name left out where the id already ends with it)."""
        return f"{self.id} {self.state}" if self.id.endswith(f"/{self.name}") else f"{self.id} {self.name} {self.state}"


@dataclass(frozen=True)
class Rendered:
    """A spec as it would reach the scheduler: its text, and its parsed documents (Kubernetes, Argo; none for SLURM)."""

    request: JobRequest
    text: str
    documents: list[dict[str, Any]]
    lock_sha: str  # the CPU lock's sha256, which the record binds and SUB002 checks the job against


@dataclass(frozen=True)
class Sent:
    """What the scheduler said: the job id (None when nothing was sent: no cluster configured), and what it holds."""

    job_id: str | None = None
    applied: list[str] = field(default_factory=list)
    note: str = ""


class Scheduler(ABC):
    """A target, bound to the caller's environment (the scheduler's clients and credentials) and to the project's
    Kubernetes namespace."""

    name: Target
    job_kind: str  # how messages name one of its jobs: "SLURM job"
    spec_suffix: str  # the rendered spec's file, beside the submission record
    # Whether --force can start a second job beside a duplicate (a Kubernetes namespace holds one Job of a name).
    allows_copies: bool = True

    def __init__(self, environ: Mapping[str, str], namespace: str) -> None:
        self.environ = dict(environ)
        self.namespace = namespace

    def check_inputs(self, request: JobRequest, data_dir: Path) -> list[str]:
        """Problems with what the job reads from this machine's filesystem (nothing, unless it shares it)."""
        return []

    @abstractmethod
    def render(
        self, request: JobRequest, *, digest: str, record_path: Path, record_json: str, lock_sha: str
    ) -> Rendered:
        """The spec bound to the submission `digest`, whose record is `record_path` here and `record_json` in full."""

    @abstractmethod
    def validate(self, rendered: Rendered) -> list[str]:
        """The submit gate's problems with the spec (SUB001, SUB002, SUB004); a schema error raises SpecError."""

    @abstractmethod
    def find_duplicate(self, request: JobRequest) -> ProjectJob | None:
        """A job of this project for the same commit and config that may still run (None also when no cluster is
        configured: nothing will be sent then)."""

    def conflict(self, request: JobRequest) -> str | None:
        """Why the scheduler cannot take this job whatever --force says, in one line (None when it can)."""
        return None

    @abstractmethod
    def submit(self, rendered: Rendered, spec_file: Path) -> Sent:
        """Hand the spec (also written to `spec_file`) to the scheduler."""

    @abstractmethod
    def list_project_jobs(self, project: str) -> list[ProjectJob]:
        """This project's jobs, and only this project's, that the kill switch stops."""

    @abstractmethod
    def cancel(self, jobs: Sequence[ProjectJob]) -> list[str]:
        """Stop these jobs; returns the ids stopped. PartialCancelError when some could not be, after all were tried."""


# --- SLURM ----------------------------------------------------------------------------------------------------------

_UNSAFE_PATH = re.compile(r"[\s%'\"$`\\]")


def _slurm_job(job: slurm.SlurmJob) -> ProjectJob:
    return ProjectJob(job.job_id, job.name, job.state, job.comment)


class SlurmScheduler(Scheduler):
    """sbatch, squeue and scancel (infra.slurm); the job runs from the shared filesystem."""

    name: Target = "slurm"
    job_kind = "SLURM job"
    spec_suffix = ".sbatch"

    def check_inputs(self, request: JobRequest, data_dir: Path) -> list[str]:
        if _UNSAFE_PATH.search(str(request.root)):
            return [
                f"the checkout path {str(request.root)!r} holds a space, quote, $, ` or %: sbatch options and the job "
                "script cannot carry it safely; move the checkout"
            ]
        problems, _ = checks.check_data_inputs(data_dir)  # the job reads this data from the shared filesystem
        return problems

    def render(
        self, request: JobRequest, *, digest: str, record_path: Path, record_json: str, lock_sha: str
    ) -> Rendered:
        text = slurm.render_sbatch(
            request,
            job_environment(digest, str(record_path)),
            lock_sha256=lock_sha,
            log_dir=request.root / slurm.LOG_DIR,
            digest=digest,
            tree=git.head_tree(request.root),
        )
        return Rendered(request, text, [], lock_sha)

    def validate(self, rendered: Rendered) -> list[str]:
        return checks.check_sbatch(rendered.text, rendered.request, rendered.lock_sha)

    def find_duplicate(self, request: JobRequest) -> ProjectJob | None:
        job = slurm.find_duplicate(request, environ=self.environ)
        return None if job is None else _slurm_job(job)

    def submit(self, rendered: Rendered, spec_file: Path) -> Sent:
        (rendered.request.root / slurm.LOG_DIR).mkdir(parents=True, exist_ok=True)
        return Sent(job_id=slurm.submit(spec_file, environ=self.environ))

    def list_project_jobs(self, project: str) -> list[ProjectJob]:
        return [_slurm_job(job) for job in slurm.project_jobs(project, environ=self.environ)]

    def cancel(self, jobs: Sequence[ProjectJob]) -> list[str]:
        return slurm.cancel([job.id for job in jobs], environ=self.environ)


# --- Kubernetes -----------------------------------------------------------------------------------------------------

# Job conditions after which a Job never runs again.
_FINISHED_JOB = frozenset({"Complete", "Failed"})


def _job_state(item: Mapping[str, Any]) -> str:
    status = item.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in _FINISHED_JOB:
            return str(condition["type"])
    return "Running" if status.get("active") else "Pending"


def _workflow_phase(item: Mapping[str, Any]) -> str:
    return str((item.get("status") or {}).get("phase") or "Pending")  # no phase yet: the controller has not seen it


def _owned(
    items: list[dict[str, Any]], project: str, namespace: str, state_of: Callable[[Mapping[str, Any]], str]
) -> list[ProjectJob]:
    """The listed objects that carry the project's label (the API server selected on it; this does not trust that)."""
    jobs = []
    for item in items:
        metadata = item.get("metadata") or {}
        if (metadata.get("labels") or {}).get(PROJECT_LABEL) != project:
            continue
        name = str(metadata.get("name") or "")
        mark = str((metadata.get("annotations") or {}).get(MARK_ANNOTATION) or "")
        job_id = f"{metadata.get('namespace') or namespace}/{name}"
        jobs.append(ProjectJob(job_id, name, state_of(item), mark, project))
    return jobs


class KubernetesScheduler(Scheduler):
    """kubectl (or the Python client) with the caller's kubeconfig; the training objects are applied server-side."""

    name: Target = "k8s"
    job_kind = "Kubernetes Job"
    spec_suffix = ".yaml"
    allows_copies = False

    def _kubeconfig(self) -> Path | None:
        from infra.k8s.apply import kubeconfig_present

        return kubeconfig_present(self.environ)

    def _jobs(self, labels: Mapping[str, str], namespace: str, kubeconfig: Path) -> list[ProjectJob]:
        from infra.k8s.apply import get_jobs

        items = get_jobs(namespace, labels, kubeconfig=kubeconfig)
        return _owned(items, labels[PROJECT_LABEL], namespace, _job_state)

    def _required_kubeconfig(self) -> Path:
        kubeconfig = self._kubeconfig()
        if kubeconfig is None:
            raise ClusterError("no kubeconfig (KUBECONFIG or ~/.kube/config): cannot reach the cluster")
        return kubeconfig

    def render(
        self, request: JobRequest, *, digest: str, record_path: Path, record_json: str, lock_sha: str
    ) -> Rendered:
        from infra.k8s.manifests import serving_manifests, to_yaml, training_manifests

        env = job_environment(digest, K8S_RECORD_PATH)  # the record travels in a ConfigMap, mounted there
        documents = training_manifests(request, env, record_json) + serving_manifests(request, digest=digest)
        return Rendered(request, to_yaml(documents), documents, lock_sha)

    def validate(self, rendered: Rendered) -> list[str]:
        from infra.k8s.validate import validate_manifests

        validate_manifests(rendered.documents)
        return checks.check_documents(rendered.documents, rendered.request)

    def find_duplicate(self, request: JobRequest) -> ProjectJob | None:
        kubeconfig = self._kubeconfig()
        if kubeconfig is None:
            return None
        for job in self._jobs(duplicate_labels(request), request.namespace, kubeconfig):
            if job.mark == request.mark and job.state not in _FINISHED_JOB:
                return job
        return None

    def conflict(self, request: JobRequest) -> str | None:
        kubeconfig = self._kubeconfig()
        if kubeconfig is None:
            return None
        for job in self._jobs({PROJECT_LABEL: request.project}, request.namespace, kubeconfig):
            if job.name == request.job_name:  # applying would replace its record under it
                return (
                    f"Job {job.id} already exists ({job.state}; a Job cannot be changed in place); delete it with "
                    "`oracle kill --target k8s`, then submit"
                )
        return None

    def submit(self, rendered: Rendered, spec_file: Path) -> Sent:
        from infra.k8s.apply import apply_manifests

        kubeconfig = self._kubeconfig()
        if kubeconfig is None:
            return Sent(note=f"no kubeconfig (KUBECONFIG or ~/.kube/config): rendered to {spec_file}, not applied")
        # the training objects only: serving starts once a checkpoint exists (its manifests are in the spec file)
        training = [d for d in rendered.documents if "oracle.dev/commit" in (d.get("metadata") or {}).get("labels", {})]
        applied = apply_manifests(training, kubeconfig=kubeconfig)
        request = rendered.request
        return Sent(job_id=f"{request.namespace}/{request.job_name}", applied=applied)

    def list_project_jobs(self, project: str) -> list[ProjectJob]:
        """Every Job of the project, finished ones too: deleting them is also what frees their names."""
        return self._jobs({PROJECT_LABEL: project}, self.namespace, self._required_kubeconfig())

    def cancel(self, jobs: Sequence[ProjectJob]) -> list[str]:
        from infra.k8s.apply import delete_jobs

        projects = {job.project for job in jobs}
        if len(projects) > 1 or "" in projects:  # fail closed: each delete is held to the one project it was listed by
            raise ClusterError(f"cannot cancel jobs of projects {sorted(projects)} at once; list one project's jobs")
        ids = {job.name: job.id for job in jobs}
        labels = {PROJECT_LABEL: projects.pop()} if projects else {}
        deleted = delete_jobs(list(ids), self.namespace, labels, kubeconfig=self._required_kubeconfig())
        return [ids.get(name.removeprefix("job.batch/"), name) for name in deleted]


# --- Argo -----------------------------------------------------------------------------------------------------------


class ArgoScheduler(Scheduler):
    """The Argo server's API (infra.argo.server); a workflow's name is generated, so copies can run side by side."""

    name: Target = "argo"
    job_kind = "Argo Workflow"
    spec_suffix = ".yaml"

    def _live(self, labels: Mapping[str, str], namespace: str) -> list[ProjectJob]:
        from infra.argo.server import LIVE_PHASES, argo_server, list_workflows

        server = argo_server(self.environ, namespace)
        found = _owned(list_workflows(server, labels), labels[PROJECT_LABEL], server.namespace, _workflow_phase)
        return [job for job in found if job.state in LIVE_PHASES]

    def render(
        self, request: JobRequest, *, digest: str, record_path: Path, record_json: str, lock_sha: str
    ) -> Rendered:
        from infra.argo.workflow import build_workflow, to_yaml

        document = build_workflow(request, job_environment(digest, K8S_RECORD_PATH), record_json)
        return Rendered(request, to_yaml(document), [document], lock_sha)

    def validate(self, rendered: Rendered) -> list[str]:
        from infra.argo.workflow import validate_workflow

        validate_workflow(rendered.documents[0])
        return checks.check_documents(rendered.documents, rendered.request)

    def find_duplicate(self, request: JobRequest) -> ProjectJob | None:
        from infra.argo.server import argo_configured

        if not argo_configured(self.environ):
            return None
        live = self._live(duplicate_labels(request), request.namespace)
        return next((job for job in live if job.mark == request.mark), None)

    def submit(self, rendered: Rendered, spec_file: Path) -> Sent:
        from infra.argo.server import argo_configured, submit_workflow

        if not argo_configured(self.environ):
            return Sent(note=f"no Argo API configured (ARGO_SERVER): rendered to {spec_file}, not submitted")
        return Sent(job_id=submit_workflow(rendered.documents[0], environ=self.environ))

    def list_project_jobs(self, project: str) -> list[ProjectJob]:
        """The project's workflows that are pending or running."""
        return self._live({PROJECT_LABEL: project}, self.namespace)

    def cancel(self, jobs: Sequence[ProjectJob]) -> list[str]:
        from infra.argo.server import argo_server, terminate_workflow

        server = argo_server(self.environ, self.namespace)
        cancelled, failures = [], []
        for job in jobs:
            namespace, _, name = job.id.rpartition("/")
            try:
                terminate_workflow(server, namespace, name)
            except ClusterError as exc:
                failures.append(f"{job.id} ({exc})")
            else:
                cancelled.append(job.id)
        if failures:
            raise PartialCancelError(cancelled, f"could not stop {len(failures)} workflow(s): {'; '.join(failures)}")
        return cancelled


_SCHEDULERS: dict[str, type[Scheduler]] = {
    "slurm": SlurmScheduler,
    "k8s": KubernetesScheduler,
    "argo": ArgoScheduler,
}


def scheduler_for(target: str, *, environ: Mapping[str, str], namespace: str) -> Scheduler:
    """The scheduler of `target` (slurm, k8s, argo), bound to `environ` and the project's Kubernetes namespace."""
    try:
        scheduler = _SCHEDULERS[target]
    except KeyError:
        raise ClusterError(f"no scheduler {target!r}; the targets are {', '.join(_SCHEDULERS)}") from None
    return scheduler(environ, namespace)
