"""The Kubernetes target: manifests built from the client's typed models, validated strictly and offline against the
Kubernetes API schema, and applied, listed and deleted through kubectl (or the Python client without it)."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs

import kubernetes_validate
import pytest
import yaml

from guards.process_policy import OFFLINE_ENV
from infra import checks
from infra.k8s.apply import apply_manifests, delete_jobs, get_jobs, kubeconfig_present
from infra.k8s.manifests import (
    RUNS_DIR,
    serving_manifests,
    to_yaml,
    training_manifests,
)
from infra.k8s.validate import KUBERNETES_VERSION, validate_manifests
from infra.spec import (
    IMAGE_WORKDIR,
    K8S_RECORD_DIR,
    K8S_RECORD_PATH,
    RENDEZVOUS_PORT,
    ClusterError,
    JobRequest,
    SpecError,
    job_environment,
    job_labels,
)

DIGEST = "d" * 64
RECORD = json.dumps({"commit": "c" * 40, "target": "k8s"}, indent=2, sort_keys=True) + "\n"


def job_request(**changes: Any) -> JobRequest:
    request = JobRequest(
        target="k8s",
        project="oracle",
        config="oracle-mini",
        config_name="oracle-mini",
        config_hash="ab" * 32,
        commit="c" * 40,
        root=Path("/w"),
        nodes=2,
        gpus_per_node=8,
        procs_per_node=8,
        time="04:00:00",
        image="cr.yandex/oracle/oracle-train:lock-0123456789abcdef",
        venv=Path("/w/.venv"),
        partition="gpu",
        namespace="oracle",
    )
    return replace(request, **changes)


def manifests(request: JobRequest | None = None) -> list[dict[str, Any]]:
    request = request or job_request()
    env = job_environment(DIGEST, K8S_RECORD_PATH)
    return training_manifests(request, env, RECORD) + serving_manifests(request, digest=DIGEST)


# The kinds of the training objects, in the order they are applied.
TRAINING_KINDS = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    "NetworkPolicy",
    "Job",
)


def by_kind(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(documents, kind)["spec"]["template"]["spec"]
    return spec


# --- the manifests --------------------------------------------------------------------------------------------------


def test_training_and_serving_manifests_validate_strictly() -> None:
    documents = manifests()
    assert [d["kind"] for d in documents] == [*TRAINING_KINDS, "Deployment", "Service", "NetworkPolicy"]
    validate_manifests(documents)
    validate_manifests(manifests(job_request(nodes=1, gpus_per_node=0, procs_per_node=4)))


def test_default_schema_version_is_one_kubernetes_validate_ships() -> None:
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert KUBERNETES_VERSION in shipped


def test_every_object_carries_the_project_labels_annotations_and_namespace() -> None:
    request = job_request()
    documents = manifests(request)
    for document in documents[:7]:
        assert document["metadata"]["labels"] == job_labels(request)
    for document in documents:
        metadata = document["metadata"]
        assert metadata["namespace"] == "oracle"
        assert metadata["labels"]["oracle.dev/project"] == "oracle"
        assert metadata["annotations"] == {
            "oracle.dev/mark": request.mark,
            "oracle.dev/config-hash": "ab" * 32,
            "oracle.dev/commit": "c" * 40,
        }
    job_pod = by_kind(documents, "Job")["spec"]["template"]["metadata"]
    assert job_pod["labels"] == job_labels(request)
    serve_pod = by_kind(documents, "Deployment")["spec"]["template"]["metadata"]
    assert serve_pod["labels"]["oracle.dev/project"] == "oracle"
    assert serve_pod["labels"]["app.kubernetes.io/name"] == "oracle-serve"


def test_manifests_keep_api_version_kind_and_metadata_first() -> None:
    for document in manifests():
        assert list(document)[:3] == ["apiVersion", "kind", "metadata"]


def test_training_is_an_indexed_job_whose_ranks_find_rank_zero_by_dns() -> None:
    documents = manifests(job_request(nodes=4, procs_per_node=8))
    job = by_kind(documents, "Job")
    service = by_kind(documents, "Service", "oracle-train-oracle-mini")
    spec = job["spec"]
    assert job["metadata"]["name"] == "oracle-train-oracle-mini"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 4 * 3600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert pod["serviceAccountName"] == by_kind(documents, "ServiceAccount")["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == RENDEZVOUS_PORT
    pod_labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = pod["containers"]
    assert container["image"] == "cr.yandex/oracle/oracle-train:lock-0123456789abcdef"
    assert container["workingDir"] == IMAGE_WORKDIR
    assert container["command"] == [
        "torchrun",
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=oracle-train-oracle-mini-0.oracle-train-oracle-mini",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "oracle",
        "train",
        "--config",
        "oracle-mini",
        "--run-name",
        "oracle-mini-$(ORACLE_SUBMISSION_DIGEST)",
        "--resume",
        "auto",
    ]


def test_job_environment_carries_the_submission_and_the_pod_name() -> None:
    (container,) = pod_spec(manifests(), "Job")["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["ALLOW_LOCAL_TRAIN"]["value"] == "false"
    assert env["ORACLE_SUBMISSION_DIGEST"]["value"] == DIGEST
    assert env["ORACLE_SUBMISSION_RECORD"]["value"] == K8S_RECORD_PATH
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PYTHONUNBUFFERED"]["value"] == "1"


def test_record_configmap_holds_the_exact_bytes_at_the_record_path() -> None:
    documents = manifests()
    config_map = by_kind(documents, "ConfigMap")
    ((file_name, encoded),) = config_map["binaryData"].items()
    assert base64.b64decode(encoded).decode() == RECORD
    pod = pod_spec(documents, "Job")
    volume = next(v for v in pod["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"mountPath": K8S_RECORD_DIR, "name": volume["name"], "readOnly": True}
    assert f"{mount['mountPath']}/{file_name}" == K8S_RECORD_PATH


def test_checkpoints_are_a_shared_claim_that_serving_mounts_read_only() -> None:
    documents = manifests()
    claim = by_kind(documents, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    for kind, read_only in (("Job", False), ("Deployment", True)):
        pod = pod_spec(documents, kind)
        volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim"))
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == RUNS_DIR == f"{IMAGE_WORKDIR}/runs"
        assert mount.get("readOnly", False) is read_only


@pytest.mark.parametrize("gpus", [0, 8])
def test_gpu_limits_only_when_the_job_asks_for_gpus(gpus: int) -> None:
    """Training takes the node's GPUs; `oracle serve` runs on one device, so a serving pod asks for one."""
    documents = manifests(job_request(gpus_per_node=gpus))
    for kind, wanted in (("Job", gpus), ("Deployment", min(gpus, 1))):
        resources = pod_spec(documents, kind)["containers"][0].get("resources")
        assert resources == ({"limits": {"nvidia.com/gpu": str(wanted)}} if wanted else None)


