"""`oracle submit --target k8s|argo` through the CLI, from an attested checkout: dry runs print validated specs and
send nothing; without a kubeconfig or Argo server the spec is rendered with its record and not applied; with a
kubeconfig the training objects go to kubectl (a recording stand-in: no Kubernetes cluster can run here)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import yaml

from guards.submission import DIGEST_ENV
from infra.k8s.validate import validate_manifests
from tests.checkouts import oracle
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
            container = document["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
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


def test_k8s_with_a_kubeconfig_applies_the_training_objects(
    repository_checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = FakeKubectl(tmp_path, monkeypatch)
    kubectl.answer(output="")  # no Job of ours yet
    env = {
        "KUBECONFIG": str(kubectl.kubeconfig),
        "PATH": os.environ["PATH"],
        "FAKE_KUBECTL_LOG": str(kubectl.log),
        **_submitter(),
    }
    done = oracle(repository_checkout, "submit", "--target", "k8s", *ARGS, "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["submitted"] is True
    assert answer["job_id"] == "oracle/oracle-train-oracle-mini"
    listing, call = kubectl.calls()
    assert listing["argv"][2:5] == ["get", "jobs", "--namespace"]
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


def test_k8s_refuses_to_replace_a_job_that_exists(
    repository_checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = FakeKubectl(tmp_path, monkeypatch)
    kubectl.answer(output="job.batch/oracle-train-oracle-mini\n")
    env = {
        "KUBECONFIG": str(kubectl.kubeconfig),
        "PATH": os.environ["PATH"],
        "FAKE_KUBECTL_LOG": str(kubectl.log),
        **_submitter(),
    }
    before = _records(repository_checkout)
    done = oracle(repository_checkout, "submit", "--target", "k8s", *ARGS, env=env)
    assert done.returncode == 1
    assert "already exists" in done.stderr
    assert [call["argv"][2] for call in kubectl.calls()] == ["get"]  # nothing applied
    assert _records(repository_checkout) == before  # no record of a submission that did not happen


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
