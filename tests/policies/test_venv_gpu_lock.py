"""The two locks: requirements.lock for machines without a GPU, requirements-gpu.lock for machines with an NVIDIA
driver; which one a machine installs, and what the venv policy holds each lock and each machine to."""

from pathlib import Path

import pytest

from guards.runner import run_gate
from policies import lockfile
from policies.context import Environment
from policies.lockfile import AcceleratorError, gpu_lock_name, job_lock_name, machine_lock, pins, stamp_lock
from policies.rule import Gate, Severity
from tests.policies.conftest import ids, only, write_tree

PYPROJECT = '[project]\nname = "demo"\nrequires-python = ">=3.11"\ndependencies = ["numpy>=2.0", "torch==2.13.0"]\n'
HASH = "--hash=sha256:" + "a" * 64
CPU_LOCK = f"numpy==2.4.6 \\\n    {HASH}\ntorch==2.13.0+cpu \\\n    {HASH}\n"
GPU_LOCK = f"numpy==2.4.6 \\\n    {HASH}\nnvidia-nccl-cu13==2.29.7 \\\n    {HASH}\ntorch==2.13.0 \\\n    {HASH}\n"
CPU_VENV = {"numpy": "2.4.6", "torch": "2.13.0+cpu"}
GPU_VENV = {"numpy": "2.4.6", "nvidia-nccl-cu13": "2.29.7", "torch": "2.13.0"}
DRIVER = "/proc/driver/nvidia/version"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": PYPROJECT,
            "requirements.lock": CPU_LOCK,
            "requirements-gpu.lock": GPU_LOCK,
            "policies/policies.toml": "",
        },
    )
    for lock in ("requirements.lock", "requirements-gpu.lock"):
        stamp_lock(tmp_path / lock, tmp_path / "pyproject.toml", ["dev"])
    return tmp_path


@pytest.fixture
def gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORACLE_ACCELERATOR", raising=False)
    monkeypatch.setattr(lockfile, "nvidia_driver", lambda environ: DRIVER)


@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORACLE_ACCELERATOR", raising=False)
    monkeypatch.setattr(lockfile, "nvidia_driver", lambda environ: None)


def _run(root: Path, dists: dict[str, str], gate: Gate = Gate.ci) -> object:
    env = Environment(root / ".venv", Path("/usr"), dists)
    return run_gate(root, gate, environment_factory=lambda: env)


# --- which lock a machine installs ----------------------------------------------------------------------------------


def test_the_gpu_lock_lies_beside_the_cpu_lock() -> None:
    assert gpu_lock_name("requirements.lock") == "requirements-gpu.lock"
    assert gpu_lock_name("locks/requirements.lock") == "locks/requirements-gpu.lock"
    assert job_lock_name("requirements.lock", gpus_per_node=8) == "requirements-gpu.lock"
    assert job_lock_name("requirements.lock", gpus_per_node=0) == "requirements.lock"


def test_a_machine_with_an_nvidia_driver_installs_the_gpu_lock() -> None:
    chosen = machine_lock("requirements.lock", {}, driver=lambda environ: DRIVER)
    assert (chosen.accelerator, chosen.lock, chosen.overridden) == ("cuda", "requirements-gpu.lock", False)
    assert DRIVER in chosen.why
    chosen = machine_lock("requirements.lock", {"CI": "true"}, driver=lambda environ: None)
    assert (chosen.accelerator, chosen.lock, chosen.overridden) == ("cpu", "requirements.lock", False)


def test_nvidia_smi_on_path_is_a_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockfile, "NVIDIA_DRIVER", tmp_path / "no-such-file")
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    assert lockfile.nvidia_driver({"PATH": str(smi.parent)}) == str(smi)
    assert lockfile.nvidia_driver({"PATH": str(tmp_path)}) is None


def test_oracle_accelerator_overrides_and_says_so() -> None:
    chosen = machine_lock("requirements.lock", {"ORACLE_ACCELERATOR": "cpu"}, driver=lambda environ: DRIVER)
    assert (chosen.lock, chosen.overridden) == ("requirements.lock", True)
    assert "ORACLE_ACCELERATOR=cpu" in chosen.why
    assert DRIVER in chosen.why
    chosen = machine_lock("requirements.lock", {"ORACLE_ACCELERATOR": "cuda"}, driver=lambda environ: DRIVER)
    assert (chosen.lock, chosen.overridden) == ("requirements-gpu.lock", False)
    with pytest.raises(AcceleratorError, match="neither cpu nor cuda"):
        machine_lock("requirements.lock", {"ORACLE_ACCELERATOR": "rocm"}, driver=lambda environ: None)


def test_the_gpu_lock_is_constrained_by_the_cpu_locks_pins_but_torch() -> None:
    assert pins(CPU_LOCK, ["torch"]) == ["numpy==2.4.6"]


# --- the venv policy ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cpu_machine")
def test_a_machine_without_a_gpu_is_held_to_the_cpu_lock(project: Path) -> None:
    assert ids(_run(project, CPU_VENV), "VENV") == []  # type: ignore[arg-type]
    messages = [f.message for f in only(_run(project, GPU_VENV), "VENV003")]  # type: ignore[arg-type]
    assert "torch 2.13.0 is installed, requirements.lock pins 2.13.0+cpu" in messages