def test_pods_run_as_non_root_without_privilege_escalation() -> None:
    for kind in ("Job", "Deployment"):
        pod = pod_spec(manifests(), kind)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_serving_runs_the_newest_checkpoint_of_the_submissions_run_behind_a_service_with_probes() -> None:
    documents = serving_manifests(job_request(), digest=DIGEST, replicas=3)
    deployment, service, egress = documents
    # the server reaches nothing: an Egress policy with no rule selecting its pods
    assert egress["spec"] == {
        "egress": [],
        "podSelector": {"matchLabels": deployment["spec"]["template"]["metadata"]["labels"]},
        "policyTypes": ["Egress"],
    }
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "oracle",
        "serve",
        "--checkpoint",
        f"{IMAGE_WORKDIR}/runs/oracle-mini-{DIGEST}",  # the folder the training Job's --run-name writes
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"containerPort": 8000, "name": "http"}]
    # the API key comes from a Secret the operator creates; without it the pod does not start (never open)
    (key,) = [item for item in container["env"] if item["name"] == "ORACLE_SERVE_API_KEY"]
    assert key == {
        "name": "ORACLE_SERVE_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "oracle-serve-api-key", "key": "api-key"}},
    }
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_rendered_manifests_pass_the_submit_gate_checks() -> None:
    request = job_request()
    assert checks.check_documents(manifests(request), request) == []


