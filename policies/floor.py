"""The policy floor: the organisation's minimum policy, which the repository's `policies/policies.toml` may only
tighten, and the limits every waiver must respect.

The floor comes from the trust root (a file outside the tree, see guards/trust.py); without one the embedded floor
below applies, equal to this project's policy as reviewed. Every leaf setting of `Settings` has a declared direction
of tightening (`TIGHTENING`): a value on the loose side of the floor, a setting left at a looser default, or a
missing policies.toml is a finding of TRU001, which no waiver can silence. A waiver outside the floor's limits does
not apply and is a finding of TRU002. A setting without a declared direction must equal the floor (fail closed),
and a unit test keeps the table complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oracle_base.validation import line_of
from policies.rule import ALL_GATES, Finding, Rule, Severity
from policies.settings import (
    SETTINGS_FILE,
    ArchitectureSettings,
    LocalTrainSettings,
    Settings,
    SettingsError,
    read_toml,
)


class TrustRoot(Protocol):
    """What the floor needs of the trust root (guards.trust.TrustRoot, a layer above: the policies do not import it)."""

    @property
    def floor(self) -> Mapping[str, Any]: ...

    @property
    def source(self) -> str: ...

    @property
    def label(self) -> str: ...


NAME = "floor"


class Tighten(StrEnum):
    """How a setting may differ from the floor's value and still be at least as strict."""

    equal = "equal to"  # the value is part of the identity of what is checked (a path, a name, a number)
    at_least = "at least"  # a bigger value is stricter (a size limit, a boolean that switches a check on)
    at_most = "at most"  # a smaller value is stricter (a cap, a boolean that allows an exception)
    subset = "a subset of"  # entries may only be removed (what is excluded, allowed or exempted)
    superset = "a superset of"  # entries may only be added (what is required, checked or forbidden)


# Every leaf of Settings, by dotted key. Strings compared with at_least/at_most follow `_ORDER` (loose → strict).
TIGHTENING: dict[str, Tighten] = {
    "scan.exclude": Tighten.subset,
    "scan.max_file_bytes": Tighten.at_least,
    "scan.fail_on": Tighten.at_least,
    "venv.project_venv": Tighten.equal,
    "venv.lock": Tighten.equal,
    "venv.declared_input": Tighten.equal,
    "venv.lock_extras": Tighten.superset,
    "venv.allow_unlocked": Tighten.subset,
    "local_train.allow_override": Tighten.at_most,
    "local_train.runtime_check": Tighten.equal,
    "local_train.entry_points": Tighten.superset,
    "local_train.train_packages": Tighten.superset,
    "external_weights.allowed_namespaces": Tighten.subset,
    "external_weights.extra_forbidden_names": Tighten.superset,
    "external_weights.extra_loader_calls": Tighten.superset,
    "architecture.flagship": Tighten.equal,
    "architecture.n_experts": Tighten.equal,
    "architecture.top_k": Tighten.equal,
    "architecture.context_length": Tighten.equal,
    "architecture.vocab_size": Tighten.equal,
    "architecture.param_total_target": Tighten.equal,
    "architecture.param_total_tolerance": Tighten.at_most,
    "architecture.param_active_min": Tighten.at_least,
    "architecture.param_active_max": Tighten.at_most,
    "architecture.model_code": Tighten.superset,
    "architecture.model_code_imports": Tighten.subset,
    "architecture.consistency_files": Tighten.superset,
    "attestation.require_signature": Tighten.at_least,
    "cluster.project": Tighten.equal,
    "cluster.image_repository": Tighten.equal,
    "cluster.slurm_partition": Tighten.equal,
    "cluster.k8s_namespace": Tighten.equal,
    "cluster.max_nodes": Tighten.at_most,
    "cluster.max_gpus_per_node": Tighten.at_most,
    "cluster.gpu": Tighten.equal,  # a bigger GPU named here would let SUB005 pass a recipe that does not fit
    "cluster.max_total_gpus": Tighten.at_most,
    "cluster.max_hours": Tighten.at_most,
    "cluster.monthly_budget_usd": Tighten.at_most,
    "cluster.egress_cidrs": Tighten.subset,
}
_ORDER: dict[str, tuple[str, ...]] = {"scan.fail_on": ("error", "warning")}  # "warning" also fails on warnings

# The project's policy as reviewed (policies/policies.toml at the time the floor was introduced): where it differs
# from the schema's generic defaults. Kept here, not read from the tree, because the tree is what the floor judges.
EMBEDDED_SETTINGS = Settings(
    local_train=LocalTrainSettings(entry_points=["oracle_cli/app.py:train_command"]),
    architecture=ArchitectureSettings(
        consistency_files={
            "training": "oracle/moe850b/configs/oracle850b.yaml",
            "tokenizer": "oracle/tokenization/assets/tokenizer_config.json",
            "generation": "hub/assets/generation_config.json",
        }
    ),
)
# Rules whose waiver switches off a control of the chain (what runs, what is installed, what is loaded) rather than
# excusing a reference in text: a waiver of one needs an approval signed by a `waiver-approval` key of the trust root.
CRITICAL_RULES = ("LTR002", "EXT005", "EXT006", "VENV003", "VENV004", "VENV005")


class WaiverLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A quarter: the usual review period of security exceptions, short enough that the owner looks at the reason
    # again while the code it excuses is still the code they remember.
    max_lifetime_days: int = Field(default=90, ge=1, description="Longest `expires - created` of a waiver")
    # A path waiver names a handful of files (a rule's own fixtures); more is a blanket, better said by fingerprints.
    max_files: int = Field(default=5, ge=1, description="Most files of the tree one path-glob waiver may match")
    critical_rules: list[str] = Field(
        default_factory=lambda: list(CRITICAL_RULES), description="Rules whose waivers need an approval signature"
    )

    @field_validator("critical_rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        from policies import find_rule

        unknown = [rule_id for rule_id in value if find_rule(rule_id) is None]
        if unknown:
            raise ValueError(f"unknown rule id(s) {', '.join(unknown)}; `oracle guards rules` lists them")
        return value


class PolicyFloor(BaseModel):
    """The organisation's minimum policy; `PolicyFloor()` is the embedded floor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: Settings = Field(default_factory=lambda: EMBEDDED_SETTINGS)
    waivers: WaiverLimits = Field(default_factory=WaiverLimits)
    # Whether a repository must carry policies/policies.toml: deleting it must not switch the policy off. Only a
    # floor for trees that are not projects (the tests' small trees) says false, and then its settings apply.
    require_settings_file: bool = True


class FloorError(SettingsError):
    """The trust root's floor cannot be used; the message names the field."""


def floor_of(trust: TrustRoot) -> PolicyFloor:
    """The trust root's floor, each key it leaves out taken from the embedded floor; empty → the embedded floor."""
    if not trust.floor:
        return PolicyFloor()
    merged = _merge(PolicyFloor().model_dump(mode="python"), trust.floor, "")
    try:
        return PolicyFloor.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(floor)"
        message = error["msg"].removeprefix("Value error, ")
        raise FloorError(
            f"trust root {trust.source}: floor.{where}: {message}; its owners must re-issue it (`oracle trust init`)"
        ) from exc


def _merge(base: dict[str, Any], override: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Sections merged key by key; a leaf setting (a mapping such as consistency_files included) replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        inner = merged.get(key)
        dotted = f"{prefix}{key}"
        is_leaf = dotted.removeprefix("settings.") in TIGHTENING
        if isinstance(inner, dict) and isinstance(value, Mapping) and not is_leaf:
            merged[key] = _merge(inner, value, f"{dotted}.")
        else:
            merged[key] = value  # a wrong type or an unknown key fails validation, naming the field
    return merged


def leaves(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf setting, sections recursed."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from leaves(value, f"{key}.")
        else:
            yield key, value


def is_as_strict(key: str, value: object, floor_value: object) -> bool:
    """Whether `value` of setting `key` is at least as strict as the floor's."""
    direction = TIGHTENING.get(key, Tighten.equal)  # an undeclared setting may not move at all
    if direction is Tighten.equal:
        return value == floor_value
    if direction in (Tighten.subset, Tighten.superset):
        mine, theirs = _as_set(value), _as_set(floor_value)
        return mine <= theirs if direction is Tighten.subset else mine >= theirs
    order = _ORDER.get(key)
    rank_mine = order.index(str(value)) if order else value
    rank_floor = order.index(str(floor_value)) if order else floor_value
    if direction is Tighten.at_least:
        return bool(rank_mine >= rank_floor)  # type: ignore[operator]
    return bool(rank_mine <= rank_floor)  # type: ignore[operator]


def _as_set(value: object) -> set[object]:
    if isinstance(value, Mapping):
        return set(value.items())
    assert isinstance(value, list | tuple | set | frozenset), value
    return set(value)


@dataclass(frozen=True)
class SettingSource:
    """One effective setting: its value, where it came from, and how it stands against the floor."""

    key: str
    value: object
    floor_value: object
    from_file: bool  # set in policies.toml (else the schema's default)
    as_strict: bool

    @property
    def describe(self) -> str:
        origin = str(SETTINGS_FILE) if self.from_file else "default (not set in policies.toml)"
        if self.value == self.floor_value:
            standing = "equal to the floor"
        elif self.as_strict:
            standing = f"tightens the floor ({self.floor_value!r})"
        else:
            standing = f"LOOSER than the floor, which requires {TIGHTENING.get(self.key, Tighten.equal)} "
            standing += f"{self.floor_value!r} (TRU001)"
        return f"{self.key} = {self.value!r}    {origin}, {standing}"


def compare(settings: Settings, floor: PolicyFloor, set_keys: set[str]) -> list[SettingSource]:
    """Every effective setting against the floor; `set_keys`: the dotted keys policies.toml sets."""
    floor_values = dict(leaves(floor.settings))
    return [
        SettingSource(key, value, floor_values[key], key in set_keys, is_as_strict(key, value, floor_values[key]))
        for key, value in leaves(settings)
    ]


def keys_set_in(raw: Mapping[str, object], prefix: str = "") -> set[str]:
    """Dotted keys present in a parsed policies.toml (tables recursed up to a leaf setting)."""
    found: set[str] = set()
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in TIGHTENING:
            found |= keys_set_in(value, f"{dotted}.")
        else:
            found.add(dotted)
    return found


LOOSER_THAN_FLOOR = Rule(
    id="TRU001",
    policy=NAME,
    title="Policy settings looser than the organisation's floor",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="policies.toml lives in the tree the gate judges: a change that loosens it (excludes every file, "
    "raises caps, allows the local-training override, drops an entry point) would switch off the very checks "
    "that should judge it. The trust root's floor is the minimum; the tree may only tighten it.",
    fix="Restore the setting to the floor's value or a stricter one (`oracle guards run --show-settings` lists the "
    "floor); a looser floor is the organisation's decision, made in the trust root, never in the tree.",
    example='[scan]\nexclude = ["*"]\nmax_file_bytes = 1',
    example_fix="[scan]\nexclude = []\nmax_file_bytes = 20000000",
    waivable=False,
)
WAIVER_OUT_OF_BOUNDS = Rule(
    id="TRU002",
    policy=NAME,
    title="A waiver outside the floor's bounds",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="A waiver that matches the whole tree, never expires or excuses a control of the chain without a "
    "reviewer's signature turns every finding off; such a waiver does not apply, and the gate says why.",
    fix="Name a few files (or fingerprints), record `created`, keep `expires` within the floor's lifetime of it, "
    "and have a `waiver-approval` key of the trust root sign waivers of critical rules.",
    example='[[waiver]]\nrule = "EXT001"\npath = "**"\nexpires = 9999-12-31',
    example_fix='[[waiver]]\nrule = "EXT001"\npath = "tests/hub/test_hub_server.py"\ncreated = 2026-12-01\n'
    "expires = 2027-02-28",
    waivable=False,
)
RULES = (LOOSER_THAN_FLOOR, WAIVER_OUT_OF_BOUNDS)


def check_settings(root: Path, settings: Settings, floor: PolicyFloor, floor_label: str) -> list[Finding]:
    """TRU001 findings: a missing policies.toml, and every effective setting on the loose side of the floor."""
    relative = SETTINGS_FILE.as_posix()
    path = root / SETTINGS_FILE
    if not path.is_file():
        # A tree without the floor's lock has not opted into this project's policy (another repository running our
        # hooks): the floor's settings name this project's files, and such a tree can never be attested or
        # submitted (both need the lock), so there is nothing for the floor to hold.
        if not (root / floor.settings.venv.lock).is_file():
            return []
        if not floor.require_settings_file:
            return [
                LOOSER_THAN_FLOOR.finding(relative, 0, 0, f"{s.key}: the default {s.value!r} is looser", s.key)
                for s in compare(Settings(), floor, set())
                if not s.as_strict
            ]
        return [
            LOOSER_THAN_FLOOR.finding(
                relative,
                0,
                0,
                f"{relative} is missing: the gate will not fall back to defaults it cannot compare",
                "missing",
                fix=f"restore {relative} (git checkout -- {relative}); it may only tighten the floor ({floor_label})",
            )
        ]
    text, raw = read_toml(path)
    findings = []
    for source in compare(settings, floor, keys_set_in(raw)):
        if source.as_strict:
            continue
        direction = TIGHTENING.get(source.key, Tighten.equal)
        line = (line_of(text, tuple(source.key.split("."))) or 0) if source.from_file else 0
        written = "is" if source.from_file else "is not set, so its default"
        message = (
            f"{source.key} {written} {source.value!r}, looser than the floor ({floor_label}), which requires "
            f"{direction} {source.floor_value!r}"
        )
        findings.append(LOOSER_THAN_FLOOR.finding(relative, line, 1 if line else 0, message, source.key))
    return findings


def describe_effective_settings(root: Path, trust: TrustRoot) -> str:
    """The effective settings, one a line, with where each came from and how it stands against the floor, then the
    floor's waiver limits."""
    floor = floor_of(trust)
    path = root / SETTINGS_FILE
    lines = [f"effective settings (policy floor: {trust.label}):"]
    if path.is_file():
        from policies.settings import load_settings

        _, raw = read_toml(path)
        sources = compare(load_settings(root), floor, keys_set_in(raw))
    else:
        lines.append(f"  {SETTINGS_FILE.as_posix()} is missing (TRU001): the schema's defaults below")
        sources = compare(Settings(), floor, set())
    lines += [f"  {source.describe}" for source in sources]
    limits = floor.waivers
    lines.append(
        f"waiver limits (the floor's): at most {limits.max_lifetime_days} days from `created`, at most "
        f"{limits.max_files} files per path glob; approval needed for {', '.join(limits.critical_rules) or 'none'}"
    )
    return "\n".join(lines)
