"""The Kubernetes objects of a training job and of the serving deployment, built from the `kubernetes` client's
typed models (which reject unknown fields when constructed) and serialised into plain dicts.

Training is an Indexed Job: one pod per node, `completions = parallelism = nodes`, each pod named
`<job>-<index>` in the headless Service `<job>` (the Job's `subdomain`), so rank 0 is reachable at
`<job>-0.<job>` for torchrun's rendezvous. The submission record travels in a ConfigMap mounted at
`K8S_RECORD_DIR`; it is stored base64-encoded (`binaryData`) so the file in the pod holds exactly the bytes the
submission digest covers, and so the Helm chart can carry it as a plain value. Checkpoints go to a project-wide
ReadWriteMany claim that serving mounts read-only.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from kubernetes import client

from guards.job_identity import POD_DIGEST_ANNOTATION
from guards.process_policy import OFFLINE_ENV
from guards.submission import DIGEST_ENV
from infra.spec import (
    IMAGE_WORKDIR,
    K8S_RECORD_DIR,
    K8S_RECORD_PATH,
    RENDEZVOUS_PORT,
    JobRequest,
    SpecError,
    job_annotations,
    job_labels,
    project_labels,
    time_seconds,
)
from oracle.serve import API_KEY_ENV

Manifest = dict[str, Any]
TrainingObject = (
    client.V1ServiceAccount
    | client.V1Role
    | client.V1RoleBinding
    | client.V1ConfigMap
    | client.V1PersistentVolumeClaim
    | client.V1Service
    | client.V1Job
    | client.V1NetworkPolicy
)

DEFAULT_CHECKPOINT_SIZE = "2Ti"
DEFAULT_SERVE_PORT = 8000
SERVING_API_KEY_FIELD = "api-key"
RUNS_DIR = f"{IMAGE_WORKDIR}/runs"
RECORD_FILE = K8S_RECORD_PATH.rsplit("/", 1)[1]
RUN_AS_USER = 1000
_DNS_LABEL_MAX = 63

# The client's serialiser carries no annotations; this is its type.
_sanitize: Callable[[object], Any] = client.ApiClient().sanitize_for_serialization


def to_manifest(item: object) -> Manifest:
    """A client model as a plain dict, `apiVersion`, `kind` and `metadata` first as manifests are usually read."""
    plain: Manifest = _sanitize(item)
    head: Manifest = {key: plain.pop(key) for key in ("apiVersion", "kind", "metadata") if key in plain}
    return {**head, **plain}


def service_account_name(project: str) -> str:
    """The project's service account: training pods, serving pods and Argo workflows run as it. Our own pods opt
    out of its API token; Argo's executor needs the token, so the account itself does not."""
    return f"{project}-jobs"


def checkpoints_claim_name(project: str) -> str:
    """The project's checkpoint volume claim: training writes `runs/` to it, serving reads it."""
    return f"{project}-checkpoints"


def serving_name(project: str) -> str:
    return f"{project}-serve"


def serving_api_key_secret(project: str) -> str:
    """The Secret whose `api-key` the serving pods require of clients (created by the operator, never by us:
    `kubectl create secret generic <project>-serve-api-key --from-literal=api-key=...`). Not optional: a pod
    listening on the cluster network does not start open."""
    return f"{project}-serve-api-key"


def record_config_map_name(request: JobRequest) -> str:
    return f"{request.job_name}-submission"


def encode_record(record_json: str) -> str:
    """The record as the ConfigMap's `binaryData` holds it (base64 of its UTF-8 bytes)."""
    return base64.b64encode(record_json.encode()).decode("ascii")


def run_name(request: JobRequest, digest: str) -> str:
    """The run folder (under runs/) of one submission: training writes it, serving reads it."""
    return f"{request.config_name}-{digest}"


def torchrun_command(request: JobRequest, *, node_rank: str, master_addr: str) -> list[str]:
    """`torchrun … -m oracle train --config <recipe> --run-name <recipe>-<submission digest> --resume auto`: the
    training command line of the Kubernetes and Argo targets. The run belongs to one submission: a new commit never
    resumes another submission's checkpoints from the shared volume."""
    return [
        "torchrun",
        f"--nnodes={request.nodes}",
        f"--nproc-per-node={request.procs_per_node}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "oracle",
        "train",
        "--config",
        request.config,
        "--run-name",
        run_name(request, f"$({DIGEST_ENV})"),  # one run per submission; Kubernetes expands $(VAR) from env
        "--resume",
        "auto",
    ]