def test_a_job_name_too_long_for_pod_hostnames_is_refused() -> None:
    with pytest.raises(SpecError, match="exceeds 63 characters"):
        training_manifests(job_request(config_name="x" * 50, nodes=10), {}, RECORD)


def test_to_yaml_is_multi_document_and_round_trips() -> None:
    documents = manifests()
    text = to_yaml(documents)
    assert text.startswith("---\napiVersion: v1\nkind: ServiceAccount\n")
    assert text.count("---\n") == len(documents)
    assert list(yaml.safe_load_all(text)) == documents


# --- strict validation: what a broken manifest reports ------------------------------------------------------------


def _container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = pod_spec(documents, "Job")["containers"][0]
    return container


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (
            lambda d: _container(d).__setitem__("imagePullPolicyy", "Always"),
            "Job/oracle-train-oracle-mini: spec.template.spec.containers[0]: Additional properties are not allowed "
            "('imagePullPolicyy' was unexpected)",
        ),
        (
            lambda d: by_kind(d, "Job")["spec"].__setitem__("completions", "2"),
            "Job/oracle-train-oracle-mini: spec.completions: '2' is not of type 'integer'",
        ),
        (
            lambda d: _container(d).pop("name"),
            "Job/oracle-train-oracle-mini: spec.template.spec.containers[0]: 'name' is a required property",
        ),
        (
            lambda d: by_kind(d, "Service", "oracle-serve")["spec"]["ports"][0].__setitem__("port", "eighty"),
            "Service/oracle-serve: spec.ports[0].port: 'eighty' is not of type 'integer'",
        ),
        (
            lambda d: by_kind(d, "ConfigMap")["metadata"].__setitem__("labelz", {}),
            "ConfigMap/oracle-train-oracle-mini-submission: metadata: Additional properties are not allowed",
        ),
    ],
    ids=["unknown-field", "wrong-type", "missing-required", "wrong-type-serving", "unknown-metadata-field"],
)
def test_a_broken_manifest_is_rejected_naming_the_object_and_field(
    breakage: Callable[[list[dict[str, Any]]], object], expected: str
) -> None:
    documents = copy.deepcopy(manifests())
    breakage(documents)
    with pytest.raises(SpecError) as caught:
        validate_manifests(documents)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert f"Kubernetes {KUBERNETES_VERSION} schema, strict" in message


def test_an_unknown_kind_is_rejected() -> None:
    document = {"apiVersion": "batch/v1", "kind": "Jobb", "metadata": {"name": "x"}}
    with pytest.raises(SpecError, match=r"^Jobb/x: Kubernetes 1\.37 has no kind Jobb in apiVersion batch/v1"):
        validate_manifests([document])


# --- applying, listing, deleting: a recording kubectl stand-in -------------------------------------------------------

