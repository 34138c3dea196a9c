"""Policy settings: `policies/policies.toml`, validated by one pydantic schema.

A malformed file is a `SettingsError` naming the file, line and key; the CLI turns it into exit code 2. A checkout
without a settings file gets the defaults below, which are the project's policy.

Other repositories (`oracle guards run --root DIR` on a tree that is not an Oracle checkout, see `oracle_checkout`)
keep their settings in `--settings FILE`, in the `[tool.oracle]` table of their pyproject.toml, or in their own
policies/policies.toml; `resolve_settings` says which file was used and where each key came from. Such a tree gets
the generic defaults (`FOREIGN_DEFAULTS`: no Hub namespace is ours) and none of the checks that assume this
project's layout, unless its settings set `oracle_checks = true` at the top level of the table.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oracle_base.errors import ConfigurationError
from oracle_base.validation import describe_validation_error

SETTINGS_FILE = Path("policies") / "policies.toml"
PYPROJECT = Path("pyproject.toml")
PYPROJECT_TABLE = ("tool", "oracle")  # [tool.oracle] of a repository's pyproject.toml
ORACLE_PROJECT_NAME = "oracle"  # [project] name of this project's pyproject.toml
ORACLE_MODEL_PACKAGE = Path("oracle") / "moe850b"  # the model package the architecture policy governs
# A top-level key of any settings table (not a section of `Settings`): switches the checks that assume this project's
# layout (the architecture policy, the policy floor on the settings) on for a tree that is not recognised as ours.
ORACLE_CHECKS_KEY = "oracle_checks"


class SettingsError(ConfigurationError, ValueError):
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
    lock_extras: list[str] = Field(default_factory=lambda: ["runtime", "dev"])
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
        default_factory=lambda: ["torch", "pydantic", "safetensors", "flash_attn", "oracle", "oracle_base"],
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
    gpu: str = Field(
        default="h200-141gb",
        pattern=r"^[a-z0-9][a-z0-9-]{1,30}$",
        description="The cluster's GPU (a name of oracle/train/plan.py's table): SUB005 plans every GPU job on it; "
        "the policy floor holds it (a bigger card named here would pass a recipe that does not fit)",
    )
    max_total_gpus: int = Field(default=256, gt=0, description="Most GPUs one job (and the GPU node group) may hold")
    max_hours: int = Field(default=168, gt=0, description="Longest wall time one job may request")
    monthly_budget_usd: int = Field(default=250_000, gt=0, description="Cap on the cloud budget (infra/terraform)")
    egress_cidrs: list[str] = Field(
        default_factory=list,
        description="Networks a job's pods may reach besides their peers and DNS (the Kubernetes API server, the "
        "data endpoints), as CIDRs: the egress of the NetworkPolicy `oracle submit` renders",
    )

    @field_validator("egress_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a CIDR network (like 10.0.0.1/32): {exc}") from exc
        return value


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
    """This project's settings for a checkout: its policies/policies.toml, else the defaults."""
    path = root / SETTINGS_FILE
    if not path.exists():
        return Settings()
    text, raw = read_toml(path)
    return _validate(path, text, _without_switch(raw, path))


def _validate(path: Path, text: str, raw: Mapping[str, object]) -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(
            describe_validation_error(path, text, exc, fix="see the keys documented in the file")
        ) from exc


def _without_switch(raw: Mapping[str, object], path: Path) -> dict[str, object]:
    switch = raw.get(ORACLE_CHECKS_KEY, False)
    if not isinstance(switch, bool):
        raise SettingsError(f"{path}: {ORACLE_CHECKS_KEY} must be true or false, not {switch!r}")
    return {key: value for key, value in raw.items() if key != ORACLE_CHECKS_KEY}


# --- settings of any repository -------------------------------------------------------------------------------------

# What a repository that is not an Oracle checkout gets for what its settings leave out: this project's defaults
# except what names this project (its Hub organisation).
FOREIGN_DEFAULTS = Settings(external_weights=ExternalWeightsSettings(allowed_namespaces=[]))


def oracle_checkout(root: Path) -> str | None:
    """Why `root` is an Oracle checkout, or None when it is not. Recognised by what a repository would not carry by
    accident: this project's name in pyproject.toml's [project] table, or its model package (oracle/moe850b/). A
    policies/policies.toml alone does not make a tree ours: another repository may keep its settings there."""
    if (root / ORACLE_MODEL_PACKAGE).is_dir():
        return f"it holds this project's model package ({ORACLE_MODEL_PACKAGE.as_posix()}/)"
    pyproject = root / PYPROJECT
    if pyproject.is_file():
        try:
            project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None  # read again below when it is where the settings are; otherwise not ours to judge
        if isinstance(project, dict) and project.get("name") == ORACLE_PROJECT_NAME:
            return f"{PYPROJECT} names the project {ORACLE_PROJECT_NAME!r}"
    return None