def gpu_resources(gpus: int) -> client.V1ResourceRequirements | None:
    """`nvidia.com/gpu` limits when the job asks for GPUs; nothing on CPU."""
    return client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}) if gpus > 0 else None


def _metadata(request: JobRequest, name: str, labels: dict[str, str]) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(
        name=name, namespace=request.namespace, labels=dict(labels), annotations=job_annotations(request)
    )


def _pod_security() -> client.V1PodSecurityContext:
    return client.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_USER,
        fs_group=RUN_AS_USER,
        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
    )


def _container_security() -> client.V1SecurityContext:
    # with the pod's settings this meets the "restricted" Pod Security Standard
    return client.V1SecurityContext(allow_privilege_escalation=False, capabilities=client.V1Capabilities(drop=["ALL"]))


def _env(values: dict[str, str]) -> list[client.V1EnvVar]:
    pod_name = client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path="metadata.name"))
    return [
        *(client.V1EnvVar(name=key, value=value) for key, value in values.items()),
        client.V1EnvVar(name="POD_NAME", value_from=pod_name),  # the job identity the runtime check requires
        client.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]


def _checkpoints_volume(project: str, *, read_only: bool) -> client.V1Volume:
    claim = client.V1PersistentVolumeClaimVolumeSource(
        claim_name=checkpoints_claim_name(project), read_only=True if read_only else None
    )
    return client.V1Volume(name="checkpoints", persistent_volume_claim=claim)


def _check_job_name(request: JobRequest) -> None:
    # pods of an Indexed Job are named <job>-<index>, and a pod's hostname is a DNS label
    longest = f"{request.job_name}-{request.nodes - 1}"
    if len(longest) > _DNS_LABEL_MAX:
        raise SpecError(
            f"the pod hostname {longest!r} exceeds {_DNS_LABEL_MAX} characters; "
            "shorten the recipe's name or cluster.project"
        )


def rendezvous_service(request: JobRequest, selector: dict[str, str]) -> client.V1Service:
    """The headless Service `<job>` that gives the selected pods the DNS names `<hostname>.<job>`."""
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_metadata(request, request.job_name, job_labels(request)),
        spec=client.V1ServiceSpec(
            cluster_ip="None",
            # ranks must resolve each other before any pod is Ready
            publish_not_ready_addresses=True,
            selector=selector,
            ports=[client.V1ServicePort(name="rendezvous", port=RENDEZVOUS_PORT, target_port=RENDEZVOUS_PORT)],
        ),
    )


DNS_NAMESPACE = "kube-system"
DNS_LABELS = {"k8s-app": "kube-dns"}  # CoreDNS and kube-dns pods carry it on kubeadm, EKS, GKE and AKS
NETWORK_POLICY_API = "networking.k8s.io/v1"


def network_policy(
    name: str,
    namespace: str,
    labels: dict[str, str],
    pods: dict[str, str],
    *,
    peers: dict[str, str] | None,
    egress_cidrs: Sequence[str],
    annotations: dict[str, str] | None = None,
) -> client.V1NetworkPolicy:
    """Egress of the pods matching `pods` limited to: the pods matching `peers` (every port: the rendezvous and
    the collectives; None for none), DNS (kube-dns, port 53), and the declared `egress_cidrs` (policies.toml
    cluster.egress_cidrs: the API server, the data endpoints). Everything else, the Hub included, is dropped by
    the cluster's network plugin, whatever the process does: the layer behind the process policy's hooks."""
    dns = client.V1NetworkPolicyPeer(
        namespace_selector=client.V1LabelSelector(match_labels={"kubernetes.io/metadata.name": DNS_NAMESPACE}),
        pod_selector=client.V1LabelSelector(match_labels=dict(DNS_LABELS)),
    )
    rules = [
        client.V1NetworkPolicyEgressRule(
            to=[dns],
            ports=[client.V1NetworkPolicyPort(protocol=proto, port=53) for proto in ("UDP", "TCP")],
        )
    ]
    if peers is not None:
        selector = client.V1LabelSelector(match_labels=dict(peers))
        rules.append(client.V1NetworkPolicyEgressRule(to=[client.V1NetworkPolicyPeer(pod_selector=selector)]))
    if egress_cidrs:
        blocks = [client.V1NetworkPolicyPeer(ip_block=client.V1IPBlock(cidr=cidr)) for cidr in egress_cidrs]
        rules.append(client.V1NetworkPolicyEgressRule(to=blocks))
    return client.V1NetworkPolicy(
        api_version=NETWORK_POLICY_API,
        kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels), annotations=annotations),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=dict(pods)),
            policy_types=["Egress"],
            egress=rules,
        ),
    )