# A `kubectl` that knows the three command lines oracle runs (server-side apply from stdin; get jobs by a label selector
# as JSON; delete one named job while it carries the selector's labels) and fails on anything else, an unknown flag or
# a selector other than `k=v[,k=v]`. Its cluster is a JSON file of Jobs: apply adds the Jobs it is given, delete
# removes them, get selects on namespace and labels as the API server does.
FAKE_KUBECTL = """#!{python}
import json, os, re, sys
import yaml

def refuse(message):
    sys.stderr.write("fake kubectl: " + message + "\\n")
    sys.exit(2)

def selector(text):
    wanted = {{}}
    for part in text.split(","):
        if not re.fullmatch(r"[a-z0-9./-]+=[A-Za-z0-9._-]+", part):
            refuse("selector " + repr(text) + " is not key=value[,key=value]")
        key, value = part.split("=")
        wanted[key] = value
    return wanted

argv = sys.argv[1:]
stdin = sys.stdin.read()
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps({{"argv": argv, "stdin": stdin}}) + "\\n")
state_file = os.environ["FAKE_KUBECTL_STATE"]
with open(state_file) as handle:
    state = json.load(handle)
if state["error"]:
    sys.stderr.write(state["error"])
    sys.exit(1)
args = argv[2:] if argv[:1] == ["--kubeconfig"] else argv
jobs = state["jobs"]
if args == ["apply", "--server-side", "--field-manager=oracle", "-f", "-"]:
    for document in yaml.safe_load_all(stdin):
        meta = document["metadata"]
        if document["kind"] == "Job":
            jobs.append({{"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "status": {{}}}})
        print(document["kind"].lower() + "/" + meta["name"] + " serverside-applied")
elif len(args) == 8 and args[:3] == ["get", "jobs", "--namespace"] and args[4] == "-l" and args[6:] == ["-o", "json"]:
    namespace, wanted = args[3], selector(args[5])
    items = [
        job for job in jobs
        if job["metadata"]["namespace"] == namespace
        and all(job["metadata"].get("labels", {{}}).get(k) == v for k, v in wanted.items())
    ]
    print(json.dumps({{"apiVersion": "v1", "kind": "List", "items": items}}))
elif (
    len(args) == 13 and args[:3] == ["delete", "jobs", "--namespace"] and args[4] == "-l"
    and args[6] == "--field-selector" and args[7].startswith("metadata.name=")
    and args[8:] == ["--ignore-not-found", "--cascade=foreground", "--wait=false", "-o", "name"]
):
    namespace, wanted, name = args[3], selector(args[5]), args[7].split("=", 1)[1]
    found = [
        j for j in jobs
        if j["metadata"]["name"] == name and j["metadata"]["namespace"] == namespace
        and all(j["metadata"].get("labels", {{}}).get(k) == v for k, v in wanted.items())
    ]
    for job in found:
        jobs.remove(job)
        print("job.batch/" + name)
else:
    refuse("unknown command " + repr(args))
with open(state_file, "w") as handle:
    json.dump(state, handle)
"""

JOB_STATUS = {
    "Pending": {},
    "Running": {"active": 1},
    "Complete": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    "Failed": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]},
}


