"""`oracle kill`: the kill switch. Cancels every queued or running job of this project — and only this project's:
on SLURM the jobs whose comment carries the project's mark (`<project>:commit=…`), on Kubernetes the Jobs labelled
`oracle.dev/project=<project>` in the project's namespace. The caller confirms the list first (or passes `--yes`);
what was cancelled, or refused, is appended to the audit log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from infra import slurm
from infra.spec import ClusterError
from policies.settings import load_settings

KillTarget = Literal["slurm", "k8s"]


@dataclass
class KillReport:
    target: KillTarget
    project: str
    found: list[str] = field(default_factory=list)  # what the switch would cancel, as "id name state"
    cancelled: list[str] = field(default_factory=list)  # job ids (SLURM) or kind/name (Kubernetes)
    confirmed: bool = False


def _audit(root: Path, result: str, report: KillReport, reason: str = "") -> None:
    from guards import git
    from guards.audit import append_entry

    commit = git.head_commit_or_none(root)
    details: dict[str, object] = {"target": report.target, "project": report.project, "cancelled": report.cancelled}
    if reason:
        details["reason"] = reason
    append_entry(root, gate="kill", result=result, commit=commit, details=details)


def kill(
    root: Path,
    target: KillTarget,
    *,
    confirm: Callable[[list[str]], bool],
    environ: Mapping[str, str] | None = None,
) -> KillReport:
    """Find this project's jobs, ask `confirm(found)` (skipped when nothing is found), cancel them."""
    root = root.resolve()
    env = dict(os.environ if environ is None else environ)
    settings = load_settings(root)
    project = settings.cluster.project
    report = KillReport(target, project)
    try:
        if target == "slurm":
            jobs = slurm.project_jobs(project, environ=env)
            report.found = [f"{job.job_id} {job.name} {job.state}" for job in jobs]
            if jobs and confirm(report.found):
                report.confirmed = True
                try:
                    report.cancelled = slurm.cancel([job.job_id for job in jobs], environ=env)
                except slurm.PartialCancelError as exc:
                    report.cancelled = exc.cancelled
                    raise
        else:
            from infra.k8s.apply import delete_project_jobs, kubeconfig_present, list_project_jobs

            kubeconfig = kubeconfig_present(env)
            if kubeconfig is None:
                raise ClusterError("no kubeconfig (KUBECONFIG or ~/.kube/config): cannot reach the cluster")
            namespace = settings.cluster.k8s_namespace
            report.found = list_project_jobs(project, namespace, kubeconfig=kubeconfig)
            if report.found and confirm(report.found):
                report.confirmed = True
                report.cancelled = delete_project_jobs(project, namespace, kubeconfig=kubeconfig)
    except ClusterError as exc:
        _audit(root, "error", report, str(exc))
        raise
    result = "cancelled" if report.cancelled else "not-confirmed" if report.found else "nothing-to-cancel"
    _audit(root, result, report)
    return report
