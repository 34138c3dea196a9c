"""`oracle submit --target k8s|argo` and `oracle kill --target k8s|argo` through the CLI, from an attested checkout:
dry runs print validated specs and send nothing; without a kubeconfig or Argo server the spec is rendered with its
record and not applied; with a kubeconfig the training objects go to kubectl, with an Argo server the workflow goes to
its API (strict stand-ins for both: no Kubernetes cluster or Argo server can run here). A live job of this project for
the same commit and config is a duplicate on both, and the kill switch stops this project's jobs and no one else's."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guards.submission import DIGEST_ENV
from infra.k8s.validate import validate_manifests
from tests.checkouts import oracle
from tests.infra.test_argo import FakeArgo
from tests.infra.test_k8s import TRAINING_KINDS, FakeKubectl
from tests.trust import session_key

ARGS = ["--config", "oracle-mini", "--nodes", "1", "--gpus-per-node", "2", "--time", "01:00:00"]
NO_CLUSTER = {"KUBECONFIG": "/nonexistent/kubeconfig", "HOME": "/nonexistent", "ARGO_SERVER": ""}


def _submitter() -> dict[str, str]:
    """The submitter's key: a real submission (not a dry run) is signed by a submission key of the trust root."""
    return {"ORACLE_SIGNING_KEY": str(session_key())}


def _records(root: Path) -> set[str]:
    folder = root / ".oracle" / "submissions"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _env(documents: list[dict[str, object]]) -> dict[str, str]:
    for document in documents:
        if document["kind"] == "Job":
            container = document["spec"]["template"]["spec"]["containers"][0]
            return {item["name"]: item.get("value") for item in container["env"]}
    raise AssertionError("no Job")


def test_k8s_dry_run_prints_valid_manifests_and_writes_nothing(repository_checkout: Path) -> None:
    before = _records(repository_checkout)
    done = oracle(repository_checkout, "submit", "--target", "k8s", *ARGS, "--dry-run", env=NO_CLUSTER)
    assert done.returncode == 0, done.stderr
    documents = list(yaml.safe_load_all(done.stdout))
    validate_manifests(documents)
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Job") == 1
    assert {"ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment"} <= set(kinds)
    env = _env(documents)
    assert env["ALLOW_LOCAL_TRAIN"] == "false"
    assert env[DIGEST_ENV] == "0" * 64  # a dry run binds no record
    assert _records(repository_checkout) == before
    assert "dry run" in done.stderr