class FakeKubectl:
    """A strict `kubectl` first on PATH over a cluster of Jobs kept in a file; it records every argv and stdin."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log = directory / "calls.jsonl"
        self.state = directory / "cluster.json"
        self.state.write_text(json.dumps({"jobs": [], "error": ""}))
        script = directory / "bin" / "kubectl"
        script.parent.mkdir()
        script.write_text(FAKE_KUBECTL.format(python=sys.executable))
        script.chmod(0o755)
        self.kubeconfig = directory / "kubeconfig"
        self.kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_KUBECTL_LOG", str(self.log))
        monkeypatch.setenv("FAKE_KUBECTL_STATE", str(self.state))
        self.env = {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": os.environ["PATH"],
            "FAKE_KUBECTL_LOG": str(self.log),
            "FAKE_KUBECTL_STATE": str(self.state),
        }

    def _cluster(self) -> dict[str, Any]:
        cluster: dict[str, Any] = json.loads(self.state.read_text())
        return cluster

    def add_job(
        self,
        name: str,
        *,
        namespace: str = "oracle",
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        state: str = "Running",
    ) -> None:
        cluster = self._cluster()
        metadata = {"name": name, "namespace": namespace, "labels": labels or {}, "annotations": annotations or {}}
        cluster["jobs"].append(
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "status": JOB_STATUS[state]}
        )
        self.state.write_text(json.dumps(cluster))

    def fail_with(self, error: str) -> None:
        self.state.write_text(json.dumps({**self._cluster(), "error": error}))

    def jobs(self) -> list[str]:
        return [f"{job['metadata']['namespace']}/{job['metadata']['name']}" for job in self._cluster()["jobs"]]

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKubectl:
    return FakeKubectl(tmp_path, monkeypatch)


def test_apply_pipes_the_manifests_to_kubectl_server_side(kubectl: FakeKubectl) -> None:
    """Checks the command line and the YAML kubectl receives, not a real cluster (none can run here)."""
    documents = manifests()
    applied = apply_manifests(documents, kubeconfig=kubectl.kubeconfig)
    (call,) = kubectl.calls()
    assert call["argv"] == [
        "--kubeconfig",
        str(kubectl.kubeconfig),
        "apply",
        "--server-side",
        "--field-manager=oracle",
        "-f",
        "-",
    ]
    assert list(yaml.safe_load_all(call["stdin"])) == documents
    assert applied == [
        "ServiceAccount/oracle-jobs",
        "Role/oracle-jobs-pod-reader",
        "RoleBinding/oracle-jobs-pod-reader",
        "ConfigMap/oracle-train-oracle-mini-submission",
        "PersistentVolumeClaim/oracle-checkpoints",
        "Service/oracle-train-oracle-mini",
        "NetworkPolicy/oracle-train-oracle-mini-egress",
        "Job/oracle-train-oracle-mini",
        "Deployment/oracle-serve",
        "Service/oracle-serve",
        "NetworkPolicy/oracle-serve-egress",
    ]
    assert kubectl.jobs() == ["oracle/oracle-train-oracle-mini"]


def test_apply_without_a_kubeconfig_leaves_kubectl_its_default(kubectl: FakeKubectl) -> None:
    """Checks the command line only (no cluster here)."""
    apply_manifests(manifests()[:1], kubeconfig=None)
    assert kubectl.calls()[0]["argv"][:2] == ["apply", "--server-side"]


def test_jobs_are_listed_by_label_selector_and_deleted_by_name(kubectl: FakeKubectl) -> None:
    """Checks the command lines and how kubectl's JSON and `-o name` output is read, not a real cluster."""
    ours = {"oracle.dev/project": "oracle"}
    kubectl.add_job("oracle-train-a", namespace="ml", labels=ours)
    kubectl.add_job("oracle-train-b", namespace="ml", labels=ours, state="Complete")
    kubectl.add_job("oracle-train-c", namespace="ml", labels={"oracle.dev/project": "oracle2"})
    kubectl.add_job("oracle-train-d", namespace="other", labels=ours)
    listed = get_jobs("ml", ours, kubeconfig=kubectl.kubeconfig)
    assert [job["metadata"]["name"] for job in listed] == ["oracle-train-a", "oracle-train-b"]
    assert listed[1]["status"]["conditions"] == [{"type": "Complete", "status": "True"}]
    deleted = delete_jobs(["oracle-train-a", "oracle-train-b", "gone"], "ml", ours, kubeconfig=kubectl.kubeconfig)
    assert deleted == ["job.batch/oracle-train-a", "job.batch/oracle-train-b"]
    assert kubectl.jobs() == ["ml/oracle-train-c", "other/oracle-train-d"]
    listing, *deletions = (call["argv"] for call in kubectl.calls())
    config = ["--kubeconfig", str(kubectl.kubeconfig)]
    assert listing == [*config, "get", "jobs", "--namespace", "ml", "-l", "oracle.dev/project=oracle", "-o", "json"]
    assert deletions == [
        [
            *config,
            *("delete", "jobs", "--namespace", "ml", "-l", "oracle.dev/project=oracle"),
            *("--field-selector", f"metadata.name={name}", "--ignore-not-found", "--cascade=foreground"),
            *("--wait=false", "-o", "name"),
        ]
        for name in ("oracle-train-a", "oracle-train-b", "gone")
    ]
    assert delete_jobs([], "ml", ours, kubeconfig=kubectl.kubeconfig) == []
    assert len(kubectl.calls()) == 4  # nothing to delete asks nothing


def test_a_job_of_the_same_name_that_is_no_longer_ours_is_not_deleted(kubectl: FakeKubectl) -> None:
    """The kill switch lists, asks, then deletes: a Job replaced in between by another project's Job of the same name
    is left alone, since every delete carries the project's selector again."""
    kubectl.add_job("oracle-train-a", namespace="ml", labels={"oracle.dev/project": "someone-else"})
    assert delete_jobs(["oracle-train-a"], "ml", {"oracle.dev/project": "oracle"}, kubeconfig=None) == []
    assert kubectl.jobs() == ["ml/oracle-train-a"]


def test_no_jobs_listed_is_an_empty_list(kubectl: FakeKubectl) -> None:
    assert get_jobs("ml", {"oracle.dev/project": "oracle"}, kubeconfig=None) == []


