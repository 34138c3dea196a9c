"""The submit gate's own checks on what will run: the rendered spec and the job's inputs.

The attestation proves the ci gate passed on this tree; these checks look at what the tree does not contain — the
spec about to reach the scheduler and the data the job will read:

- SUB001: every training container (every sbatch script) sets `ALLOW_LOCAL_TRAIN=false`, and nothing sets it to
  anything else.
- SUB002: the job runs the locked environment: on SLURM the virtualenv built from the lock of the job's machines
  (requirements-gpu.lock for a job that holds GPUs, requirements.lock otherwise: its stamp, and the script checks the
  venv against that lock), on Kubernetes and Argo the image tagged with the GPU lock's digest.
- SUB003: no foreign weights among the job's inputs: the data files are token shards listed (with sha256) by
  our packed format's index, and nothing else there is a weights file by content.
- SUB004: the runtime layer is in the spec: every process runs `oracle` (which installs the process policy's hooks
  before anything else, guards/process_policy.py) with the Hub clients' offline switches (`oracle hub publish`
  excepted), and on Kubernetes and Argo a NetworkPolicy of type Egress selects every pod that runs it.
- SUB005: the recipe fits the GPUs asked for: its plan (oracle/train/plan.py: parameters, gradients, optimizer
  states, the largest gathered layer, activations and buffers per GPU) is within the memory of the cluster's GPU.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from guards.process_policy import OFFLINE_ENV
from infra.spec import JobRequest
from oracle_base.digests import sha256_file
from oracle_base.records import RecordError
from oracle_base.records.training import PackedIndex
from policies.lockfile import job_lock_name
from policies.settings import load_settings

if TYPE_CHECKING:
    from oracle.train.config import TrainConfig

_ASSIGNMENT = re.compile(r"\bALLOW_LOCAL_TRAIN\s*=\s*(\S*)")
VENV_STAMP = ".requirements.lock.sha256"  # `<sha256 of the lock>  <lock>`, written by `make venv`


def check_sbatch(script: str, request: JobRequest, lock_sha256: str) -> list[str]:
    problems = []
    values = [match.group(1).strip("'\"") for match in _ASSIGNMENT.finditer(script)]
    if "false" not in values:
        problems.append("SUB001 the sbatch script does not set ALLOW_LOCAL_TRAIN=false")
    if any(value != "false" for value in values):
        problems.append("SUB001 the sbatch script sets ALLOW_LOCAL_TRAIN to something other than false")
    # SUB002: the venv's stamp names the job's lock (the GPU lock when the job holds GPUs; `lock_sha256` is the CPU
    # lock's, which the submission record binds), and the script verifies the venv against that lock
    cpu_lock = load_settings(request.root).venv.lock
    lock = job_lock_name(cpu_lock, request.gpus_per_node)
    want = lock_sha256
    if lock != cpu_lock:
        try:
            want = sha256_file(request.root / lock)
        except OSError:
            want = ""
            problems.append(f"SUB002 the job holds GPUs but {request.root / lock} cannot be read; run `make lock`")
    stamp = request.venv / VENV_STAMP
    try:
        fields = stamp.read_text(encoding="utf-8").split()
    except OSError:
        fields = []
    have = fields[0] if fields else ""
    built_from = fields[1] if len(fields) > 1 else cpu_lock  # a stamp older than the GPU lock holds the digest alone
    if have != want or built_from != lock:
        said = f"says {have[:12]} of {built_from}" if have else "missing"
        accelerator = "cuda" if lock != cpu_lock else "cpu"
        problems.append(
            f"SUB002 {request.venv} is not built from {lock} (stamp {stamp} {said}, {lock} is {want[:12]}); "
            f"run `ORACLE_ACCELERATOR={accelerator} make venv`"
        )
    # the data stages start with the venv's python, training with its torchrun
    launcher = '"$venv/bin/python"' if request.kind == "data" else '"$venv/bin/torchrun"'
    if (
        f"\nvenv={shlex.quote(str(request.venv))}\n" not in script
        or f'\njob_lock="$export_dir/{lock}"\n' not in script
        or '--lock "$job_lock"' not in script
        or "\nsrun " not in script
        or (launcher not in script)
    ):
        problems.append(
            f"SUB002 the sbatch script does not run {launcher} from the virtualenv {request.venv} checked against "
            f"{lock}"
        )
    exported = dict(re.findall(r"^export ([A-Z_]+)=(\S*)$", script, flags=re.MULTILINE))
    missing = [f"{key}={value}" for key, value in OFFLINE_ENV.items() if exported.get(key, "").strip("'\"") != value]
    if missing:
        problems.append(f"SUB004 the sbatch script does not export {', '.join(missing)} (the runtime layer's switches)")
    command = "-m oracle data stage" if request.kind == "data" else "-m oracle train"
    if command not in script:
        problems.append(f"SUB004 the sbatch script does not start its work as `{command}` (the process policy)")
    return problems


def _containers(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container object in a manifest or workflow (keys `containers`, `initContainers`, `container`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if key in {"containers", "initContainers"} and isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict):
                        yield f"{where}[{index}]", item
            elif key == "container" and isinstance(value, dict):
                yield where, value
            yield from _containers(value, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _containers(item, f"{path}[{index}]")


def _runs_training(container: dict[str, Any]) -> bool:
    words = [str(word) for key in ("command", "args") for word in container.get(key) or []]
    return any(re.search(r"\boracle(\.cli)?\b.*\btrain\b", word) for word in words) or (
        "train" in words and any("oracle" in word for word in words)
    )


_GATED = re.compile(r"^(oracle|python[0-9.]*\s+-m\s+oracle|torchrun\b.*\s-m\s+oracle)\s+(train|serve|data\s+run)\b")
_WORKFLOW_NAME = "{{workflow.name}}"


def _gated_process(container: dict[str, Any]) -> str | None:
    """The gated `oracle` command a container runs (train, serve, data run), or None."""
    words = " ".join(str(word) for key in ("command", "args") for word in container.get(key) or [])
    words = re.sub(r"\s--?[a-z-]+=\S+", "", words)  # torchrun's --opt=value options
    found = _GATED.search(words)
    return found.group(2) if found else None


def _network_policies(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NetworkPolicies of type Egress among the documents, and inside Argo resource templates."""
    found: list[dict[str, Any]] = []
    for document in documents:
        items = [document]
        for template in (document.get("spec") or {}).get("templates") or []:
            manifest = (template.get("resource") or {}).get("manifest") if isinstance(template, dict) else None
            if isinstance(manifest, str):
                try:
                    items.extend(item for item in yaml.safe_load_all(manifest) if isinstance(item, dict))
                except yaml.YAMLError:
                    continue
        for item in items:
            spec = item.get("spec") or {}
            if item.get("kind") == "NetworkPolicy" and "Egress" in (spec.get("policyTypes") or []):
                found.append(spec)
    return found


