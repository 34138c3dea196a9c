"""`oracle kill`: the kill switch. Stops every queued or running job of this project, and only this project's, on any
target through the one scheduler interface (infra.scheduler): on SLURM the jobs whose comment carries the project's
mark (`<project>:commit=…`), on Kubernetes the Jobs labelled `oracle.dev/project=<project>` in the project's
namespace (finished ones too: deleting them frees their names), on Argo the pending or running Workflows with that
label. The caller confirms the list first (or passes `--yes`); what was cancelled, or refused, is appended to the
audit log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.scheduler import scheduler_for
from infra.spec import ClusterError, PartialCancelError, Target
from policies.settings import load_settings


@dataclass
class KillReport:
    target: Target
    project: str
    found: list[str] = field(default_factory=list)  # what the switch would cancel, as "id [name] state"
    cancelled: list[str] = field(default_factory=list)  # the ids stopped: SLURM job ids, `<namespace>/<name>`
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
    target: Target,
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
        scheduler = scheduler_for(target, environ=env, namespace=settings.cluster.k8s_namespace)
        jobs = scheduler.list_project_jobs(project)
        report.found = [job.describe() for job in jobs]
        if jobs and confirm(report.found):
            report.confirmed = True
            try:
                report.cancelled = scheduler.cancel(jobs)
            except PartialCancelError as exc:
                report.cancelled = exc.cancelled
                raise
    except ClusterError as exc:
        _audit(root, "error", report, str(exc))
        raise
    result = "cancelled" if report.cancelled else "not-confirmed" if report.found else "nothing-to-cancel"
    _audit(root, result, report)
    return report
