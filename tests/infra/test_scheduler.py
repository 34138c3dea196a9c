"""The one scheduler interface (infra.scheduler) on Kubernetes and Argo, against their strict stand-ins (a recording
kubectl over a file of Jobs, a local Argo server; no cluster can run here): the duplicate check finds a live job of
this project for the same commit and config and nothing else, and the kill switch's listing and cancelling touch
this project's jobs only. SLURM's side runs against a real cluster (test_submit_slurm.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest

from infra.scheduler import (
    ArgoScheduler,
    KubernetesScheduler,
    ProjectJob,
    SlurmScheduler,
    scheduler_for,
)
from infra.spec import ClusterError, PartialCancelError, job_annotations, job_labels
from tests.infra.test_argo import FakeArgo, argo_request
from tests.infra.test_k8s import FakeKubectl, job_request
from tests.infra.test_k8s import kubectl as kubectl  # the fixture

OTHERS = {"oracle.dev/project": "oracle2", "app.kubernetes.io/part-of": "oracle2"}


def test_scheduler_for_names_each_target_and_refuses_others() -> None:
    kinds = {target: type(scheduler_for(target, environ={}, namespace="ml")) for target in ("slurm", "k8s", "argo")}
    assert kinds == {"slurm": SlurmScheduler, "k8s": KubernetesScheduler, "argo": ArgoScheduler}
    assert scheduler_for("k8s", environ={}, namespace="ml").namespace == "ml"
    with pytest.raises(ClusterError, match="no scheduler 'nomad'; the targets are slurm, k8s, argo"):
        scheduler_for("nomad", environ={}, namespace="ml")


# --- Kubernetes -----------------------------------------------------------------------------------------------------


def _k8s(kubectl: FakeKubectl) -> KubernetesScheduler:
    scheduler = scheduler_for("k8s", environ=kubectl.env, namespace="oracle")
    assert isinstance(scheduler, KubernetesScheduler)
    return scheduler


def test_k8s_duplicate_is_a_live_job_of_this_project_with_the_same_commit_and_config(kubectl: FakeKubectl) -> None:
    request = job_request()
    scheduler = _k8s(kubectl)
    assert scheduler.find_duplicate(request) is None
    # the same commit with another config whose hash shares the label's 16 characters: the annotation tells them apart
    other_config = job_request(config_hash="ab" * 8 + "cd" * 24)
    kubectl.add_job("older", labels=job_labels(other_config), annotations=job_annotations(other_config))
    kubectl.add_job("done", labels=job_labels(request), annotations=job_annotations(request), state="Complete")
    kubectl.add_job("failed", labels=job_labels(request), annotations=job_annotations(request), state="Failed")
    assert scheduler.find_duplicate(request) is None
    kubectl.add_job("theirs", labels={**job_labels(request), **OTHERS}, annotations=job_annotations(request))
    kubectl.add_job("elsewhere", namespace="ml", labels=job_labels(request), annotations=job_annotations(request))
    assert scheduler.find_duplicate(request) is None
    kubectl.add_job("oracle-train-oracle-mini", labels=job_labels(request), annotations=job_annotations(request))
    assert scheduler.find_duplicate(request) == ProjectJob(
        "oracle/oracle-train-oracle-mini", "oracle-train-oracle-mini", "Running", request.mark
    )
    selectors = {call["argv"][call["argv"].index("-l") + 1] for call in kubectl.calls()}
    assert selectors == {f"oracle.dev/project=oracle,oracle.dev/commit={'c' * 40},oracle.dev/config-hash={'ab' * 8}"}


def test_k8s_without_a_kubeconfig_finds_no_duplicate_and_asks_nothing(tmp_path: Path) -> None:
    scheduler = scheduler_for("k8s", environ={"KUBECONFIG": str(tmp_path / "none")}, namespace="oracle")
    assert scheduler.find_duplicate(job_request()) is None
    assert scheduler.conflict(job_request()) is None
    with pytest.raises(ClusterError, match=r"^no kubeconfig \(KUBECONFIG or ~/.kube/config\): cannot reach"):
        scheduler.list_project_jobs("oracle")


def test_k8s_a_job_of_the_same_name_conflicts_even_when_finished(kubectl: FakeKubectl) -> None:
    request = job_request()
    scheduler = _k8s(kubectl)
    kubectl.add_job("oracle-train-oracle-mini", labels=job_labels(request), state="Complete")
    assert scheduler.conflict(request) == (
        "Job oracle/oracle-train-oracle-mini already exists (Complete; a Job cannot be changed in place); delete it "
        "with `oracle kill --target k8s`, then submit"
    )
    assert scheduler.conflict(job_request(config_name="other")) is None


def test_k8s_kill_lists_and_deletes_this_projects_jobs_only(kubectl: FakeKubectl) -> None:
    request = job_request()
    kubectl.add_job("oracle-train-a", labels=job_labels(request))
    kubectl.add_job("oracle-train-b", labels=job_labels(request), state="Complete")
    kubectl.add_job("oracle-train-c", labels=OTHERS)  # another project's, our job name's prefix
    kubectl.add_job("oracle-train-d", namespace="ml", labels=job_labels(request))
    scheduler = _k8s(kubectl)
    jobs = scheduler.list_project_jobs("oracle")
    assert [job.describe() for job in jobs] == ["oracle/oracle-train-a Running", "oracle/oracle-train-b Complete"]
    assert scheduler.cancel(jobs) == ["oracle/oracle-train-a", "oracle/oracle-train-b"]
    assert kubectl.jobs() == ["oracle/oracle-train-c", "ml/oracle-train-d"]
    assert scheduler.list_project_jobs("oracle") == []


# --- Argo -----------------------------------------------------------------------------------------------------------


def _argo(argo: FakeArgo) -> ArgoScheduler:
    scheduler = scheduler_for("argo", environ=argo.env, namespace="oracle")
    assert isinstance(scheduler, ArgoScheduler)
    return scheduler


def test_argo_duplicate_is_a_pending_or_running_workflow_of_this_project_with_the_same_mark() -> None:
    request = argo_request()
    with FakeArgo() as argo:
        scheduler = _argo(argo)
        assert scheduler.find_duplicate(request) is None
        argo.add("done", job_labels(request), job_annotations(request), phase="Succeeded")
        argo.add("erred", job_labels(request), job_annotations(request), phase="Error")
        other_config = argo_request(config_hash="ab" * 8 + "cd" * 24)
        argo.add("other", job_labels(other_config), job_annotations(other_config))
        argo.add("theirs", {**job_labels(request), **OTHERS}, job_annotations(request))
        assert scheduler.find_duplicate(request) is None
        argo.add("oracle-train-oracle-mini-x1", job_labels(request), job_annotations(request), phase="")
        duplicate = scheduler.find_duplicate(request)
    assert duplicate == ProjectJob(
        "oracle/oracle-train-oracle-mini-x1", "oracle-train-oracle-mini-x1", "Pending", request.mark
    )
    assert argo.refused == []
    ((method, url),) = set(argo.calls())
    path, _, query = url.partition("?")
    assert (method, path) == ("GET", "/api/v1/workflows/oracle")
    selector = f"oracle.dev/project=oracle,oracle.dev/commit={'c' * 40},oracle.dev/config-hash={'ab' * 8}"
    assert parse_qs(query) == {"listOptions.labelSelector": [selector]}


def test_argo_without_a_server_finds_no_duplicate_and_cannot_kill() -> None:
    scheduler = scheduler_for("argo", environ={}, namespace="oracle")
    assert scheduler.find_duplicate(argo_request()) is None
    with pytest.raises(ClusterError, match=r"^ARGO_SERVER is not set; set it to the Argo server's host:port$"):
        scheduler.list_project_jobs("oracle")


def test_argo_kill_terminates_this_projects_live_workflows_only() -> None:
    request = argo_request()
    with FakeArgo() as argo:
        argo.add("ours-running", job_labels(request))
        argo.add("ours-pending", job_labels(request), phase="Pending")
        argo.add("ours-done", job_labels(request), phase="Succeeded")
        argo.add("theirs", OTHERS)
        scheduler = _argo(argo)
        jobs = scheduler.list_project_jobs("oracle")
        assert [job.describe() for job in jobs] == ["oracle/ours-running Running", "oracle/ours-pending Pending"]
        assert scheduler.cancel(jobs) == ["oracle/ours-running", "oracle/ours-pending"]
        assert scheduler.list_project_jobs("oracle") == []
    assert argo.phases() == {
        "ours-running": "Failed",
        "ours-pending": "Failed",
        "ours-done": "Succeeded",
        "theirs": "Running",
    }
    assert ("PUT", "/api/v1/workflows/oracle/ours-running/terminate") in argo.calls()
    assert argo.refused == []


def test_argo_kill_tries_every_workflow_and_names_the_ones_left() -> None:
    with FakeArgo() as argo:
        argo.add("a", job_labels(argo_request()))
        argo.add("b", job_labels(argo_request()))
        argo.failing.add("a")
        scheduler = _argo(argo)
        with pytest.raises(PartialCancelError) as caught:
            scheduler.cancel(scheduler.list_project_jobs("oracle"))
    assert caught.value.cancelled == ["oracle/b"]
    assert str(caught.value).startswith("could not stop 1 workflow(s): oracle/a (the Argo server http://127.0.0.1:")
    assert "answered PUT /api/v1/workflows/oracle/a/terminate with 409: the server refuses to terminate it" in str(
        caught.value
    )
    assert argo.phases() == {"a": "Running", "b": "Failed"}


def test_an_unreachable_argo_server_is_one_line() -> None:
    scheduler = scheduler_for("argo", environ={"ARGO_SERVER": "127.0.0.1:9", "ARGO_SECURE": "false"}, namespace="o")
    with pytest.raises(ClusterError, match=r"^the Argo server http://127.0.0.1:9 cannot be reached: ") as caught:
        scheduler.list_project_jobs("oracle")
    assert "\n" not in str(caught.value)
