"""The architecture of an Oracle MoE model: one pydantic model, presets stored as JSON in `configs/`.

A preset is named by its file, `configs/<name>.moe.json`; any other path to such a file works too. Every
preset declares `param_total` and `param_active`, which `oracle params --check` compares with the counts
computed from the code (oracle/moe850b/params.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oracle_base.errors import ConfigurationError
from oracle_base.validation import describe_validation_error

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_SUFFIX = ".moe.json"
FLAGSHIP = "oracle850b"

# torch._grouped_mm needs 16-byte aligned strides: 8 elements covers bf16/fp16 and fp32.
_ALIGN = 8


class ConfigError(ConfigurationError, ValueError):
    """A config file or value that cannot be used; the message names the file, the field and the fix."""


class MoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Preset name; matches the file name configs/<name>.moe.json")
    model_type: Literal["oracle_moe"] = "oracle_moe"

    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0, description="Model width D")
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0, description="Key/value heads for grouped-query attention")
    head_dim: int | None = Field(default=None, gt=0, description="Defaults to hidden_size // n_heads")
    context_length: int = Field(gt=0)
    rope_theta: float = Field(default=10_000.0, gt=0)
    norm_eps: float = Field(default=1e-6, gt=0)
    tie_embeddings: bool = False
    initializer_range: float = Field(default=0.02, gt=0)

    n_experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    expert_hidden_size: int = Field(gt=0, description="FFN width F of each routed expert")
    shared_expert_hidden_size: int = Field(default=0, ge=0, description="FFN width of the always-on expert; 0: none")
    capacity_factor: float | None = Field(default=None, gt=0, description="None: no token dropping")
    router_aux_loss_coef: float = Field(default=0.01, ge=0, description="Switch load-balancing loss weight")
    router_z_loss_coef: float = Field(default=0.001, ge=0)
    bias_balancing: bool = Field(default=False, description="Aux-loss-free balancing by a per-expert bias")
    bias_update_rate: float = Field(default=1e-3, ge=0)
    moe_impl: Literal["auto", "grouped", "loop"] = Field(
        default="auto", description="Expert dispatch: grouped GEMM, the per-expert loop, or auto (grouped on CUDA)"
    )

    param_total: int | None = Field(default=None, ge=0, description="Declared total parameters")
    param_active: int | None = Field(default=None, ge=0, description="Declared active parameters per token")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.n_heads

    @model_validator(mode="after")
    def _check_shapes(self) -> Self:
        if self.head_dim is None and self.hidden_size % self.n_heads:
            raise ValueError(
                f"n_heads: {self.n_heads} does not divide hidden_size {self.hidden_size}; "
                "choose a divisor or set head_dim explicitly"
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim: {self.resolved_head_dim} is odd; rotary embeddings need an even head_dim")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads: {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k: {self.top_k} is more than n_experts {self.n_experts}")
        for field in ("hidden_size", "expert_hidden_size", "shared_expert_hidden_size"):
            if getattr(self, field) % _ALIGN:
                raise ValueError(
                    f"{field}: {getattr(self, field)} is not a multiple of {_ALIGN} (grouped GEMM alignment)"
                )
        return self


def available_presets() -> list[str]:
    return sorted(p.name.removesuffix(CONFIG_SUFFIX) for p in CONFIG_DIR.glob(f"*{CONFIG_SUFFIX}"))


def load_config(name_or_path: str | Path) -> MoEConfig:
    """Load a preset by name (`oracle850b`) or a config file by path; errors name the file, line and field."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}{CONFIG_SUFFIX}"
        if not path.is_file():
            raise ConfigError(
                f"unknown config {str(name_or_path)!r}: use a preset ({', '.join(available_presets())}) "
                "or a path to a .moe.json file"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror}); check the path") from exc
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> MoEConfig:
    """A config from the text of `path` (named in errors), e.g. bytes already read and checked."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}); fix the syntax there") from exc
    if isinstance(raw, dict):
        raw = without_hub_mirrors(raw, path)
    try:
        return MoEConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, text, exc)) from exc


# The config.json published to the Hub carries transformers-style names beside ours, for tools that read them.
HUB_CONFIG_MIRRORS = {
    "max_position_embeddings": "context_length",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "num_experts": "n_experts",
    "num_experts_per_tok": "top_k",
    "tie_word_embeddings": "tie_embeddings",
}
HUB_ONLY_CONFIG_KEYS = ("architectures", *HUB_CONFIG_MIRRORS)


def without_hub_mirrors(raw: dict[str, object], path: Path | str = "config.json") -> dict[str, object]:
    """A published config.json read back: each mirror must equal the field it mirrors, then the Hub-only keys go."""
    for key, field in HUB_CONFIG_MIRRORS.items():
        if key in raw and raw[key] != raw.get(field):
            raise ConfigError(f"{path}: {key} is {raw[key]!r} but {field} is {raw.get(field)!r}; make them equal")
    return {key: value for key, value in raw.items() if key not in HUB_ONLY_CONFIG_KEYS}
