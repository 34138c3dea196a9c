"""The Argo target: a data → tokenize → train → publish Workflow built from hera's typed models, validated offline
and strictly against Argo's schema as hera ships it, and submitted to an Argo server's API."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from infra import checks
from infra.argo.server import argo_configured, submit_workflow
from infra.argo.workflow import (
    DATA_STEPS,
    DEFAULT_REPO_ID,
    STEPS,
    build_workflow,
    to_yaml,
    validate_workflow,
)
from infra.k8s.validate import validate_manifests
from infra.spec import K8S_RECORD_PATH, ClusterError, JobRequest, SpecError, job_environment, job_labels
from tests.infra.test_k8s import DIGEST, RECORD, LocalApi, StubApi, job_request


def argo_request(**changes: Any) -> JobRequest:
    return replace(job_request(**changes), target="argo")


def workflow(request: JobRequest | None = None, **options: Any) -> dict[str, Any]:
    return build_workflow(request or argo_request(), job_environment(DIGEST, K8S_RECORD_PATH), RECORD, **options)


def templates(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {template["name"]: template for template in document["spec"]["templates"]}


def containers(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t["container"] for name, t in templates(document).items() if "container" in t}


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_workflow_validates(nodes: int) -> None:
    document = workflow(argo_request(nodes=nodes))
    assert (document["apiVersion"], document["kind"]) == ("argoproj.io/v1alpha1", "Workflow")
    validate_workflow(document)


def test_the_steps_run_data_tokenize_train_publish_in_order() -> None:
    document = workflow()
    pipeline = templates(document)[document["spec"]["entrypoint"]]
    order = [step["name"] for group in pipeline["steps"] for step in group if step["name"] in STEPS]
    assert order == [*DATA_STEPS, "tokenize", "train", "publish"]
    # the egress NetworkPolicy is created before any step runs
    assert [step["name"] for step in pipeline["steps"][0]] == ["network-policy"]
    assert [len([s for s in group if s["name"] in STEPS]) for group in pipeline["steps"][1:]] == [1] * 8
    # the data pipeline's per-task stages fan out to one pod per task, the others run once
    fanned = {s["name"]: s.get("withSequence") for group in pipeline["steps"] for s in group if s["name"] in DATA_STEPS}
    assert fanned == {
        "data-init": None,
        "data-prepare": {"count": 4},
        "data-cluster": None,
        "data-write": {"count": 4},
        "data-finish": None,
    }
    tasks = workflow(argo_request(), data_tasks=7)
    steps = templates(tasks)[tasks["spec"]["entrypoint"]]["steps"]
    assert [s.get("withSequence") for group in steps for s in group if s["name"] == "data-write"] == [{"count": 7}]
    with pytest.raises(SpecError, match="at least one task"):
        workflow(argo_request(), data_tasks=0)


def test_each_step_runs_oracle_in_the_locked_image_with_the_job_environment() -> None:
    request = argo_request()
    found = containers(workflow(request, repo_id="acme/model", data_inputs=["s3://corpus/a.jsonl.gz"]))
    assert set(found) == set(STEPS)
    for container in found.values():
        assert container["image"] == request.image
        env = {item["name"]: item for item in container["env"]}
        assert env["ALLOW_LOCAL_TRAIN"]["value"] == "false"
        assert env["ORACLE_SUBMISSION_DIGEST"]["value"] == DIGEST
        assert env["ORACLE_SUBMISSION_RECORD"]["value"] == K8S_RECORD_PATH
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    work = ["--work", "/data/work"]
    assert found["data-init"]["command"] == [
        *["oracle", "data", "stage", "init", *work, "--tasks", "4", "--input", "s3://corpus/a.jsonl.gz"]
    ]
    task = ["--task", "{{inputs.parameters.task}}"]
    assert found["data-prepare"]["command"] == ["oracle", "data", "stage", "prepare", *work, *task]
    assert found["data-cluster"]["command"] == ["oracle", "data", "stage", "cluster", *work]
    assert found["data-write"]["command"] == ["oracle", "data", "stage", "write", *work, *task]
    assert found["data-finish"]["command"] == ["oracle", "data", "stage", "finish", *work, "--output", "/data/clean"]
    assert found["tokenize"]["command"] == [
        "oracle",
        "tokenizer",
        "train",
        "--input",
        "/data/clean",
        "--vocab-size",
        "65536",
        "--out",
        "/data/tokenizer",
    ]
    assert found["publish"]["command"] == ["oracle", "hub", "publish", "--repo-id", "acme/model"]
    assert containers(workflow())["publish"]["command"][-1] == DEFAULT_REPO_ID


def test_the_record_is_a_raw_artifact_written_to_the_record_path_byte_for_byte() -> None:
    for template in templates(workflow()).values():
        if "container" in template:
            (artifact,) = template["inputs"]["artifacts"]
            assert artifact["path"] == K8S_RECORD_PATH
            assert artifact["raw"]["data"] == RECORD


def test_one_node_trains_in_one_pod() -> None:
    document = workflow(argo_request(nodes=1, procs_per_node=8))
    train = templates(document)["train"]
    assert "rendezvous" not in templates(document)
    assert train["container"]["command"] == [
        "torchrun",
        "--nnodes=1",
        "--nproc-per-node=8",
        "--node-rank=0",
        "--master-addr=127.0.0.1",
        "--master-port=29500",
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
    assert train["container"]["resources"] == {"limits": {"nvidia.com/gpu": "8"}}


def test_several_nodes_fan_out_one_pod_per_rank_behind_a_headless_service() -> None:
    document = workflow(argo_request(nodes=3))
    pipeline, train = templates(document)["pipeline"], templates(document)["train"]
    step = next(s for group in pipeline["steps"] for s in group if s["name"] == "train")
    assert step["withSequence"] == {"count": 3}
    assert step["arguments"]["parameters"] == [{"name": "rank", "value": "{{item}}"}]
    job = "oracle-train-oracle-mini"
    assert json.loads(train["podSpecPatch"]) == {"hostname": f"{job}-{{{{inputs.parameters.rank}}}}", "subdomain": job}
    command = train["container"]["command"]
    assert "--node-rank={{inputs.parameters.rank}}" in command
    assert f"--master-addr={job}-0.{job}" in command
    # the rendezvous Service is created before training, owned by the workflow, and selects the train pods
    groups = [[s["name"] for s in group] for group in pipeline["steps"]]
    assert groups.index(["tokenize", "rendezvous"]) < groups.index(["train"])
    resource = templates(document)["rendezvous"]["resource"]
    assert (resource["action"], resource["setOwnerReference"]) == ("create", True)
    (service,) = yaml.safe_load_all(resource["manifest"])
    validate_manifests([service])
    assert service["metadata"]["name"] == job
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = {**document["spec"]["podMetadata"]["labels"], **train["metadata"]["labels"]}
    assert service["spec"]["selector"] == {
        **{k: pod_labels[k] for k in ("oracle.dev/project", "app.kubernetes.io/name", "oracle.dev/step")},
        "workflows.argoproj.io/workflow": "{{workflow.name}}",
    }


def test_gpu_limits_only_when_the_job_asks_for_gpus() -> None:
    assert "resources" not in templates(workflow(argo_request(gpus_per_node=0)))["train"]["container"]


def test_labels_deadline_and_service_account_are_set() -> None:
    request = argo_request(time="04:00:00")
    document = workflow(request)
    assert document["metadata"]["labels"] == job_labels(request)
    assert document["metadata"]["namespace"] == "oracle"
    assert document["metadata"]["generateName"] == "oracle-train-oracle-mini-"
    assert document["metadata"]["annotations"]["oracle.dev/mark"] == request.mark
    spec = document["spec"]
    assert spec["podMetadata"]["labels"] == job_labels(request)
    # every step's pod carries the submission digest the runtime check reads back through the API server
    assert spec["podMetadata"]["annotations"]["oracle.dev/submission-digest"] == DIGEST
    assert spec["activeDeadlineSeconds"] == 4 * 3600
    assert spec["serviceAccountName"] == "oracle-jobs"
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_workflow_passes_the_submit_gate_checks() -> None:
    request = argo_request()
    assert checks.check_documents([workflow(request)], request) == []


def test_to_yaml_round_trips() -> None:
    document = workflow()
    assert yaml.safe_load(to_yaml(document)) == document


# --- strict validation: what a broken workflow reports ------------------------------------------------------------


def _train(document: dict[str, Any]) -> dict[str, Any]:
    return templates(document)["train"]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (
            lambda d: _train(d)["container"]["env"][0].__setitem__("valeu", "x"),
            "spec.templates[9].container.env[0]: Additional properties are not allowed ('valeu' was unexpected)",
        ),
        (
            lambda d: _train(d)["inputs"]["artifacts"][0]["raw"].__setitem__("encoding", "b64"),
            "spec.templates[9].inputs.artifacts[0].raw: Additional properties are not allowed",
        ),
        (
            lambda d: d["spec"].__setitem__("activeDeadlineSeconds", "soon"),
            "spec.activeDeadlineSeconds: 'soon' is not of type integer",
        ),
        (
            lambda d: _train(d)["container"].__setitem__("command", "torchrun"),
            "spec.templates[9].container.command: 'torchrun' is not of type array",
        ),
        (
            lambda d: _train(d)["container"]["env"][0].pop("name"),
            "spec.templates[9].container.env[0]: 'name' is a required property",
        ),
        (
            lambda d: d.__setitem__("spek", {}),
            "(top level): Additional properties are not allowed ('spek' was unexpected)",
        ),
    ],
    ids=["unknown-key-deep", "unknown-key-in-artifact", "wrong-type", "wrong-type-list", "missing-required", "top"],
)
def test_a_broken_workflow_is_rejected_naming_the_field(
    breakage: Callable[[dict[str, Any]], object], expected: str
) -> None:
    document = copy.deepcopy(workflow())
    names = ["pipeline", "network-policy", *DATA_STEPS, "tokenize", "rendezvous", "train", "publish"]
    assert list(templates(document)) == names
    breakage(document)
    with pytest.raises(SpecError) as caught:
        validate_workflow(document)
    message = str(caught.value)
    assert message.startswith(f"Workflow/oracle-train-oracle-mini-: {expected}")
    assert "schema, strict" in message
    assert "\n" not in message


def test_a_document_of_another_kind_is_rejected() -> None:
    document = {**workflow(), "kind": "CronWorkflow"}
    with pytest.raises(SpecError, match=r"an Argo workflow is argoproj\.io/v1alpha1/Workflow"):
        validate_workflow(document)


# --- submission -----------------------------------------------------------------------------------------------------


def test_argo_is_configured_by_argo_server() -> None:
    assert argo_configured({"ARGO_SERVER": "argo.example:2746"})
    assert not argo_configured({"ARGO_HTTP1": "true"})
    assert not argo_configured({})


def test_submit_posts_the_workflow_to_the_argo_server() -> None:
    """Checks the request made to the Argo server's API, against a local stub (no Argo server here)."""
    document = workflow()
    created = {**document, "metadata": {**document["metadata"], "name": "oracle-train-oracle-mini-x7k2p"}}
    with StubApi({("POST", "/api/v1/workflows/oracle"): (200, created)}) as api:
        environ = {"ARGO_SERVER": api.url.removeprefix("http://"), "ARGO_SECURE": "false", "ARGO_TOKEN": "t0k"}
        assert submit_workflow(document, environ=environ) == "oracle/oracle-train-oracle-mini-x7k2p"
    (posted,) = api.requests
    assert {k.lower(): v for k, v in posted["headers"].items()}["authorization"] == "Bearer t0k"
    body = json.loads(posted["body"])
    assert body["namespace"] == "oracle"
    assert body["workflow"]["spec"]["templates"] == document["spec"]["templates"]


