"""The training config: one YAML file per run recipe, validated by pydantic, named like the model presets.

`configs/<name>.yaml` beside the model presets (`oracle850b`, `oracle-mini`, `oracle-bench`), or any path to a YAML
file. It names the model preset and holds what the model config does not: sequence length, batch sizes, parallelism,
precision, optimizer and schedule, the MoE loss coefficients and capacity factor used in training, checkpointing and
data. Batch arithmetic is checked here: global batch = micro batch × gradient accumulation × data-parallel ranks.
Errors name the file, the line and the key, and say what to do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oracle.moe850b.config import CONFIG_DIR, ConfigError, MoEConfig, load_config
from oracle_base.validation import describe_validation_error, line_of

TRAIN_SUFFIX = ".yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    path: str = Field(description="Folder written by `oracle data run --tokenizer` (holding tokens/index.json)")
    seq_len: int = Field(gt=1, description="Tokens per packed sequence; the model sees seq_len - 1 input positions")
    verify_checksums: bool = Field(default=True, description="Check every shard's sha256 against index.json")


class BatchSection(_Section):
    global_batch: int = Field(gt=0, description="Sequences per optimizer step, over all data-parallel ranks")
    micro_batch: int = Field(gt=0, description="Sequences per rank per forward/backward")
    gradient_accumulation: int = Field(gt=0, description="Micro-batches per rank per optimizer step")


class ParallelismSection(_Section):
    data: int = Field(gt=0, description="Data-parallel ranks (the world size); ZeRO shards over them")
    expert: int = Field(default=1, gt=0, description="Expert-parallel group size: experts split across these ranks")
    zero_stage: Literal[0, 1, 2, 3] = 3


class OptimizerSection(_Section):
    lr: float = Field(gt=0, description="Peak learning rate, reached at the end of warmup")
    min_lr: float = Field(ge=0, description="Learning rate at the end of the cosine decay")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, ge=0, description="Global gradient-norm clip; 0 turns clipping off")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr} is above lr {self.lr}; the cosine decay goes down to min_lr")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas: {list(self.betas)} must both lie in [0, 1)")
        return self


class ScheduleSection(_Section):
    warmup_steps: int = Field(ge=0, description="Linear warmup from 0 to lr")
    total_steps: int = Field(gt=0, description="Optimizer steps of the whole run; cosine decay ends here")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} is more than total_steps {self.total_steps}")
        return self


class MoESection(_Section):
    aux_loss_coef: float = Field(ge=0, description="Switch load-balancing loss weight")
    z_loss_coef: float = Field(ge=0, description="Router z-loss weight")
    capacity_factor: float | None = Field(gt=0, description="Expert capacity factor; null: no token dropping")
    bias_balancing: bool = Field(default=False, description="Aux-loss-free balancing (set aux_loss_coef to 0)")
    bias_update_rate: float = Field(default=1e-3, ge=0)


class CheckpointSection(_Section):
    dir: str = Field(default="runs", description="Runs go to <dir>/<run name>/, relative to the working directory")
    interval: int = Field(gt=0, description="Save every N optimizer steps (and always at the end)")
    keep_last: int = Field(default=3, gt=0, description="Complete checkpoints kept; older ones are deleted")


class LoggingSection(_Section):
    interval: int = Field(default=1, gt=0, description="Write a metrics line every N steps")


class TrainConfig(_Section):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="Run recipe name (lower case, digits, . _ -); the run folder and job names are built from it",
    )
    model: str = Field(description="Model preset name or path to a .moe.json file")
    seed: int = Field(default=0, ge=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    data: DataSection
    batch: BatchSection
    parallelism: ParallelismSection
    optimizer: OptimizerSection
    schedule: ScheduleSection
    moe: MoESection
    checkpoint: CheckpointSection
    logging: LoggingSection = LoggingSection()
    activation_checkpointing: bool = Field(
        default=False,
        description="Recompute each decoder block in backward instead of keeping its activations: activation memory "
        "of one block instead of all (oracle plan), about a third more compute, the same numbers",
    )

    @model_validator(mode="after")
    def _check_batch(self) -> Self:
        b, p = self.batch, self.parallelism
        if b.global_batch != b.micro_batch * b.gradient_accumulation * p.data:
            raise ValueError(
                f"batch.global_batch: {b.global_batch} != micro_batch {b.micro_batch} × gradient_accumulation "
                f"{b.gradient_accumulation} × parallelism.data {p.data} "
                f"(= {b.micro_batch * b.gradient_accumulation * p.data}); make them agree"
            )
        if p.data % p.expert:
            raise ValueError(f"parallelism.expert: {p.expert} does not divide parallelism.data {p.data}")
        if p.expert > 1 and p.zero_stage != 3:
            raise ValueError(
                f"parallelism.expert: {p.expert} needs zero_stage 3 (the expert stacks use DeepSpeed's ZeRO-3 expert "
                f"placement), not {p.zero_stage}; set zero_stage: 3 or expert: 1"
            )
        return self

    def moe_config(self) -> MoEConfig:
        """The model preset with this recipe's MoE training settings applied (parameter counts are unchanged)."""
        base = load_config(self.model)
        if self.data.seq_len - 1 > base.context_length:
            raise ConfigError(
                f"data.seq_len: {self.data.seq_len} gives {self.data.seq_len - 1} input positions, beyond the model's "
                f"context_length {base.context_length}; lower data.seq_len"
            )
        if base.n_experts % self.parallelism.expert:
            raise ConfigError(
                f"parallelism.expert: {self.parallelism.expert} does not divide the model's n_experts "
                f"{base.n_experts}; choose a divisor"
            )
        update = {
            "router_aux_loss_coef": self.moe.aux_loss_coef,
            "router_z_loss_coef": self.moe.z_loss_coef,
            "capacity_factor": self.moe.capacity_factor,
            "bias_balancing": self.moe.bias_balancing,
            "bias_update_rate": self.moe.bias_update_rate,
        }
        return MoEConfig.model_validate({**base.model_dump(), **update})

    def sha256(self) -> str:
        """The hash of what determines the training (canonical JSON of the recipe without where files go, how often
        to save or log, whether checksums are checked, or whether activations are recomputed), recorded in
        provenance and checked on resume."""
        data = self.model_dump(
            mode="json", exclude={"checkpoint": True, "logging": True, "activation_checkpointing": True}
        )
        data["data"].pop("path")
        data["data"].pop("verify_checksums")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def available_recipes() -> list[str]:
    return sorted(p.name.removesuffix(TRAIN_SUFFIX) for p in CONFIG_DIR.glob(f"*{TRAIN_SUFFIX}"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix:
        return path
    candidate = CONFIG_DIR / f"{name_or_path}{TRAIN_SUFFIX}"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown training config {str(name_or_path)!r}: use one of ({', '.join(available_recipes())}) "
            "or a path to a .yaml file"
        )
    return candidate


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """Load a recipe by name (`oracle-mini`) or path; errors name the file, line and key."""
    import yaml

    path = resolve_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the training config ({exc.strerror}); check the path") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a training config is a YAML mapping of sections (data, batch, ...)")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, text, exc)) from exc
    try:
        config.moe_config()
    except ConfigError as exc:
        location = tuple(str(exc).split(":", 1)[0].split("."))
        raise ConfigError(f"{path}:{line_of(text, location)}: {exc}") from exc
    return config