def _pod_labels(document: dict[str, Any]) -> dict[str, str] | None:
    """The labels of the pods a Job, Deployment or Argo Workflow creates (None for other objects)."""
    spec = document.get("spec") or {}
    if document.get("kind") in ("Job", "Deployment"):
        return dict(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {})
    if document.get("kind") == "Workflow":
        labels = dict((spec.get("podMetadata") or {}).get("labels") or {})
        return {**labels, "workflows.argoproj.io/workflow": _WORKFLOW_NAME}
    return None


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = (selector.get("podSelector") or {}).get("matchLabels") or {}
    expressions = (selector.get("podSelector") or {}).get("matchExpressions")
    return not expressions and all(labels.get(key) == value for key, value in wanted.items())


def check_runtime_layer(documents: list[dict[str, Any]]) -> list[str]:
    """SUB004 over Kubernetes manifests or an Argo workflow."""
    problems = []
    policies = _network_policies(documents)
    for index, document in enumerate(documents):
        name = f"{document.get('kind', '?')}/{(document.get('metadata') or {}).get('name', index)}"
        gated = False
        for where, container in _containers(document):
            command = _gated_process(container)
            if command is None:
                continue
            gated = True
            env = {item.get("name"): item.get("value") for item in container.get("env") or [] if isinstance(item, dict)}
            missing = [f"{key}={value}" for key, value in OFFLINE_ENV.items() if env.get(key) != value]
            if missing:
                problems.append(f"SUB004 {name} {where} runs `oracle {command}` without {', '.join(missing)}")
        labels = _pod_labels(document)
        if gated and labels is not None and not any(_selected(spec, labels) for spec in policies):
            problems.append(
                f"SUB004 no Egress NetworkPolicy selects the pods of {name}; render the spec with `oracle submit`"
            )
    return problems