def test_k8s_without_a_kubeconfig_renders_the_bound_spec_and_applies_nothing(repository_checkout: Path) -> None:
    done = oracle(
        repository_checkout, "submit", "--target", "k8s", *ARGS, "--format", "json", env={**NO_CLUSTER, **_submitter()}
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["submitted"] is False
    assert "no kubeconfig" in answer["note"]
    spec = Path(answer["record"]).with_suffix(".yaml")
    documents = list(yaml.safe_load_all(spec.read_text()))
    assert _env(documents)[DIGEST_ENV] == answer["digest"]
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    (encoded,) = config_map["binaryData"].values()
    assert base64.b64decode(encoded) == Path(answer["record"]).read_bytes()  # the record the digest names


def _audit(root: Path, gate: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    return [entry for entry in entries if entry["gate"] == gate]


@pytest.fixture(scope="module")
def job_metadata(repository_checkout: Path) -> dict[str, dict[str, str]]:
    """The labels and annotations of the checkout's Job (its commit, the oracle-mini config): a duplicate's."""
    done = oracle(repository_checkout, "submit", "--target", "k8s", *ARGS, "--dry-run", env=NO_CLUSTER)
    assert done.returncode == 0, done.stderr
    job = next(d for d in yaml.safe_load_all(done.stdout) if d["kind"] == "Job")
    return {"labels": job["metadata"]["labels"], "annotations": job["metadata"]["annotations"]}


def _refused(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    for text in expected:
        assert text in line, line
    return str(line)


def test_k8s_with_a_kubeconfig_applies_the_training_objects(
    repository_checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = FakeKubectl(tmp_path, monkeypatch)  # no Job of ours yet
    done = oracle(
        repository_checkout, "submit", "--target", "k8s", *ARGS, "--format", "json", env={**kubectl.env, **_submitter()}
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["submitted"] is True
    assert answer["job_id"] == "oracle/oracle-train-oracle-mini"
    duplicates, names, call = kubectl.calls()
    assert duplicates["argv"][2:5] == ["get", "jobs", "--namespace"]
    assert "oracle.dev/commit=" in duplicates["argv"][7]  # the duplicate check selects on commit and config
    assert names["argv"][7] == "oracle.dev/project=oracle"  # a Job of the same name, finished or not
    assert call["argv"] == [
        "--kubeconfig",
        str(kubectl.kubeconfig),
        "apply",
        "--server-side",
        "--field-manager=oracle",
        "-f",
        "-",
    ]
    applied = list(yaml.safe_load_all(call["stdin"]))
    kinds = [d["kind"] for d in applied]
    assert kinds == list(TRAINING_KINDS)
    assert _env(applied)[DIGEST_ENV] == answer["digest"]
    assert kubectl.jobs() == ["oracle/oracle-train-oracle-mini"]


def test_k8s_refuses_to_replace_a_job_that_exists(
    repository_checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_metadata: dict[str, dict[str, str]]
) -> None:
    kubectl = FakeKubectl(tmp_path, monkeypatch)
    kubectl.add_job("oracle-train-oracle-mini", labels=job_metadata["labels"], state="Complete")  # an earlier commit's
    before = _records(repository_checkout)
    done = oracle(repository_checkout, "submit", "--target", "k8s", *ARGS, env={**kubectl.env, **_submitter()})
    _refused(done, "Job oracle/oracle-train-oracle-mini already exists (Complete;", "oracle kill --target k8s")
    assert [call["argv"][2] for call in kubectl.calls()] == ["get", "get"]  # nothing applied
    assert _records(repository_checkout) == before  # no record of a submission that did not happen


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_metadata: dict[str, dict[str, str]]) -> FakeKubectl:
    """A cluster (the kubectl stand-in) running the checkout's Job."""
    kubectl = FakeKubectl(tmp_path, monkeypatch)
    kubectl.add_job("oracle-train-oracle-mini", **job_metadata)
    return kubectl


def test_k8s_duplicate_is_refused_and_force_cannot_start_a_second_job_of_its_name(
    repository_checkout: Path, running: FakeKubectl
) -> None:
    root, kubectl = repository_checkout, running
    env = {**kubectl.env, **_submitter()}
    done = oracle(root, "submit", "--target", "k8s", *ARGS, env=env)
    _refused(
        done,
        "is already running as Kubernetes Job oracle/oracle-train-oracle-mini;",
        "cancel it (`oracle kill --target k8s`)",
        "--force cannot help",
    )
    assert _audit(root, "submit")[-1]["result"] == "refused"
    forced = oracle(root, "submit", "--target", "k8s", *ARGS, "--force", env=env)
    # past the duplicate check, Kubernetes itself holds one Job of that name
    _refused(forced, "Job oracle/oracle-train-oracle-mini already exists (Running;")
    assert [call["argv"][2] for call in kubectl.calls()] == ["get", "get"]  # the forced submit skipped the check
    assert kubectl.jobs() == ["oracle/oracle-train-oracle-mini"]


@pytest.fixture
def argo(job_metadata: dict[str, dict[str, str]]) -> Iterator[FakeArgo]:
    """An Argo server (the stand-in) running a workflow of the checkout."""
    with FakeArgo() as server:
        server.add("oracle-train-oracle-mini-a1b2c", **job_metadata)
        yield server


def test_argo_duplicate_is_refused_and_force_submits_a_second_workflow(
    repository_checkout: Path, argo: FakeArgo, job_metadata: dict[str, dict[str, str]]
) -> None:
    root = repository_checkout
    env = {**NO_CLUSTER, **argo.env, **_submitter()}
    done = oracle(root, "submit", "--target", "argo", *ARGS, env=env)
    _refused(
        done,
        "is already running as Argo Workflow oracle/oracle-train-oracle-mini-a1b2c;",
        "cancel it (`oracle kill --target argo`) or pass --force",
    )
    assert _audit(root, "submit")[-1]["result"] == "refused"
    assert len(argo.workflows) == 1
    forced = oracle(root, "submit", "--target", "argo", *ARGS, "--force", "--format", "json", env=env)
    assert forced.returncode == 0, forced.stderr
    answer = json.loads(forced.stdout)
    assert answer["submitted"] is True
    assert answer["job_id"] == "oracle/oracle-train-oracle-mini-00001"
    assert [method for method, _ in argo.calls()] == ["GET", "POST"]  # the forced one asked no duplicate question
    created = argo.workflows[1]["metadata"]
    assert created["annotations"]["oracle.dev/mark"] == job_metadata["annotations"]["oracle.dev/mark"]
    assert argo.refused == []
    assert _audit(root, "submit")[-1]["result"] == "submitted"


def test_kill_switch_on_k8s_deletes_only_this_projects_jobs_after_confirmation(
    repository_checkout: Path, running: FakeKubectl, job_metadata: dict[str, dict[str, str]]
) -> None:
    root, kubectl = repository_checkout, running
    kubectl.add_job("oracle-train-old", labels=job_metadata["labels"], state="Failed")
    kubectl.add_job("oracle-train-theirs", labels={**job_metadata["labels"], "oracle.dev/project": "oracle2"})
    kubectl.add_job("unlabelled", labels={})
    unconfirmed = oracle(root, "kill", "--target", "k8s", env=kubectl.env)  # no terminal to confirm on
    assert unconfirmed.returncode == 1
    assert "oracle/oracle-train-oracle-mini Running" in unconfirmed.stderr
    assert len(kubectl.jobs()) == 4
    killed = oracle(root, "kill", "--target", "k8s", "--yes", "--format", "json", env=kubectl.env)
    assert killed.returncode == 0, killed.stderr
    assert json.loads(killed.stdout)["cancelled"] == ["oracle/oracle-train-oracle-mini", "oracle/oracle-train-old"]
    assert kubectl.jobs() == ["oracle/oracle-train-theirs", "oracle/unlabelled"]
    entries = _audit(root, "kill")[-2:]
    assert [e["result"] for e in entries] == ["not-confirmed", "cancelled"]
    assert entries[-1]["details"]["target"] == "k8s"
    assert entries[-1]["details"]["cancelled"] == ["oracle/oracle-train-oracle-mini", "oracle/oracle-train-old"]


def test_kill_switch_on_argo_terminates_only_this_projects_live_workflows(
    repository_checkout: Path, argo: FakeArgo, job_metadata: dict[str, dict[str, str]]
) -> None:
    root = repository_checkout
    argo.add("oracle-train-oracle-mini-d3e4f", **job_metadata, phase="Succeeded")
    argo.add("theirs", {**job_metadata["labels"], "oracle.dev/project": "oracle2"})
    env = {**NO_CLUSTER, **argo.env}
    unconfirmed = oracle(root, "kill", "--target", "argo", env=env)
    assert unconfirmed.returncode == 1
    assert "oracle/oracle-train-oracle-mini-a1b2c Running" in unconfirmed.stderr
    assert [method for method, _ in argo.calls()] == ["GET"]
    killed = oracle(root, "kill", "--target", "argo", "--yes", "--format", "json", env=env)
    assert killed.returncode == 0, killed.stderr
    nothing = oracle(root, "kill", "--target", "argo", "--yes", env=env)
    assert nothing.returncode == 0, nothing.stderr
    assert json.loads(killed.stdout)["cancelled"] == ["oracle/oracle-train-oracle-mini-a1b2c"]
    assert argo.phases() == {
        "oracle-train-oracle-mini-a1b2c": "Failed",
        "oracle-train-oracle-mini-d3e4f": "Succeeded",
        "theirs": "Running",
    }
    assert "no queued or running argo job of project 'oracle'" in nothing.stdout
    assert argo.refused == []
    entries = _audit(root, "kill")[-3:]
    assert [e["result"] for e in entries] == ["not-confirmed", "cancelled", "nothing-to-cancel"]
    assert {e["details"]["target"] for e in entries} == {"argo"}


def test_kill_switch_on_argo_without_a_server_is_an_audited_error(repository_checkout: Path) -> None:
    done = oracle(repository_checkout, "kill", "--target", "argo", "--yes", env=NO_CLUSTER)
    assert done.returncode != 0
    assert "ARGO_SERVER is not set" in done.stderr
    assert _audit(repository_checkout, "kill")[-1]["result"] == "error"


def test_argo_dry_run_prints_a_valid_workflow(repository_checkout: Path) -> None:
    from infra.argo.workflow import validate_workflow

    done = oracle(repository_checkout, "submit", "--target", "argo", *ARGS, "--dry-run", env=NO_CLUSTER)
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load(done.stdout)
    validate_workflow(document)
    assert document["kind"] == "Workflow"
    names = [t["name"] for t in document["spec"]["templates"]]
    for step in ("data-init", "data-prepare", "data-cluster", "data-write", "data-finish", "tokenize", "train"):
        assert step in names


def test_k8s_refuses_a_request_over_the_gpu_cap(repository_checkout: Path) -> None:
    args = ["--config", "oracle-mini", "--nodes", "1", "--gpus-per-node", "16", "--dry-run"]
    done = oracle(repository_checkout, "submit", "--target", "k8s", *args, env=NO_CLUSTER)
    assert done.returncode == 1
    assert "cluster.max_gpus_per_node" in done.stderr
    assert done.stdout == ""