def build_training(
    request: JobRequest, env: dict[str, str], record_base64: str, *, checkpoint_size: str = DEFAULT_CHECKPOINT_SIZE
) -> list[TrainingObject]:
    """The typed training objects; `record_base64` is the record as `encode_record` gives it."""
    if request.nodes < 1:
        raise SpecError(f"nodes={request.nodes}: a job needs at least one node")
    _check_job_name(request)
    labels = job_labels(request)
    job = request.job_name
    account = client.V1ServiceAccount(
        api_version="v1",
        kind="ServiceAccount",
        metadata=_metadata(request, service_account_name(request.project), labels),
    )
    # the runtime check reads its own pod (the digest annotation, phase, uid) through the API server: read-only
    # access to pods in the namespace, nothing else (it can neither annotate nor create a pod)
    reader = f"{service_account_name(request.project)}-pod-reader"
    role = client.V1Role(
        api_version="rbac.authorization.k8s.io/v1",
        kind="Role",
        metadata=_metadata(request, reader, labels),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"])],
    )
    binding = client.V1RoleBinding(
        api_version="rbac.authorization.k8s.io/v1",
        kind="RoleBinding",
        metadata=_metadata(request, reader, labels),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=reader),
        subjects=[
            client.RbacV1Subject(
                kind="ServiceAccount", name=service_account_name(request.project), namespace=request.namespace
            )
        ],
    )
    record = client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_metadata(request, record_config_map_name(request), labels),
        binary_data={RECORD_FILE: record_base64},
    )
    claim = client.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=_metadata(request, checkpoints_claim_name(request.project), labels),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": checkpoint_size}),
        ),
    )
    rendezvous = rendezvous_service(request, {"oracle.dev/project": request.project, "app.kubernetes.io/name": job})
    # JOB_COMPLETION_INDEX is set in every container of an Indexed Job's pods; k8s expands $(VAR) in `command`
    command = torchrun_command(request, node_rank="$(JOB_COMPLETION_INDEX)", master_addr=f"{job}-0.{job}")
    container = client.V1Container(
        name="train",
        image=request.image,
        working_dir=IMAGE_WORKDIR,
        command=command,
        env=_env(env),
        ports=[client.V1ContainerPort(name="rendezvous", container_port=RENDEZVOUS_PORT)],
        resources=gpu_resources(request.gpus_per_node),
        security_context=_container_security(),
        volume_mounts=[
            client.V1VolumeMount(name="submission", mount_path=K8S_RECORD_DIR, read_only=True),
            client.V1VolumeMount(name="checkpoints", mount_path=RUNS_DIR),
            client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        ],
    )
    pod = client.V1PodSpec(
        restart_policy="Never",
        service_account_name=service_account_name(request.project),
        # the runtime check asks the API server, with this token, whether this pod carries the submission's digest
        automount_service_account_token=True,
        subdomain=job,
        security_context=_pod_security(),
        containers=[container],
        volumes=[
            client.V1Volume(
                name="submission",
                config_map=client.V1ConfigMapVolumeSource(name=record_config_map_name(request)),
            ),
            _checkpoints_volume(request.project, read_only=False),
            # NCCL and DataLoader workers share memory through /dev/shm, which defaults to 64 MiB
            client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory")),
        ],
    )
    training = client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_metadata(request, job, labels),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=request.nodes,
            parallelism=request.nodes,
            backoff_limit=0,
            active_deadline_seconds=time_seconds(request.time),
            template=client.V1PodTemplateSpec(
                # the runtime check reads the digest back from the API server (guards.job_identity)
                metadata=client.V1ObjectMeta(
                    labels=dict(labels),
                    annotations={**job_annotations(request), POD_DIGEST_ANNOTATION: env[DIGEST_ENV]},
                ),
                spec=pod,
            ),
        ),
    )
    # the job's pods reach each other, DNS and the declared networks; nothing else
    egress = network_policy(
        f"{job}-egress",
        request.namespace,
        labels,
        pods={"oracle.dev/project": request.project, "app.kubernetes.io/name": job},
        peers={"oracle.dev/project": request.project, "app.kubernetes.io/name": job},
        egress_cidrs=request.egress_cidrs,
        annotations=job_annotations(request),
    )
    return [account, role, binding, record, claim, rendezvous, egress, training]