def check_documents(documents: list[dict[str, Any]], request: JobRequest) -> list[str]:
    """SUB001/SUB002/SUB004 over Kubernetes manifests or an Argo workflow."""
    problems = check_runtime_layer(documents)
    trainers = 0
    for index, document in enumerate(documents):
        name = f"{document.get('kind', '?')}/{(document.get('metadata') or {}).get('name', index)}"
        for where, container in _containers(document):
            env = {item.get("name"): item.get("value") for item in container.get("env") or [] if isinstance(item, dict)}
            if "ALLOW_LOCAL_TRAIN" in env and env["ALLOW_LOCAL_TRAIN"] != "false":
                problems.append(f"SUB001 {name} {where} sets ALLOW_LOCAL_TRAIN={env['ALLOW_LOCAL_TRAIN']!r}")
            if _runs_training(container):
                trainers += 1
                if env.get("ALLOW_LOCAL_TRAIN") != "false":
                    problems.append(f"SUB001 {name} {where} runs training without ALLOW_LOCAL_TRAIN=false")
            if container.get("image") != request.image:
                problems.append(
                    f"SUB002 {name} {where} runs image {container.get('image')!r}, not the locked {request.image!r}"
                )
    if trainers == 0:
        problems.append("SUB001 no container of the rendered spec runs `oracle train`")
    return problems


def check_data_inputs(data_dir: Path) -> tuple[list[str], int]:
    """SUB003 over the job's data directory; returns the problems and the number of files examined.

    Every file is checked for a zip of weights (`torch.save` writes zips); every file except the token shards that
    `tokens/index.json` lists by plain name is also checked for the other weight formats by its first bytes (raw
    token ids could look like a pickle header by chance; their sha256 is checked by the trainer)."""
    from policies.weight_formats import weights_kind, zip_weights

    if not data_dir.is_dir():
        return [f"SUB003 the recipe's data.path {data_dir} does not exist here; prepare it with `oracle data run`"], 0
    tokens = data_dir / "tokens"
    listed: set[Path] = set()
    index = tokens / "index.json"
    if index.is_file():
        try:
            names = [entry.name for entry in PackedIndex.read(index).files]
        except RecordError as exc:
            return [f"SUB003 {exc}; rebuild it with `oracle data run`"], 0
        for name in names:
            if not re.fullmatch(r"tokens-\d{6}\.bin", name):
                return [f"SUB003 {index} lists {name!r}, not a token shard name (tokens-NNNNNN.bin)"], 0
            listed.add(tokens / name)
    problems, examined = [], 0
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file() or p.is_symlink()):
        examined += 1
        if path.is_symlink():
            problems.append(f"SUB003 {path} is a symbolic link; the job's inputs must be the files themselves")
            continue
        try:  # a listed shard is raw token ids: only a zip (never a token file) would be a disguise there
            kind = zip_weights(path) if path in listed else weights_kind(path)
        except OSError as exc:
            problems.append(f"SUB003 {path} cannot be read ({exc.strerror}); fix its permissions")
            continue
        if kind is not None:
            problems.append(f"SUB003 {path} among the job's inputs is a {kind} weights file; remove it from the data")
    return problems, examined


def check_plan(config: TrainConfig, request: JobRequest, gpu: str | None = None) -> list[str]:
    """SUB005: the recipe's plan on the requested nodes × GPUs fits each GPU's memory (CPU jobs have no plan)."""
    from oracle.train.plan import DEFAULT_GPU, GIB, PlanError, model_sizes, plan, remedy

    if request.gpus_per_node == 0:
        return []
    sizes = model_sizes(config.moe_config())
    try:
        layout = plan(
            config, nodes=request.nodes, gpus_per_node=request.gpus_per_node, gpu=gpu or DEFAULT_GPU, sizes=sizes
        )
    except PlanError as exc:
        return [f"SUB005 recipe {config.name}: {exc}"]
    if layout.fits:
        return []
    return [
        f"SUB005 recipe {config.name} does not fit {request.nodes} nodes × {request.gpus_per_node} "
        f"{layout.gpu.name}: it needs {layout.total_bytes / GIB:.1f} GiB per GPU of {layout.usable_bytes / GIB:.1f} "
        f"GiB usable ({layout.shortfall_gib():.1f} GiB short); {remedy(config, layout, sizes)} "
        f"(`oracle plan --config {request.config} --nodes {request.nodes} --gpus-per-node {request.gpus_per_node}`)"
    ]
