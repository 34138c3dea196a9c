"""The GPU environment of cluster jobs: the SLURM script checks the job's venv against the lock of the GPUs it holds,
and the Containerfile builds the image the Kubernetes and Argo specs name from requirements-gpu.lock (read offline:
base pinned by digest, the lock installed with hashes alone, a user that is not root, `python -m oracle` with the
runtime layer's switches)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from guards.process_policy import OFFLINE_ENV, WEIGHTS_ONLY_ENV
from infra import checks
from infra.spec import IMAGE_WORKDIR, image_for, lock_tag
from infra.submit import SubmitOptions, build_request
from policies.lockfile import parse_lock
from policies.settings import load_settings
from tests.infra.test_checks import LOCK_SHA, locked_venv, request, sbatch

ROOT = Path(__file__).resolve().parents[2]


# --- SLURM: the job's venv against the lock of the GPUs it holds ----------------------------------------------------


def test_a_gpu_job_checks_its_venv_against_the_gpu_lock(tmp_path: Path) -> None:
    locked_venv(tmp_path)
    job = request(tmp_path, gpus_per_node=8)
    script = sbatch(job)
    assert 'job_lock="$export_dir/requirements-gpu.lock"\n' in script
    assert '--lock "$job_lock"' in script
    assert checks.check_sbatch(script, job, LOCK_SHA) == []


def test_a_cpu_job_checks_its_venv_against_the_cpu_lock(tmp_path: Path) -> None:
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / checks.VENV_STAMP).write_text(f"{LOCK_SHA}  requirements.lock\n")
    job = request(tmp_path, nodes=1, gpus_per_node=0, procs_per_node=2)
    script = sbatch(job)
    assert 'job_lock="$export_dir/requirements.lock"\n' in script
    assert checks.check_sbatch(script, job, LOCK_SHA) == []
    (tmp_path / ".venv" / checks.VENV_STAMP).write_text(LOCK_SHA + "\n")  # written before the GPU lock existed
    assert checks.check_sbatch(script, job, LOCK_SHA) == []


def test_sub002_refuses_a_gpu_job_on_a_venv_built_from_the_cpu_lock(tmp_path: Path) -> None:
    locked_venv(tmp_path)
    (tmp_path / ".venv" / checks.VENV_STAMP).write_text(f"{LOCK_SHA}  requirements.lock\n")
    job = request(tmp_path, gpus_per_node=8)
    problems = checks.check_sbatch(sbatch(job), job, LOCK_SHA)
    assert len(problems) == 1, problems
    assert problems[0].startswith("SUB002")
    assert "not built from requirements-gpu.lock" in problems[0]
    assert "ORACLE_ACCELERATOR=cuda make venv" in problems[0]


def test_sub002_refuses_a_gpu_job_whose_script_checks_the_cpu_lock(tmp_path: Path) -> None:
    locked_venv(tmp_path)
    job = request(tmp_path, gpus_per_node=8)
    script = sbatch(job).replace("$export_dir/requirements-gpu.lock", "$export_dir/requirements.lock")
    problems = checks.check_sbatch(script, job, LOCK_SHA)
    assert [p for p in problems if "checked against requirements-gpu.lock" in p], problems


def test_sub002_refuses_a_gpu_job_without_a_gpu_lock(tmp_path: Path) -> None:
    locked_venv(tmp_path)
    (tmp_path / "requirements-gpu.lock").unlink()
    job = request(tmp_path, gpus_per_node=8)
    problems = checks.check_sbatch(sbatch(job), job, LOCK_SHA)
    assert any("requirements-gpu.lock cannot be read" in p for p in problems), problems


# --- the Containerfile, read offline --------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _env() -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "ENV":
            values.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return values


def test_the_base_image_is_pinned_by_digest() -> None:
    bases = [rest for word, rest in _instructions() if word == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        assert re.fullmatch(r"[\w./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}", base.split()[0]), base


def test_the_image_installs_the_gpu_lock_alone_with_hashes() -> None:
    steps = _instructions()
    copied = next(i for i, (word, rest) in enumerate(steps) if word == "COPY" and "requirements-gpu.lock" in rest)
    installs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN" and "pip install" in rest]
    locked = [(i, rest) for i, rest in installs if "-r requirements-gpu.lock" in rest]
    assert len(locked) == 1
    assert locked[0][0] > copied
    command = locked[0][1]
    assert "--require-hashes" in command
    assert "--no-deps" in command
    assert "--index-url" not in command
    assert "--extra-index-url" not in command
    assert "--find-links" not in command
    for _, rest in installs:  # the other install is the project itself, from the checkout, without dependencies
        assert "-r requirements-gpu.lock" in rest or re.search(r"--no-deps .*-e \.(\s|$)", rest), rest
    assert not any("requirements.lock" in rest for _, rest in steps), "the image is the GPU lock's"


def test_the_image_runs_as_a_user_that_is_not_root() -> None:
    users = [rest for word, rest in _instructions() if word == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric uid lets runAsNonRoot verify it"


def test_the_image_runs_python_m_oracle_with_the_runtime_layers_switches() -> None:
    steps = _instructions()
    entrypoint = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    assert entrypoint == [f"{IMAGE_WORKDIR}/.venv/bin/python", "-m", "oracle"]
    assert [rest for word, rest in steps if word == "WORKDIR"][-1] == IMAGE_WORKDIR
    env = _env()
    for name, value in {**OFFLINE_ENV, **WEIGHTS_ONLY_ENV, "ALLOW_LOCAL_TRAIN": "false"}.items():
        assert env.get(name) == value, name
    # the specs' commands (`torchrun … -m oracle train`, `oracle serve`) find the venv's scripts without a PATH
    # into the venv (which the venv policy would read as another environment)
    assert any(word == "RUN" and "/.venv/bin/torchrun" in rest and "/usr/local/bin" in rest for word, rest in steps)


def test_the_build_context_keeps_git_and_the_attestations_but_not_the_venv() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".venv/" in ignored
    assert "!.oracle/attestations/" in ignored
    assert not any(line.strip().startswith(".git") for line in ignored)


# --- the image's name: one function for the specs and `make image` ----------------------------------------------------


def test_the_specs_name_the_image_tagged_with_the_gpu_locks_digest() -> None:
    settings = load_settings(ROOT)
    options = SubmitOptions(target="k8s", config="oracle-mini", nodes=1, gpus_per_node=2, time="01:00:00")
    job, _, _ = build_request(ROOT, options, settings, "e" * 40)
    digest = hashlib.sha256((ROOT / "requirements-gpu.lock").read_bytes()).hexdigest()
    assert job.image == image_for(ROOT, settings) == f"{settings.cluster.image_repository}:lock-{digest[:16]}"
    assert job.image.endswith(":" + lock_tag(ROOT / "requirements-gpu.lock"))


def test_make_image_tags_the_image_the_specs_name() -> None:
    done = subprocess.run(
        ["make", "-s", "image-name"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == image_for(ROOT, load_settings(ROOT))


# --- the Makefile builds .venv from the machine's lock ----------------------------------------------------------------


@pytest.mark.parametrize(("accelerator", "lock"), [("cpu", "requirements.lock"), ("cuda", "requirements-gpu.lock")])
def test_make_venv_builds_from_the_lock_the_accelerator_names(accelerator: str, lock: str) -> None:
    environ = {**os.environ, "ORACLE_ACCELERATOR": accelerator}
    done = subprocess.run(
        ["make", "-n", "venv"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"sha256sum {lock} " in done.stdout
    assert f'echo "$want  {lock}" >' in done.stdout  # the stamp records the lock


def test_make_refuses_an_unknown_accelerator() -> None:
    environ = {**os.environ, "ORACLE_ACCELERATOR": "rocm"}
    done = subprocess.run(
        ["make", "-n", "venv"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "neither cpu nor cuda" in done.stderr


def test_the_committed_gpu_lock_holds_torchs_cuda_build() -> None:
    gpu = parse_lock((ROOT / "requirements-gpu.lock").read_text()).entries
    cpu = parse_lock((ROOT / "requirements.lock").read_text()).entries
    assert gpu["torch"].version == cpu["torch"].version.split("+")[0]
    assert "+" not in gpu["torch"].version
    assert {"nvidia-cuda-runtime", "nvidia-nccl-cu13", "nvidia-cudnn-cu13", "triton"} <= set(gpu)
    assert all(entry.hashes for entry in gpu.values())
    assert "flash-attn" not in gpu  # PyPI has no wheel of it: attention uses torch's flash SDPA kernel