def training_manifests(
    request: JobRequest, env: dict[str, str], record_json: str, *, checkpoint_size: str = DEFAULT_CHECKPOINT_SIZE
) -> list[Manifest]:
    """ServiceAccount, its pod-reading Role and RoleBinding, record ConfigMap, checkpoint claim, headless Service, the
    egress NetworkPolicy and the Indexed Job, as dicts."""
    objects = build_training(request, env, encode_record(record_json), checkpoint_size=checkpoint_size)
    return [to_manifest(item) for item in objects]


def build_serving(
    request: JobRequest, *, digest: str, replicas: int = 1, port: int = DEFAULT_SERVE_PORT
) -> list[client.V1Deployment | client.V1Service | client.V1NetworkPolicy]:
    """The typed serving objects: a Deployment serving the newest verified checkpoint of this submission's run (the
    run folder the training Job writes, `<recipe>-<submission digest>`) and its ClusterIP Service."""
    name = serving_name(request.project)
    labels = {**project_labels(request.project), "app.kubernetes.io/name": name}
    checkpoint = f"{RUNS_DIR}/{run_name(request, digest)}"  # `oracle serve` takes the run's newest checkpoint
    http = "http"
    container = client.V1Container(
        name="serve",
        image=request.image,
        working_dir=IMAGE_WORKDIR,
        command=["oracle", "serve", "--checkpoint", checkpoint, "--host", "0.0.0.0", "--port", str(port)],
        env=[
            *(client.V1EnvVar(name=key, value=value) for key, value in OFFLINE_ENV.items()),
            client.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            client.V1EnvVar(
                name=API_KEY_ENV,
                value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(
                        name=serving_api_key_secret(request.project), key=SERVING_API_KEY_FIELD
                    )
                ),
            ),
        ],
        ports=[client.V1ContainerPort(name=http, container_port=port)],
        # loading the weights can take minutes: liveness starts counting only once /health first answers
        startup_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/health", port=http), period_seconds=10, failure_threshold=90
        ),
        readiness_probe=client.V1Probe(http_get=client.V1HTTPGetAction(path="/ready", port=http), period_seconds=5),
        liveness_probe=client.V1Probe(http_get=client.V1HTTPGetAction(path="/health", port=http), period_seconds=10),
        resources=gpu_resources(min(request.gpus_per_node, 1)),  # `oracle serve` runs on one device
        security_context=_container_security(),
        volume_mounts=[client.V1VolumeMount(name="checkpoints", mount_path=RUNS_DIR, read_only=True)],
    )
    deployment = client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=_metadata(request, name, labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=dict(labels)),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=dict(labels), annotations=job_annotations(request)),
                spec=client.V1PodSpec(
                    service_account_name=service_account_name(request.project),
                    automount_service_account_token=False,
                    security_context=_pod_security(),
                    containers=[container],
                    volumes=[_checkpoints_volume(request.project, read_only=True)],
                ),
            ),
        ),
    )
    service = client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_metadata(request, name, labels),
        spec=client.V1ServiceSpec(
            type="ClusterIP",
            selector=dict(labels),
            ports=[client.V1ServicePort(name=http, port=80, target_port=http)],
        ),
    )
    # a server loads its checkpoint from the read-only volume and answers: it reaches nothing, not even DNS
    egress = client.V1NetworkPolicy(
        api_version=NETWORK_POLICY_API,
        kind="NetworkPolicy",
        metadata=_metadata(request, f"{name}-egress", labels),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=dict(labels)),
            policy_types=["Egress"],
            egress=[],
        ),
    )
    return [deployment, service, egress]


def serving_manifests(
    request: JobRequest, *, digest: str, replicas: int = 1, port: int = DEFAULT_SERVE_PORT
) -> list[Manifest]:
    """The serving Deployment and Service, as dicts; they mount the checkpoint claim the training objects create and
    serve the run of the submission whose record has this digest."""
    return [to_manifest(item) for item in build_serving(request, digest=digest, replicas=replicas, port=port)]


def to_yaml(manifests: Sequence[Manifest]) -> str:
    """Multi-document YAML, each document opened by `---`, keys in the order the objects list them."""
    return str(yaml.safe_dump_all(list(manifests), sort_keys=False, explicit_start=True, width=1 << 20))