def test_the_kubectl_stand_in_refuses_what_oracle_never_runs(kubectl: FakeKubectl) -> None:
    """The stand-in is strict, so a changed command line fails the tests rather than passing against a lenient fake."""
    with pytest.raises(ClusterError, match=r"fake kubectl: selector 'oracle.dev/project in \(oracle\)=' is not"):
        get_jobs("ml", {"oracle.dev/project in (oracle)": ""}, kubeconfig=None)
    kubectl.add_job("j", namespace="ml")
    for args in (["get", "pods"], ["delete", "jobs", "j", "--namespace", "ml"], ["apply", "-f", "-"]):
        done = subprocess.run(["kubectl", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 2, args
        assert done.stderr.startswith("fake kubectl: unknown"), done.stderr
    assert kubectl.jobs() == ["ml/j"]


def test_a_kubectl_failure_is_one_line_naming_kubectl_and_its_error(kubectl: FakeKubectl) -> None:
    kubectl.fail_with("\nerror: You must be logged in to the server (Unauthorized)\nsecond line\n")
    with pytest.raises(ClusterError) as caught:
        apply_manifests(manifests(), kubeconfig=kubectl.kubeconfig)
    assert str(caught.value) == "kubectl apply failed: error: You must be logged in to the server (Unauthorized)"
    with pytest.raises(ClusterError, match=r"^kubectl delete failed: error: You must be logged in"):
        delete_jobs(["j"], "ml", {"oracle.dev/project": "oracle"}, kubeconfig=None)


def test_kubeconfig_present_follows_kubectl(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\n")
    home = tmp_path / "home"
    assert kubeconfig_present({"KUBECONFIG": f"{tmp_path / 'missing'}{os.pathsep}{config}"}) == config
    assert kubeconfig_present({"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(home)}) is None
    assert kubeconfig_present({"HOME": str(home)}) is None
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("apiVersion: v1\n")
    assert kubeconfig_present({"HOME": str(home)}) == home / ".kube" / "config"


# --- without kubectl: the Python client against a stub API server -------------------------------------------------


class LocalApi:
    """A local HTTP server that records every request (method, path, query, body, headers) and answers each with
    `answer(request)`: a status and a JSON payload."""

    def __init__(self, answer: Callable[[dict[str, Any]], tuple[int, object]]) -> None:
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                path, _, query = self.path.partition("?")
                request = {"method": self.command, "path": path, "query": query, "body": body}
                api.requests.append({**request, "headers": dict(self.headers)})
                status, payload = answer(request)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _reply

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class StubApi(LocalApi):
    """A local HTTP server answering each (method, path) with a canned JSON reply and recording the requests."""

    def __init__(self, replies: dict[tuple[str, str], tuple[int, dict[str, Any]]]) -> None:
        super().__init__(
            lambda request: replies.get(
                (request["method"], request["path"]), (404, {"message": f"no stub for {request['path']}"})
            )
        )


@pytest.fixture
def without_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": server}}],
        "users": [{"name": "stub", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
        "current-context": "stub",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.usefixtures("without_kubectl")
def test_without_kubectl_the_client_lists_and_deletes_in_the_foreground(tmp_path: Path) -> None:
    """Checks the API requests the client makes, against a stub server (no cluster here): each Job is read, held to
    the project's label, and deleted on the precondition that it is still the object read (its uid)."""
    jobs = "/apis/batch/v1/namespaces/ml/jobs"
    ours = {"oracle.dev/project": "oracle"}
    item = {"metadata": {"name": "j1", "labels": ours}, "status": {"active": 1}}
    job_list = {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [item]}

    def job(name: str, labels: dict[str, str]) -> dict[str, Any]:
        metadata = {"name": name, "namespace": "ml", "uid": f"uid-{name}", "labels": labels}
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata}

    status = {"apiVersion": "v1", "kind": "Status", "status": "Success"}
    gone = {"kind": "Status", "message": 'jobs.batch "j2" not found', "code": 404}
    replies = {
        ("GET", jobs): (200, job_list),
        ("GET", f"{jobs}/j1"): (200, job("j1", ours)),
        ("DELETE", f"{jobs}/j1"): (200, status),
        ("GET", f"{jobs}/j2"): (404, gone),
        ("GET", f"{jobs}/j3"): (200, job("j3", {"oracle.dev/project": "someone-else"})),
    }
    with StubApi(replies) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        assert get_jobs("ml", ours, kubeconfig=kubeconfig) == [item]
        # j2 was gone already; j3 is another project's Job of that name now
        assert delete_jobs(["j1", "j2", "j3"], "ml", ours, kubeconfig=kubeconfig) == ["job.batch/j1"]
    listing = api.requests[0]
    assert parse_qs(listing["query"]) == {"labelSelector": ["oracle.dev/project=oracle"]}
    assert {k.lower(): v for k, v in listing["headers"].items()}["authorization"] == "Bearer t0ken"
    assert [(r["method"], r["path"]) for r in api.requests[1:]] == [
        ("GET", f"{jobs}/j1"),
        ("DELETE", f"{jobs}/j1"),
        ("GET", f"{jobs}/j2"),
        ("GET", f"{jobs}/j3"),
    ]
    body = json.loads(api.requests[2]["body"])
    assert body["preconditions"] == {"uid": "uid-j1"}
    assert body["propagationPolicy"] == "Foreground"


@pytest.mark.usefixtures("without_kubectl")
def test_without_kubectl_an_api_refusal_is_a_cluster_error(tmp_path: Path) -> None:
    forbidden = {"kind": "Status", "message": 'jobs.batch is forbidden: User "x" cannot list'}
    with StubApi({("GET", "/apis/batch/v1/namespaces/ml/jobs"): (403, forbidden)}) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        with pytest.raises(ClusterError) as caught:
            get_jobs("ml", {"oracle.dev/project": "oracle"}, kubeconfig=kubeconfig)
    assert str(caught.value) == (
        'listing jobs in namespace ml failed: 403 jobs.batch is forbidden: User "x" cannot list'
    )


@pytest.mark.usefixtures("without_kubectl")
def test_without_kubectl_an_unreadable_kubeconfig_is_a_cluster_error(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ClusterError, match=f"^kubeconfig {broken} cannot be loaded: "):
        apply_manifests(manifests()[:1], kubeconfig=broken)


def test_the_training_pod_may_read_pods_and_do_nothing_else() -> None:
    """The runtime check reads its own pod's digest annotation through the API server; the pod's service account
    gets `get` on pods in the namespace and no verb that could change a pod (or its annotation)."""
    documents = manifests()
    role, binding = by_kind(documents, "Role"), by_kind(documents, "RoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = by_kind(documents, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    job_pod = pod_spec(documents, "Job")
    assert job_pod["automountServiceAccountToken"] is True  # the token the check reads the pod with
    assert pod_spec(documents, "Deployment")["automountServiceAccountToken"] is False  # serving needs none


def test_the_training_pods_reach_their_peers_dns_and_the_declared_networks_only() -> None:
    documents = manifests(job_request(nodes=2, egress_cidrs=("10.96.0.1/32",)))
    validate_manifests(documents)
    policy = by_kind(documents, "NetworkPolicy", "oracle-train-oracle-mini-egress")["spec"]
    job_pods = by_kind(documents, "Job")["spec"]["template"]["metadata"]["labels"]
    assert policy["policyTypes"] == ["Egress"]
    assert policy["podSelector"]["matchLabels"].items() <= job_pods.items()  # it selects every pod of the job
    dns, peers, declared = policy["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {port["port"] for port in dns["ports"]} == {53}
    assert peers["to"][0]["podSelector"]["matchLabels"].items() <= job_pods.items()
    assert "ports" not in peers
    assert declared == {"to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}]}
    # the trainer's container runs through `oracle` with the Hub clients offline
    (container,) = pod_spec(documents, "Job")["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert {key: env.get(key) for key in OFFLINE_ENV} == OFFLINE_ENV
    assert container["command"][container["command"].index("-m") + 1] == "oracle"
    assert checks.check_runtime_layer(documents) == []
