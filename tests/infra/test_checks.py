"""The submit gate's own checks (SUB001-SUB005) and the request's limits, without a scheduler."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from guards.process_policy import OFFLINE_ENV
from infra import checks
from infra.slurm import render_sbatch
from infra.spec import JobRequest, SpecError, job_environment, parse_time
from infra.submit import SubmitOptions, _shape
from policies.settings import Settings
from tests.train.conftest import write_corpus

LOCK_SHA = "ab" * 32
GPU_LOCK = "torch==2.13.0\n"


def request(tmp_path: Path, **changes: object) -> JobRequest:
    fields: dict[str, object] = {
        "target": "slurm",
        "project": "oracle",
        "config": "oracle-mini",
        "config_name": "oracle-mini",
        "config_hash": "cd" * 32,
        "commit": "e" * 40,
        "root": tmp_path,
        "nodes": 2,
        "gpus_per_node": 8,
        "procs_per_node": 8,
        "time": "04:00:00",
        "image": "cr.yandex/oracle/oracle-train:lock-0123456789abcdef",
        "venv": tmp_path / ".venv",
        "partition": "gpu",
        "namespace": "oracle",
    }
    fields.update(changes)
    return JobRequest(**fields)  # type: ignore[arg-type]


def locked_venv(tmp_path: Path, sha: str | None = None) -> None:
    """A venv stamped as `make venv` stamps it, built from the GPU lock (the default request holds GPUs)."""
    (tmp_path / "requirements-gpu.lock").write_text(GPU_LOCK)
    (tmp_path / ".venv").mkdir(exist_ok=True)
    sha = sha or hashlib.sha256(GPU_LOCK.encode()).hexdigest()
    (tmp_path / ".venv" / checks.VENV_STAMP).write_text(f"{sha}  requirements-gpu.lock\n")


def sbatch(job: JobRequest, env: dict[str, str] | None = None) -> str:
    return render_sbatch(
        job,
        env or job_environment("1" * 64, "/r/record.json"),
        lock_sha256=LOCK_SHA,
        log_dir=Path("/r/logs"),
        digest="1" * 64,
        tree="2" * 40,
    )


def test_rendered_sbatch_passes_and_carries_the_contract(tmp_path: Path) -> None:
    locked_venv(tmp_path)
    job = request(tmp_path)
    script = sbatch(job)
    assert checks.check_sbatch(script, job, LOCK_SHA) == []
    assert "#SBATCH --nodes=2\n" in script
    assert "#SBATCH --gpus-per-node=8\n" in script
    assert f"#SBATCH --comment={job.mark}:digest={'1' * 64}\n" in script  # the mark, then the digest
    assert "#SBATCH --job-name=oracle-train-oracle-mini\n" in script
    assert "export ALLOW_LOCAL_TRAIN=false\n" in script
    assert "export ORACLE_SUBMISSION_DIGEST=" + "1" * 64 in script
    assert "--rdzv-backend=c10d" in script
    assert "--nproc-per-node=8" in script
    assert "DS_ACCELERATOR" not in script


def test_cpu_single_node_sbatch_uses_standalone_rendezvous(tmp_path: Path) -> None:
    script = sbatch(request(tmp_path, nodes=1, gpus_per_node=0, procs_per_node=2))
    assert "--standalone" in script
    assert "gpus-per-node" not in script
    assert "export DS_ACCELERATOR=cpu" in script


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ALLOW_LOCAL_TRAIN": "true"}, "something other than false"),
        ({"OTHER": "1"}, "does not set ALLOW_LOCAL_TRAIN=false"),
    ],
)
def test_sub001_refuses_a_script_without_allow_local_train_false(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    locked_venv(tmp_path)
    job = request(tmp_path)
    problems = checks.check_sbatch(sbatch(job, env), job, LOCK_SHA)
    assert any(p.startswith("SUB001") and expected in p for p in problems), problems


def test_sub002_refuses_a_venv_not_built_from_the_lock(tmp_path: Path) -> None:
    locked_venv(tmp_path, sha="99" * 32)
    job = request(tmp_path)
    problems = checks.check_sbatch(sbatch(job), job, LOCK_SHA)
    assert len(problems) == 1
    assert problems[0].startswith("SUB002")
    assert "make venv" in problems[0]


POD_LABELS = {"app": "trainer"}
EGRESS = {
    "kind": "NetworkPolicy",
    "metadata": {"name": "egress"},
    "spec": {"podSelector": {"matchLabels": POD_LABELS}, "policyTypes": ["Egress"], "egress": []},
}


def _pod(
    image: str, env: dict[str, str], command: list[str], *, offline: bool = True, kind: str = "Job"
) -> dict[str, object]:
    container = {
        "name": "c",
        "image": image,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in {**env, **(OFFLINE_ENV if offline else {})}.items()],
    }
    template = {"metadata": {"labels": POD_LABELS}, "spec": {"containers": [container]}}
    return {"kind": kind, "metadata": {"name": "j"}, "spec": {"template": template}}


def test_documents_check_finds_foreign_images_and_local_training(tmp_path: Path) -> None:
    job = request(tmp_path, target="k8s")
    good = _pod(job.image, {"ALLOW_LOCAL_TRAIN": "false"}, ["torchrun", "-m", "oracle", "train"])
    assert checks.check_documents([good, EGRESS], job) == []
    foreign = _pod("docker.io/someone/trainer:latest", {"ALLOW_LOCAL_TRAIN": "false"}, ["oracle", "train"])
    assert [p[:6] for p in checks.check_documents([foreign, EGRESS], job)] == ["SUB002"]
    local = _pod(job.image, {"ALLOW_LOCAL_TRAIN": "true"}, ["oracle", "train"])
    assert {p[:6] for p in checks.check_documents([local, EGRESS], job)} == {"SUB001"}
    no_training = _pod(job.image, {}, ["oracle", "serve"])
    assert any("no container" in p for p in checks.check_documents([no_training, EGRESS], job))


def test_documents_check_requires_the_runtime_layer(tmp_path: Path) -> None:
    job = request(tmp_path, target="k8s")
    command = ["torchrun", "--nnodes=2", "--master-port=29500", "-m", "oracle", "train", "--config", "x"]
    trainer = _pod(job.image, {"ALLOW_LOCAL_TRAIN": "false"}, command)
    # no NetworkPolicy selecting the pods
    (problem,) = checks.check_documents([trainer], job)
    assert problem.startswith("SUB004")
    assert "NetworkPolicy" in problem
    # a NetworkPolicy that selects other pods, or allows ingress only, does not count
    other = {**EGRESS, "spec": {**EGRESS["spec"], "podSelector": {"matchLabels": {"app": "else"}}}}  # type: ignore[dict-item]
    ingress = {**EGRESS, "spec": {**EGRESS["spec"], "policyTypes": ["Ingress"]}}  # type: ignore[dict-item]
    for policy in (other, ingress):
        assert [p[:6] for p in checks.check_documents([trainer, policy], job)] == ["SUB004"]
    # the offline switches missing from a serving container
    server = _pod(job.image, {}, ["oracle", "serve", "--checkpoint", "runs/x"], offline=False, kind="Deployment")
    problems = checks.check_documents([trainer, server, EGRESS], job)
    assert [p[:6] for p in problems] == ["SUB004"]
    assert "HF_HUB_OFFLINE=1" in problems[0]


def test_sbatch_check_requires_the_runtime_layer(tmp_path: Path) -> None:
    job = request(tmp_path)
    script = sbatch(job).replace("export HF_HUB_OFFLINE=1\n", "")
    problems = [p for p in checks.check_sbatch(script, job, LOCK_SHA) if not p.startswith("SUB002")]  # no venv here
    assert [p[:6] for p in problems] == ["SUB004"]
    assert "HF_HUB_OFFLINE=1" in problems[0]
    assert not [p for p in checks.check_sbatch(sbatch(job), job, LOCK_SHA) if p.startswith("SUB004")]


def test_sub003_data_inputs(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "data")
    problems, examined = checks.check_data_inputs(data)
    assert problems == []
    assert examined == 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (data / "extra.bin").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    problems, _ = checks.check_data_inputs(data)
    assert len(problems) == 1
    assert "SUB003" in problems[0]
    assert "extra.bin" in problems[0]
    assert "safetensors" in problems[0]
    missing, _ = checks.check_data_inputs(tmp_path / "nowhere")
    assert "does not exist" in missing[0]


def test_sub003_sees_torch_save_archives_and_distrusts_the_index(tmp_path: Path) -> None:
    import torch

    data = write_corpus(tmp_path / "data")
    torch.save({"w": torch.zeros(2)}, data / "tokens" / "model.pt")
    problems, _ = checks.check_data_inputs(data)
    assert len(problems) == 1
    assert "model.pt" in problems[0]
    assert "PyTorch zip archive" in problems[0]
    (data / "tokens" / "model.pt").unlink()
    index = data / "tokens" / "index.json"
    manifest = json.loads(index.read_text())
    manifest["files"].append({"name": "extra.safetensors", "sequences": 1, "sha256": "0" * 64})
    index.write_text(json.dumps(manifest, indent=2))
    problems, _ = checks.check_data_inputs(data)
    assert len(problems) == 1
    assert "not a token shard name" in problems[0]
    manifest["files"][-1]["name"] = "../extra.safetensors"  # read by the index's own schema (the trainer's)
    index.write_text(json.dumps(manifest, indent=2))
    problems, _ = checks.check_data_inputs(data)
    line = index.read_text().splitlines().index('      "name": "tokens-000000.bin",') + 1  # the first file's name
    key = f"files.{len(manifest['files']) - 1}.name"
    assert problems == [
        f"SUB003 packed-data index {index}:{line}: {key}: '../extra.safetensors' is not a plain file name (the file "
        "lies in the index's own folder); rebuild it with `oracle data run`"
    ]


def test_hostile_names_stay_arguments_in_the_script(tmp_path: Path) -> None:
    import shlex
    import subprocess

    hostile = 'mini"; touch /tmp/pwned; echo "'
    script = sbatch(request(tmp_path, config=hostile, config_name=hostile, nodes=1, procs_per_node=8))
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert f"--config {shlex.quote(hostile)}" in script
    assert shlex.quote(hostile + "-") + '"$SLURM_JOB_ID"' in script
    assert not any(line.strip().startswith("touch") for line in script.splitlines())


def test_time_limits() -> None:
    assert parse_time("4:00:00", 168) == "04:00:00"
    assert parse_time("100:30:00", 168) == "100:30:00"
    for bad, words in [("4h", "HH:MM:SS"), ("00:00:00", "no time"), ("169:00:00", "cap of 168 h")]:
        with pytest.raises(SpecError, match=words):
            parse_time(bad, 168)


def test_shape_follows_the_recipe_and_the_caps() -> None:
    settings = Settings()
    assert _shape(SubmitOptions(target="slurm"), 256, settings) == (32, 8, 8)
    assert _shape(SubmitOptions(target="slurm", gpus_per_node=0), 2, settings) == (1, 0, 2)
    assert _shape(SubmitOptions(target="slurm"), 2, settings) == (1, 2, 2)
    refusals = [
        (SubmitOptions(target="slurm", nodes=33, gpus_per_node=8), 264, "cluster.max_nodes"),
        (SubmitOptions(target="slurm", gpus_per_node=16), 16, "cluster.max_gpus_per_node"),
        (SubmitOptions(target="slurm", nodes=4, gpus_per_node=8), 256, "trains on 256"),
        (SubmitOptions(target="slurm", nodes=3, gpus_per_node=0), 2, "do not divide"),
    ]
    for options, world, words in refusals:
        with pytest.raises(SpecError, match=words):
            _shape(options, world, settings)


def test_sub005_refuses_a_recipe_that_does_not_fit_the_gpus(tmp_path: Path) -> None:
    from oracle.train.config import load_train_config

    job = request(tmp_path, config="oracle850b", config_name="oracle850b", nodes=32, gpus_per_node=8)
    flagship = load_train_config("oracle850b")
    assert checks.check_plan(flagship, job, gpu="h200-141gb") == []  # the cluster's GPU (policies.toml)
    (problem,) = checks.check_plan(flagship, job, gpu="h100-80gb")
    assert problem.startswith("SUB005 recipe oracle850b does not fit 32 nodes × 8 h100-80gb: it needs ")
    assert re.search(r"\(\d+\.\d GiB short\)", problem)
    assert "h200-141gb" in problem  # the fix: what to change
    assert problem.endswith("(`oracle plan --config oracle850b --nodes 32 --gpus-per-node 8`)")
    unchecked = flagship.model_copy(update={"activation_checkpointing": False})
    (problem,) = checks.check_plan(unchecked, job, gpu="h200-141gb")
    assert "set activation_checkpointing: true" in problem
    (mismatch,) = checks.check_plan(load_train_config("oracle850b"), replace(job, nodes=4))
    assert mismatch.startswith("SUB005 recipe oracle850b: 4 nodes × 8 GPUs = 32 ranks")


def test_sub005_passes_a_recipe_that_fits_and_cpu_jobs(tmp_path: Path) -> None:
    from oracle.train.config import load_train_config

    mini = load_train_config("oracle-mini")
    assert checks.check_plan(mini, request(tmp_path, nodes=1, gpus_per_node=2, procs_per_node=2)) == []
    assert checks.check_plan(mini, request(tmp_path, nodes=1, gpus_per_node=0, procs_per_node=2)) == []


def test_submit_plans_the_flagship_on_the_clusters_gpu(repository_checkout: Path) -> None:
    """SUB005 at `oracle submit`: the flagship is planned on the cluster's GPU (policies.toml cluster.gpu), fits and
    renders (the refusals are the unit tests above)."""
    from tests.checkouts import oracle

    args = ["--config", "oracle850b", "--nodes", "32", "--gpus-per-node", "8", "--dry-run"]
    done = oracle(repository_checkout, "submit", "--target", "k8s", *args, env={"KUBECONFIG": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    assert "kind: Job" in done.stdout
