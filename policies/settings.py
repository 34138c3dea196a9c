"""Policy settings: `policies/policies.toml`, validated by one pydantic schema.

A malformed file is a `SettingsError` naming the file, line and key; the CLI turns it into exit code 2. A checkout
without a settings file gets the defaults below, which are the project's policy.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oracle.validation import describe_validation_error

SETTINGS_FILE = Path("policies") / "policies.toml"


class SettingsError(ValueError):
    """policies.toml or waivers.toml cannot be used; the message names the file, line and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScanSettings(_Section):
    exclude: list[str] = Field(default_factory=list, description="Globs never scanned, on top of .gitignore")
    max_file_bytes: int = Field(default=20_000_000, gt=0, description="Larger files are listed as skipped")
    fail_on: Literal["error", "warning"] = "error"


class VenvSettings(_Section):
    project_venv: str = ".venv"
    lock: str = "requirements.lock"
    declared_input: str = "pyproject.toml"
    lock_extras: list[str] = Field(default_factory=lambda: ["dev"])
    allow_unlocked: list[str] = Field(
        default_factory=lambda: ["pip", "oracle"], description="Distributions that may be installed without a lock pin"
    )


class LocalTrainSettings(_Section):
    allow_override: bool = Field(default=False, description="May ALLOW_LOCAL_TRAIN=true override the runtime check")
    runtime_check: str = Field(default="require_training_allowed", description="Function every entry point calls")
    entry_points: list[str] = Field(
        default_factory=list, description="path:function of training entry points (each must exist and be guarded)"
    )
    train_packages: list[str] = Field(default_factory=lambda: ["oracle/train"])


class ExternalWeightsSettings(_Section):
    allowed_namespaces: list[str] = Field(default_factory=lambda: ["oracle-ai"], description="Our Hub orgs")
    extra_forbidden_names: list[str] = Field(default_factory=list, description="More foreign model families")
    extra_loader_calls: list[str] = Field(default_factory=list, description="More functions that fetch weights")


class ArchitectureSettings(_Section):
    flagship: str = "oracle850b"
    n_experts: int = 64
    top_k: int = 2
    context_length: int = 8192
    vocab_size: int = 65536
    param_total_target: int = 850_000_000_000
    param_total_tolerance: float = Field(default=0.01, gt=0, lt=1)
    param_active_min: int = 110_000_000_000
    param_active_max: int = 130_000_000_000
    model_code: list[str] = Field(default_factory=lambda: ["oracle/core", "oracle/moe850b"])
    model_code_imports: list[str] = Field(
        default_factory=lambda: ["torch", "pydantic", "safetensors", "flash_attn", "oracle"],
        description="Top-level packages model code may import besides the standard library",
    )
    consistency_files: dict[str, str] = Field(
        default_factory=dict, description="role → path of files whose numbers must agree with the model config"
    )


class AttestationSettings(_Section):
    require_signature: bool = Field(default=False, description="Refuse unsigned attestations at publish/submit")


class ClusterSettings(_Section):
    """What `oracle submit` may ask of a cluster, and how this project's jobs are marked (the kill switch cancels
    exactly the jobs that carry `project`)."""

    project: str = Field(default="oracle", pattern=r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$", description="Job/label mark")
    image_repository: str = Field(
        default="cr.yandex/oracle/oracle-train",
        pattern=r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+$",
        description="Container image of the job; its tag is derived from requirements.lock (lock-<sha256[:16]>)",
    )
    slurm_partition: str = Field(default="gpu", pattern=r"^[A-Za-z0-9_-]+$")
    k8s_namespace: str = Field(default="oracle", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    max_nodes: int = Field(default=32, gt=0, description="Most nodes one job may request")
    max_gpus_per_node: int = Field(default=8, ge=0)
    max_total_gpus: int = Field(default=256, gt=0, description="Most GPUs one job (and the GPU node group) may hold")
    max_hours: int = Field(default=168, gt=0, description="Longest wall time one job may request")
    monthly_budget_usd: int = Field(default=250_000, gt=0, description="Cap on the cloud budget (infra/terraform)")


class Settings(_Section):
    scan: ScanSettings = Field(default_factory=ScanSettings)
    venv: VenvSettings = Field(default_factory=VenvSettings)
    local_train: LocalTrainSettings = Field(default_factory=LocalTrainSettings)
    external_weights: ExternalWeightsSettings = Field(default_factory=ExternalWeightsSettings)
    architecture: ArchitectureSettings = Field(default_factory=ArchitectureSettings)
    attestation: AttestationSettings = Field(default_factory=AttestationSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)


def read_toml(path: Path) -> tuple[str, dict[str, object]]:
    """The text and parsed content of a TOML file users edit; syntax errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 puts the position only in the message: "Invalid value (at line 2, column 5)"
        match = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", str(exc))
        where, what = (f"{path}:{match[2]}:{match[3]}", match[1]) if match else (str(path), str(exc))
        raise SettingsError(f"{where}: invalid TOML ({what}); fix the syntax there") from exc


def load_settings(root: Path) -> Settings:
    path = root / SETTINGS_FILE
    if not path.exists():
        return Settings()
    text, raw = read_toml(path)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(
            describe_validation_error(path, text, exc, fix="see the keys documented in the file")
        ) from exc
