"""What a cluster job is, independent of the scheduler: the request `oracle submit` builds once and every target
(SLURM, Kubernetes, Argo) renders.

The job environment is the contract with the training runtime check (guards/runtime.py): `ALLOW_LOCAL_TRAIN=false`,
the submission digest and the record's path. The digest is known only after the record is written, and the record
names the rendered spec's hash, so a spec is rendered with `PENDING_DIGEST` first (that rendering is what
`spec_hash` covers) and then once more with the real digest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from guards.job_identity import PENDING_DIGEST as PENDING_DIGEST  # one definition, shared with the job's check
from guards.process_policy import OFFLINE_ENV
from guards.submission import DIGEST_ENV, RECORD_ENV
from oracle_base.digests import sha256_file
from oracle_base.errors import ConfigurationError, ExternalServiceError

if TYPE_CHECKING:
    from policies.settings import Settings

Target = Literal["slurm", "k8s", "argo"]
TARGETS: tuple[Target, ...] = ("slurm", "k8s", "argo")


LOCK_TAG_PREFIX = "lock-"
# Where the submission record is mounted inside a Kubernetes pod (a ConfigMap volume).
K8S_RECORD_DIR = "/etc/oracle/submission"
K8S_RECORD_PATH = f"{K8S_RECORD_DIR}/record.json"
# The checkout inside the job's image (built from the attested commit, with its .git and .oracle/attestations).
IMAGE_WORKDIR = "/workspace/oracle"
RENDEZVOUS_PORT = 29500

_TIME = re.compile(r"^(\d{1,3}):([0-5]\d):([0-5]\d)$")


class ClusterError(ExternalServiceError):
    """A scheduler or cluster API failed or is missing (sbatch, kubectl, the Argo server); one line, its own words."""


class PartialCancelError(ClusterError):
    """Some jobs were cancelled, others not; `cancelled` lists the ones that were."""

    def __init__(self, cancelled: list[str], message: str) -> None:
        super().__init__(message)
        self.cancelled = cancelled


class SpecError(ConfigurationError, ValueError):
    """A job request or a rendered spec that cannot be submitted; the message names the field and the fix."""


def parse_time(value: str, max_hours: int) -> str:
    """`HH:MM:SS` (hours may exceed 24), within the policy's cap; returns it normalised."""
    match = _TIME.match(value)
    if match is None:
        raise SpecError(f"--time {value!r} is not HH:MM:SS; write e.g. --time 04:00:00")
    hours, minutes, seconds = (int(part) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total == 0:
        raise SpecError("--time 00:00:00 gives the job no time; ask for at least a minute")
    if total > max_hours * 3600:
        raise SpecError(f"--time {value} exceeds the policy's cap of {max_hours} h (policies.toml cluster.max_hours)")
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def time_seconds(value: str) -> int:
    hours, minutes, seconds = (int(part) for part in value.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def lock_tag(lock_path: Path) -> str:
    """The image tag that names a lock's content: the locked image."""
    return LOCK_TAG_PREFIX + sha256_file(lock_path)[:16]


def image_for(root: Path, settings: Settings) -> str:
    """The job's image, as the Kubernetes and Argo specs name it and `make image` tags it: the Containerfile builds
    it from the GPU lock (requirements-gpu.lock), so its tag is that lock's."""
    from policies.lockfile import gpu_lock_name

    return f"{settings.cluster.image_repository}:{lock_tag(root / gpu_lock_name(settings.venv.lock))}"


@dataclass(frozen=True)
class JobRequest:
    """One training job, as the user asked for it and as policy allows it."""

    target: Target
    project: str  # policies.toml cluster.project: the mark of this project's jobs
    config: str  # the recipe as the user named it (a preset name or a path relative to the checkout)
    config_name: str  # the recipe's `name`
    config_hash: str  # TrainConfig.sha256(): what determines training
    commit: str
    root: Path  # the checkout the job runs in (SLURM: shared filesystem; k8s/argo: baked into the image)
    nodes: int
    gpus_per_node: int
    procs_per_node: int  # torchrun --nproc-per-node: the GPUs, or on CPU the recipe's world size / nodes
    time: str  # HH:MM:SS
    image: str  # image_repository:lock-<sha of requirements-gpu.lock> (k8s, argo): image_for()
    venv: Path  # the locked virtualenv (SLURM)
    partition: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    egress_cidrs: tuple[str, ...] = ()  # policies.toml cluster.egress_cidrs: the NetworkPolicy's declared networks
    kind: str = "train"  # "train", or "data": the data pipeline's stages (oracle/data/pipeline.py) over a plan
    work: Path | None = None  # data: the plan's work folder (config_hash is the plan's digest)
    output: Path | None = None  # data: the folder the finish stage writes
    tasks: int = 1  # data: the per-task stages' array size

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def job_name(self) -> str:
        """`<project>-<kind>-<recipe>`, lower case, within the 63 characters DNS-1123 labels allow."""
        name = re.sub(r"[^a-z0-9-]+", "-", f"{self.project}-{self.kind}-{self.config_name}".lower()).strip("-")
        return name[:63].rstrip("-")

    @property
    def mark(self) -> str:
        """What identifies this project's job and its (commit, config) pair: the SLURM comment, k8s annotations."""
        return f"{self.project}:commit={self.commit}:config={self.config_hash}"


PROJECT_LABEL = "oracle.dev/project"
COMMIT_LABEL = "oracle.dev/commit"
CONFIG_LABEL = "oracle.dev/config-hash"
# The annotation holding JobRequest.mark (the full commit and config hash, which labels are too short for).
MARK_ANNOTATION = "oracle.dev/mark"


def project_labels(project: str) -> dict[str, str]:
    """The labels every object of this project carries (the kill switch selects on `oracle.dev/project`)."""
    return {"app.kubernetes.io/part-of": project, PROJECT_LABEL: project}


def job_labels(request: JobRequest) -> dict[str, str]:
    # label values hold at most 63 characters: the full hashes go into annotations
    return {
        **project_labels(request.project),
        "app.kubernetes.io/name": request.job_name,
        COMMIT_LABEL: request.commit[:40],
        CONFIG_LABEL: request.config_hash[:16],
    }


def job_annotations(request: JobRequest) -> dict[str, str]:
    """The annotations every object of a job carries: the mark (what the duplicate check compares), in full."""
    return {MARK_ANNOTATION: request.mark, CONFIG_LABEL: request.config_hash, COMMIT_LABEL: request.commit}


def duplicate_labels(request: JobRequest) -> dict[str, str]:
    """The labels a Kubernetes Job or Argo Workflow of this project for the same commit and config carries: what the
    duplicate check asks the API server to select on (the mark annotation then tells config hashes apart in full)."""
    labels = job_labels(request)
    return {key: labels[key] for key in (PROJECT_LABEL, COMMIT_LABEL, CONFIG_LABEL)}


def label_selector(labels: Mapping[str, str]) -> str:
    """`key=value,key=value`: a Kubernetes label selector requiring every one of `labels`."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def job_environment(digest: str, record_path: str) -> dict[str, str]:
    """What the training runtime check needs in the job, in the order the specs list it, then the Hub clients'
    offline switches of the runtime layer (guards.process_policy, which installs its hooks whatever they say)."""
    return {"ALLOW_LOCAL_TRAIN": "false", DIGEST_ENV: digest, RECORD_ENV: record_path, **OFFLINE_ENV}


def spec_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
