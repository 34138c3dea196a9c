"""The Argo Workflow of `oracle submit --target argo`, built from hera's typed models of Argo's API (generated from
Argo's OpenAPI spec), and its offline validation (infra.argo.server sends it to an Argo server).

The steps run in order, each a container of the locked image running `oracle …`: the data pipeline's stages
(oracle/data/pipeline.py) fanned out over the workflow's data volume — `data-init` (the plan), `data-prepare` (one
pod per task), `data-cluster` (the global near-duplicate clusters), `data-write` (one pod per task), `data-finish`
(the cleaned corpus) — then `tokenize`, `train` (torchrun, as on the other targets) and `publish`. The submission
record is a raw input artifact written to `K8S_RECORD_PATH` in every step's pod, byte for byte. With more than one
node, `train` fans out to one pod per node; each pod gets the hostname `<job>-<rank>` in a headless Service `<job>`
that a `rendezvous` step creates (owned by the workflow, so it is deleted with it) for torchrun's rendezvous.

Validation (`validate_workflow`) is offline and strict: hera's models ignore unknown keys, so the document is first
checked against the JSON schema of those models with `additionalProperties: false` on every object (jsonschema
names the path of an unknown key or a wrong type at any depth), then parsed by the `Workflow` model itself.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import pydantic
from hera.workflows import models as m

from guards.job_identity import POD_DIGEST_ANNOTATION
from guards.process_policy import OFFLINE_ENV
from guards.submission import DIGEST_ENV
from infra.k8s.manifests import (
    RUN_AS_USER,
    RUNS_DIR,
    checkpoints_claim_name,
    gpu_resources,
    network_policy,
    rendezvous_service,
    service_account_name,
    to_manifest,
    torchrun_command,
)
from infra.k8s.manifests import (
    to_yaml as manifests_yaml,
)
from infra.k8s.validate import explain, field_path, one_line
from infra.spec import (
    IMAGE_WORKDIR,
    K8S_RECORD_PATH,
    JobRequest,
    SpecError,
    job_annotations,
    job_labels,
    time_seconds,
)

API_VERSION = "argoproj.io/v1alpha1"
DEFAULT_REPO_ID = "oracle-ai/oracle850b-moe"
# Placeholder corpus objects (s3:// URIs name single objects); a deployment passes its own.
DEFAULT_DATA_INPUTS = ("s3://oracle-corpus/raw/part-00000.jsonl.gz",)
DATA_DIR = "/data"
DEFAULT_DATA_SIZE = "1Ti"
VOCAB_SIZE = 65536
DEFAULT_DATA_TASKS = 4
DATA_STEPS = ("data-init", "data-prepare", "data-cluster", "data-write", "data-finish")
STEPS = (*DATA_STEPS, "tokenize", "train", "publish")
# Argo labels every pod with the name of its workflow.
_WORKFLOW_LABEL = "workflows.argoproj.io/workflow"


def _env(values: Mapping[str, str]) -> list[m.EnvVar]:
    pod_name = m.EnvVarSource(field_ref=m.ObjectFieldSelector(field_path="metadata.name"))
    return [
        *(m.EnvVar(name=key, value=value) for key, value in values.items()),
        m.EnvVar(name="POD_NAME", value_from=pod_name),  # the job identity the runtime check requires
        m.EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]


def _resources(gpus: int) -> m.ResourceRequirements | None:
    limits = gpu_resources(gpus)
    if limits is None or limits.limits is None:
        return None
    return m.ResourceRequirements(limits={key: m.Quantity(value) for key, value in limits.limits.items()})


def _step_template(
    name: str,
    request: JobRequest,
    env: Mapping[str, str],
    record_json: str,
    command: list[str],
    *,
    mounts: Sequence[m.VolumeMount],
    resources: m.ResourceRequirements | None = None,
    parameters: Sequence[str] = (),
    labels: dict[str, str] | None = None,
    pod_spec_patch: str | None = None,
) -> m.Template:
    record = m.Artifact(name="submission-record", path=K8S_RECORD_PATH, raw=m.RawArtifact(data=record_json))
    return m.Template(
        name=name,
        metadata=m.Metadata(labels=labels) if labels else None,
        inputs=m.Inputs(parameters=[m.Parameter(name=p) for p in parameters] or None, artifacts=[record]),
        pod_spec_patch=pod_spec_patch,
        container=m.Container(
            name="main",
            image=request.image,
            working_dir=IMAGE_WORKDIR,
            command=command,
            env=_env(env),
            resources=resources,
            security_context=m.SecurityContext(
                allow_privilege_escalation=False, capabilities=m.Capabilities(drop=["ALL"])
            ),
            volume_mounts=list(mounts),
        ),
    )


def _train_templates(
    request: JobRequest, env: Mapping[str, str], record_json: str, mounts: Sequence[m.VolumeMount]
) -> tuple[list[m.Template], m.WorkflowStep | None, m.WorkflowStep]:
    """The train template(s), the step creating the rendezvous Service (None on one node) and the train step."""
    resources = _resources(request.gpus_per_node)
    train_mounts = [*mounts, m.VolumeMount(name="dshm", mount_path="/dev/shm")]
    if request.nodes == 1:
        command = torchrun_command(request, node_rank="0", master_addr="127.0.0.1")
        train = _step_template("train", request, env, record_json, command, mounts=train_mounts, resources=resources)
        return [train], None, m.WorkflowStep(name="train", template="train")
    job = request.job_name
    pod_labels = {"oracle.dev/step": "train"}
    selector = {
        "oracle.dev/project": request.project,
        "app.kubernetes.io/name": job,
        **pod_labels,
        _WORKFLOW_LABEL: "{{workflow.name}}",
    }
    service = m.Template(
        name="rendezvous",
        resource=m.ResourceTemplate(
            action="create",
            set_owner_reference=True,
            manifest=manifests_yaml([to_manifest(rendezvous_service(request, selector))]),
        ),
    )
    # hostname + subdomain give each rank the DNS name <job>-<rank>.<job> through the headless Service
    patch = json.dumps({"hostname": f"{job}-{{{{inputs.parameters.rank}}}}", "subdomain": job})
    command = torchrun_command(request, node_rank="{{inputs.parameters.rank}}", master_addr=f"{job}-0.{job}")
    train = _step_template(
        "train",
        request,
        env,
        record_json,
        command,
        mounts=train_mounts,
        resources=resources,
        parameters=["rank"],
        labels=pod_labels,
        pod_spec_patch=patch,
    )
    step = m.WorkflowStep(
        name="train",
        template="train",
        arguments=m.Arguments(parameters=[m.Parameter(name="rank", value="{{item}}")]),
        with_sequence=m.Sequence(count=m.IntOrString(request.nodes)),
    )
    return [service, train], m.WorkflowStep(name="rendezvous", template="rendezvous"), step


def _data_step(name: str, tasks: int | None) -> m.WorkflowStep:
    """A data stage's step; a per-task stage fans out to one pod per task (the stage's --task is the item)."""
    if tasks is None:
        return m.WorkflowStep(name=name, template=name)
    return m.WorkflowStep(
        name=name,
        template=name,
        arguments=m.Arguments(parameters=[m.Parameter(name="task", value="{{item}}")]),
        with_sequence=m.Sequence(count=m.IntOrString(tasks)),
    )


def build_workflow(
    request: JobRequest,
    env: dict[str, str],
    record_json: str,
    *,
    repo_id: str = DEFAULT_REPO_ID,
    data_inputs: Sequence[str] = DEFAULT_DATA_INPUTS,
    data_size: str = DEFAULT_DATA_SIZE,
    data_tasks: int = DEFAULT_DATA_TASKS,
) -> dict[str, Any]:
    """The Workflow as a plain dict (camelCase keys, no nulls), ready for `validate_workflow` and YAML."""
    if request.nodes < 1:
        raise SpecError(f"nodes={request.nodes}: a job needs at least one node")
    if data_tasks < 1:
        raise SpecError(f"data_tasks={data_tasks}: the data pipeline needs at least one task")
    labels = job_labels(request)
    annotations = job_annotations(request)
    data = m.VolumeMount(name="data", mount_path=DATA_DIR)
    runs = m.VolumeMount(name="checkpoints", mount_path=RUNS_DIR)
    inputs = [word for uri in data_inputs for word in ("--input", uri)]
    stage = ["oracle", "data", "stage"]
    work = ["--work", f"{DATA_DIR}/work"]
    task = ["--task", "{{inputs.parameters.task}}"]
    data_commands = {
        "data-init": [*stage, "init", *work, "--tasks", str(data_tasks), *inputs],
        "data-prepare": [*stage, "prepare", *work, *task],
        "data-cluster": [*stage, "cluster", *work],
        "data-write": [*stage, "write", *work, *task],
        "data-finish": [*stage, "finish", *work, "--output", f"{DATA_DIR}/clean"],
    }
    tokenize_command = ["oracle", "tokenizer", "train", "--input", f"{DATA_DIR}/clean"]
    tokenize_command += ["--vocab-size", str(VOCAB_SIZE), "--out", f"{DATA_DIR}/tokenizer"]
    publish_command = ["oracle", "hub", "publish", "--repo-id", repo_id]
    train_templates, rendezvous, train = _train_templates(request, env, record_json, [data, runs])
    # the workflow's pods reach each other, DNS and the declared networks (the data endpoints, the Hub the publish
    # step uploads to, the API server): a NetworkPolicy owned by the workflow, created before any step runs
    job_pods = {"oracle.dev/project": request.project, "app.kubernetes.io/name": request.job_name}
    egress = network_policy(
        f"{request.job_name}-egress-{{{{workflow.name}}}}"[:253],
        request.namespace,
        labels,
        pods={**job_pods, _WORKFLOW_LABEL: "{{workflow.name}}"},
        peers={**job_pods, _WORKFLOW_LABEL: "{{workflow.name}}"},
        egress_cidrs=request.egress_cidrs,
    )
    network = m.Template(
        name="network-policy",
        resource=m.ResourceTemplate(
            action="create", set_owner_reference=True, manifest=manifests_yaml([to_manifest(egress)])
        ),
    )
    # publishing is the one step that talks to the Hub: the offline switches are off there (the process policy
    # still allows only the --endpoint host)
    online = {key: value for key, value in env.items() if key not in OFFLINE_ENV}
    templates = [
        network,
        *(
            _step_template(
                name,
                request,
                env,
                record_json,
                command,
                mounts=[data],
                parameters=["task"] if "--task" in command else (),
            )
            for name, command in data_commands.items()
        ),
        _step_template("tokenize", request, env, record_json, tokenize_command, mounts=[data]),
        *train_templates,
        _step_template("publish", request, online, record_json, publish_command, mounts=[data, runs]),
    ]
    steps = [
        [m.WorkflowStep(name="network-policy", template="network-policy")],
        *([_data_step(name, data_tasks if "--task" in command else None)] for name, command in data_commands.items()),
        [m.WorkflowStep(name="tokenize", template="tokenize"), *([rendezvous] if rendezvous else [])],
        [train],
        [m.WorkflowStep(name="publish", template="publish")],
    ]
    pipeline = m.Template(name="pipeline", steps=[m.ParallelSteps(group) for group in steps])
    claim = m.PersistentVolumeClaim(
        metadata=m.ObjectMeta(name="data"),
        spec=m.PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"],
            resources=m.VolumeResourceRequirements(requests={"storage": m.Quantity(data_size)}),
        ),
    )
    workflow = m.Workflow(
        api_version=API_VERSION,
        kind="Workflow",
        metadata=m.ObjectMeta(
            generate_name=f"{request.job_name}-",
            namespace=request.namespace,
            labels=dict(labels),
            annotations=dict(annotations),
        ),
        spec=m.WorkflowSpec(
            entrypoint="pipeline",
            service_account_name=service_account_name(request.project),
            active_deadline_seconds=time_seconds(request.time),
            # every step's pod carries the submission digest, which the runtime check reads back from the API
            # server (guards.job_identity); the workflow's service account needs `get` on pods (infra.k8s.manifests)
            pod_metadata=m.Metadata(
                labels=dict(labels), annotations={**annotations, POD_DIGEST_ANNOTATION: env[DIGEST_ENV]}
            ),
            security_context=m.PodSecurityContext(
                run_as_non_root=True,
                run_as_user=RUN_AS_USER,
                run_as_group=RUN_AS_USER,
                fs_group=RUN_AS_USER,
                seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
            ),
            volume_claim_templates=[claim],
            volumes=[
                m.Volume(
                    name="checkpoints",
                    persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
                        claim_name=checkpoints_claim_name(request.project)
                    ),
                ),
                m.Volume(name="dshm", empty_dir=m.EmptyDirVolumeSource(medium="Memory")),
            ],
            templates=[pipeline, *templates],
        ),
    )
    document: dict[str, Any] = workflow.model_dump(by_alias=True, exclude_none=True, mode="json")
    return document


def to_yaml(document: dict[str, Any]) -> str:
    """The workflow as one YAML document."""
    return manifests_yaml([document])


# --- validation ---------------------------------------------------------------------------------------------------


def _argo_version() -> str:
    found = re.search(r"argo-workflows/(v[0-9.]+)/", m.__doc__ or "")
    return f"Argo Workflows {found.group(1)}" if found else "Argo Workflows"


def _forbid_unknown_keys(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_unknown_keys(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_unknown_keys(value)


@functools.cache
def workflow_schema() -> dict[str, Any]:
    """JSON schema of hera's `Workflow` model (by alias), with unknown keys forbidden on every object."""
    schema: dict[str, Any] = copy.deepcopy(m.Workflow.model_json_schema(by_alias=True))
    _forbid_unknown_keys(schema)
    return schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(workflow_schema())


def validate_workflow(document: dict[str, Any]) -> None:
    """Raise SpecError at the first problem: the workflow, the field path and the reason."""
    if not isinstance(document, dict):
        raise SpecError("the Argo workflow is not a mapping; build it with infra.argo.workflow.build_workflow")
    metadata = document.get("metadata")
    name = (metadata.get("name") or metadata.get("generateName")) if isinstance(metadata, dict) else None
    where = f"Workflow/{name or '?'}"
    if document.get("apiVersion") != API_VERSION or document.get("kind") != "Workflow":
        raise SpecError(
            f"{where}: apiVersion/kind are {document.get('apiVersion')!r}/{document.get('kind')!r}; "
            f"an Argo workflow is {API_VERSION}/Workflow"
        )
    error = jsonschema.exceptions.best_match(_validator().iter_errors(document))
    if error is not None:
        raise SpecError(f"{where}: {explain(error, f'{_argo_version()} schema, strict')}")
    try:
        m.Workflow.model_validate(document)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise SpecError(
            f"{where}: {field_path(first['loc'])}: {one_line(first['msg'])} ({_argo_version()} model); fix that field"
        ) from exc