@dataclass(frozen=True)
class ResolvedSettings:
    """The settings a gate run uses, where they came from, and whether the tree is judged as an Oracle checkout."""

    settings: Settings
    source: str  # the file (and table) read, or "none"
    origins: dict[str, str] = field(default_factory=dict)  # dotted key → the file, or which defaults
    oracle_checkout: str | None = None  # why the tree is an Oracle checkout (None: it is not)
    oracle_checks: bool = True  # the checks that assume this project's layout apply
    notes: tuple[str, ...] = ()  # settings files present but not used, and why

    @property
    def defaults(self) -> str:
        return "this project's defaults" if self.oracle_checkout else "generic defaults (not an Oracle checkout)"

    def as_json(self) -> dict[str, object]:
        from policies.floor import leaves

        return {
            "source": self.source,
            "oracle_checkout": self.oracle_checkout,
            "oracle_checks": self.oracle_checks,
            "notes": list(self.notes),
            "values": {
                key: {"value": value, "from": self.origins.get(key, self.defaults)}
                for key, value in leaves(self.settings)
            },
        }


def resolve_settings(root: Path, settings_file: Path | None = None, *, recognise: bool = True) -> ResolvedSettings:
    """The settings for a run over `root`: `settings_file` when given (a settings TOML, or a pyproject.toml whose
    [tool.oracle] table holds them), else policies/policies.toml of an Oracle checkout, else the tree's
    [tool.oracle], else its policies/policies.toml, else the defaults. `recognise=False` treats every tree as an
    Oracle checkout (in-process callers and the small trees tests write for this project)."""
    why = oracle_checkout(root) if recognise else "treated as one by the caller"
    candidates: list[tuple[Path, tuple[str, ...]]] = []
    if settings_file is not None:
        candidates.append((settings_file, PYPROJECT_TABLE if _is_pyproject(settings_file) else ()))
    if why:
        candidates.append((root / SETTINGS_FILE, ()))
    candidates += [(root / PYPROJECT, PYPROJECT_TABLE), (root / SETTINGS_FILE, ())]
    notes: list[str] = []
    for path, table in candidates:
        if path is not settings_file and not path.is_file():
            continue
        text, raw = read_toml(path)
        for part in table:
            inner = raw.get(part)
            if inner is None:
                if path is settings_file:
                    raise SettingsError(f"{path}: has no [{'.'.join(table)}] table; put the settings there")
                raw = {}
                break
            if not isinstance(inner, dict):
                raise SettingsError(f"{path}: [{'.'.join(table)}] is not a table")
            raw = inner
        else:
            switch = bool(raw.get(ORACLE_CHECKS_KEY, False))
            raw = _without_switch(raw, path)
            base = Settings() if why or switch else FOREIGN_DEFAULTS
            settings = _validate(path, text, {**_merged(base, raw)})
            where = f"{path} [{'.'.join(table)}]" if table else str(path)
            origins = {key: where for key in _keys_set(raw)}
            unused = [c for c, _ in candidates if c != path and c.is_file() and c.name == SETTINGS_FILE.name]
            notes += [f"{c} not read: {where} holds the settings" for c in unused]
            return ResolvedSettings(settings, where, origins, why, bool(why) or switch, tuple(notes))
    return ResolvedSettings(Settings() if why else FOREIGN_DEFAULTS, "none", {}, why, bool(why), tuple(notes))


def _is_pyproject(path: Path) -> bool:
    return path.name == PYPROJECT.name


def _merged(base: Settings, raw: Mapping[str, object]) -> dict[str, object]:
    """`raw`'s sections over `base`'s values, key by key (a section the file leaves out keeps base's values)."""
    merged: dict[str, object] = base.model_dump(mode="python")
    for section, values in raw.items():
        current = merged.get(section)
        if isinstance(current, dict) and isinstance(values, Mapping):
            merged[section] = {**current, **values}
        else:
            merged[section] = values  # validation names a section that is not a table, or an unknown one
    return merged


def _keys_set(raw: Mapping[str, object]) -> list[str]:
    from policies.floor import keys_set_in

    return sorted(keys_set_in(raw))