@pytest.mark.usefixtures("gpu_machine")
def test_a_machine_with_a_gpu_is_held_to_the_gpu_lock(project: Path) -> None:
    assert ids(_run(project, GPU_VENV), "VENV") == []  # type: ignore[arg-type]
    messages = [f.message for f in only(_run(project, CPU_VENV), "VENV003")]  # type: ignore[arg-type]
    assert "torch 2.13.0+cpu is installed, requirements-gpu.lock pins 2.13.0" in messages
    assert "nvidia-nccl-cu13==2.29.7 is locked but not installed" in messages


@pytest.mark.usefixtures("gpu_machine")
def test_the_override_is_a_warning_in_the_report(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORACLE_ACCELERATOR", "cpu")
    findings = [f for f in _run(project, CPU_VENV).findings if f.rule_id.startswith("VENV")]  # type: ignore[attr-defined]
    assert [(f.rule_id, f.severity) for f in findings] == [("VENV013", Severity.warning)]
    assert "requirements.lock" in findings[0].message
    assert DRIVER in findings[0].message


@pytest.mark.usefixtures("cpu_machine")
def test_an_unknown_accelerator_fails_the_gate(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORACLE_ACCELERATOR", "gpu")
    assert ids(_run(project, CPU_VENV), "VENV") == ["VENV003"]  # type: ignore[arg-type]


@pytest.mark.usefixtures("gpu_machine")
def test_an_oracle_checkout_on_a_gpu_machine_needs_the_gpu_lock(project: Path) -> None:
    (project / "requirements-gpu.lock").unlink()
    (project / "pyproject.toml").write_text(PYPROJECT.replace('"demo"', '"oracle"'))
    stamp_lock(project / "requirements.lock", project / "pyproject.toml", ["dev"])
    messages = [f.message for f in only(_run(project, CPU_VENV), "VENV003")]  # type: ignore[arg-type]
    assert any("requirements-gpu.lock" in m and "does not exist" in m for m in messages), messages


@pytest.mark.usefixtures("gpu_machine")
def test_another_repository_with_the_cpu_lock_alone_keeps_it_on_a_gpu_machine(project: Path) -> None:
    (project / "requirements-gpu.lock").unlink()
    assert ids(_run(project, CPU_VENV), "VENV") == []  # type: ignore[arg-type]


@pytest.mark.usefixtures("cpu_machine")
@pytest.mark.parametrize(
    ("lock", "expected"),
    [
        (GPU_LOCK.replace("torch==2.13.0 ", "torch==2.13.0+cpu "), "a local build"),
        (GPU_LOCK.replace("torch==2.13.0 ", "torch==2.12.0 "), "requirements.lock 2.13.0+cpu"),
        (GPU_LOCK.replace("nvidia-nccl-cu13==2.29.7", "triton==3.7.1"), "no nvidia-* library"),
        (GPU_LOCK.replace("numpy==2.4.6", "numpy==2.4.7"), "pins numpy 2.4.7, requirements.lock 2.4.6"),
        (GPU_LOCK.replace("numpy==2.4.6", "rich==15.0.0"), "lacks what requirements.lock pins: numpy"),
    ],
)
def test_a_gpu_lock_that_is_not_the_cpu_lock_with_cuda_torch_is_found(project: Path, lock: str, expected: str) -> None:
    (project / "requirements-gpu.lock").write_text(lock)
    stamp_lock(project / "requirements-gpu.lock", project / "pyproject.toml", ["dev"])
    messages = [f.message for f in only(_run(project, CPU_VENV), "VENV012")]  # type: ignore[arg-type]
    assert any(expected in m for m in messages), messages


@pytest.mark.usefixtures("cpu_machine")
def test_the_gpu_lock_is_held_to_hashes_and_its_declared_input(project: Path) -> None:
    gpu = project / "requirements-gpu.lock"
    gpu.write_text(gpu.read_text() + "typer==0.29.2\n")
    findings = only(_run(project, CPU_VENV), "VENV004")  # type: ignore[arg-type]
    assert [(f.path, f.message) for f in findings] == [("requirements-gpu.lock", "typer==0.29.2 has no --hash")]
    gpu.write_text(GPU_LOCK)  # no stamp: compiled from an unknown input
    assert [f.path for f in only(_run(project, CPU_VENV), "VENV005")] == ["requirements-gpu.lock"]  # type: ignore[arg-type]


@pytest.mark.usefixtures("cpu_machine")
@pytest.mark.parametrize(
    ("content", "rule"),
    [
        ("RUN pip install --require-hashes --no-deps -r requirements-gpu.lock\n", None),
        ("RUN pip install --require-hashes -r requirements.lock\n", None),
        ("RUN pip install --require-hashes -r requirements-cuda.lock\n", "VENV009"),
        ("RUN pip install --require-hashes -r other/requirements-gpu.lock.txt\n", "VENV009"),
    ],
)
def test_only_the_two_locks_may_be_installed(project: Path, content: str, rule: str | None) -> None:
    write_tree(project, {"Containerfile": "FROM python:3.11\n" + content})
    found = [f.rule_id for f in only(_run(project, CPU_VENV), "VENV009")]  # type: ignore[arg-type]
    assert found == ([rule] if rule else [])


@pytest.mark.usefixtures("cpu_machine")
def test_the_repositorys_containerfile_and_makefile_install_only_the_locks(project: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    write_tree(project, {name: (root / name).read_text() for name in ("Containerfile", "Makefile")})
    findings = [f for f in _run(project, CPU_VENV).findings if f.rule_id in {"VENV009", "VENV010", "VENV011"}]  # type: ignore[attr-defined]
    assert findings == []