def test_a_refused_submission_is_a_cluster_error() -> None:
    refusal = {"code": 7, "message": 'workflows.argoproj.io is forbidden: User "x" cannot create'}
    with StubApi({("POST", "/api/v1/workflows/oracle"): (403, refusal)}) as api:
        environ = {"ARGO_SERVER": api.url}
        with pytest.raises(ClusterError, match=f"^the Argo server {api.url} refused the workflow: .*forbidden"):
            submit_workflow(workflow(), environ=environ)


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_workflow_carries_the_runtime_layer(nodes: int) -> None:
    request = argo_request(nodes=nodes, egress_cidrs=("10.0.0.1/32", "192.0.2.0/24"))
    document = workflow(request)
    (policy,) = yaml.safe_load_all(templates(document)["network-policy"]["resource"]["manifest"])
    validate_manifests([policy])  # the Kubernetes schema, strict
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"]
    # the workflow's own pods, DNS and the declared networks; nothing else
    assert spec["podSelector"]["matchLabels"]["workflows.argoproj.io/workflow"] == "{{workflow.name}}"
    peers = [peer for rule in spec["egress"] for peer in rule["to"]]
    assert {peer["ipBlock"]["cidr"] for peer in peers if "ipBlock" in peer} == {"10.0.0.1/32", "192.0.2.0/24"}
    assert [rule["ports"] for rule in spec["egress"] if "ports" in rule] == [
        [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    ]
    assert checks.check_runtime_layer([document]) == []
    # every gated step is offline; the publish step alone talks to the Hub
    for name, container in ((t["name"], t["container"]) for t in templates(document).values() if "container" in t):
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert (env.get("HF_HUB_OFFLINE") == "1") is (name != "publish"), name
    # without the NetworkPolicy step, the submit gate's check refuses the workflow
    stripped = copy.deepcopy(document)
    stripped["spec"]["templates"] = [t for t in stripped["spec"]["templates"] if t["name"] != "network-policy"]
    assert [p[:6] for p in checks.check_runtime_layer([stripped])] == ["SUB004"]


# --- a strict stand-in for the Argo server's workflow API ---------------------------------------------------------

_SELECTOR = re.compile(r"[a-z0-9./-]+=[A-Za-z0-9._-]+(,[a-z0-9./-]+=[A-Za-z0-9._-]+)*")


class FakeArgo(LocalApi):
    """A local Argo server holding workflows in memory. It answers the three requests oracle makes (create, list by a
    `key=value[,key=value]` label selector, terminate by name, each with its method, path and body) as Argo's
    `/api/v1/workflows` API does, and refuses anything else with an error that it also records in `refused`."""

    def __init__(self) -> None:
        self.workflows: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.failing: set[str] = set()  # names whose termination the server refuses
        super().__init__(self._respond)
        self.address = self.url.removeprefix("http://")
        self.env = {"ARGO_SERVER": self.address, "ARGO_SECURE": "false", "ARGO_TOKEN": "t0k"}

    def _respond(self, request: dict[str, Any]) -> tuple[int, object]:
        query = parse_qs(request["query"], keep_blank_values=True)
        status, payload = self.answer(request["method"], request["path"], query, request["body"])
        if status in (400, 405):  # a request the Argo API does not know, or not in the form oracle sends
            self.refused.append(f"{request['method']} {request['path']}?{request['query']}: {payload}")
        return status, payload

    def calls(self) -> list[tuple[str, str]]:
        """(method, path[?query]) of every request, in order."""
        return [(r["method"], r["path"] + (f"?{r['query']}" if r["query"] else "")) for r in self.requests]

    def add(self, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None, **status: str) -> None:
        metadata = {"name": name, "namespace": "oracle", "labels": labels, "annotations": annotations or {}}
        self.workflows.append({"metadata": metadata, "spec": {}, "status": {"phase": "Running", **status}})

    def phases(self) -> dict[str, str]:
        return {w["metadata"]["name"]: w["status"].get("phase", "") for w in self.workflows}

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: str) -> tuple[int, object]:
        parts = path.split("/")
        if parts[:4] != ["", "api", "v1", "workflows"] or len(parts) < 5:
            return 405, {"message": "unknown path"}
        namespace, rest = parts[4], parts[5:]
        if method == "GET" and not rest:
            selectors = query.get("listOptions.labelSelector", [])
            if (
                set(query) != {"listOptions.labelSelector"}
                or len(selectors) != 1
                or not _SELECTOR.fullmatch(selectors[0])
            ):
                return 400, {"message": f"unexpected query {query}"}
            wanted = dict(part.split("=") for part in selectors[0].split(","))
            items = [
                w
                for w in self.workflows
                if w["metadata"]["namespace"] == namespace
                and all(w["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ]
            return 200, {"metadata": {}, "items": items or None}  # Argo answers `null` for none
        if method == "PUT" and len(rest) == 2 and rest[1] == "terminate" and not query:
            if json.loads(body or "null") != {"name": rest[0], "namespace": namespace}:
                return 400, {"message": f"unexpected body {body}"}
            found = [
                w for w in self.workflows if w["metadata"] == {**w["metadata"], "name": rest[0], "namespace": namespace}
            ]
            if not found:
                return 404, {"message": f'workflows.argoproj.io "{rest[0]}" not found'}
            if rest[0] in self.failing:
                return 409, {"message": "the server refuses to terminate it"}
            found[0]["status"] = {"phase": "Failed", "message": "Stopped with strategy 'Terminate'"}
            return 200, found[0]
        if method == "POST" and not rest and not query:
            request = json.loads(body)
            workflow = request["workflow"]
            if request.get("namespace") != namespace or workflow["metadata"].get("namespace") != namespace:
                return 400, {"message": "namespace mismatch"}
            name = workflow["metadata"]["generateName"] + f"{len(self.workflows):05d}"
            workflow["metadata"] = {**workflow["metadata"], "name": name}
            workflow["status"] = {}
            self.workflows.append(workflow)
            return 200, workflow
        return 405, {"message": f"method {method} not allowed on {path}"}


def test_the_argo_stand_in_refuses_what_oracle_never_asks() -> None:
    """The stand-in is strict, so a changed request fails the tests rather than passing against a lenient fake."""
    import requests

    with FakeArgo() as argo:
        base = f"http://{argo.address}/api/v1/workflows/oracle"
        assert requests.get(base, params={"listOptions.labelSelector": "a in (b)"}, timeout=5).status_code == 400
        assert requests.get(base, timeout=5).status_code == 400
        assert requests.delete(f"{base}/w", timeout=5).status_code == 405
        assert requests.put(f"{base}/w/stop", json={}, timeout=5).status_code == 405
    assert len(argo.refused) == 4
