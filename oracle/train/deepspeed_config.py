"""The DeepSpeed config, generated from the training recipe: never written by hand, so the two cannot disagree.

DeepSpeed silently ignores unknown top-level keys, so the tests validate this output with `DeepSpeedConfig` and
assert the values that matter (ZeRO stage, batch sizes, precision) explicitly.
"""

from __future__ import annotations

from typing import Any

from oracle.train.config import TrainConfig


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    opt = config.optimizer
    stage = config.parallelism.zero_stage
    zero: dict[str, Any] = {"stage": stage, "contiguous_gradients": True, "overlap_comm": False}
    if stage == 3:
        # no gather at save: each rank writes its own partition of the weights (oracle/moe850b/partitioned.py)
        zero |= {"stage3_gather_16bit_weights_on_model_save": False, "stage3_param_persistence_threshold": 0}
    return {
        "train_batch_size": config.batch.global_batch,
        "train_micro_batch_size_per_gpu": config.batch.micro_batch,
        "gradient_accumulation_steps": config.batch.gradient_accumulation,
        "gradient_clipping": opt.grad_clip,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW on every device: the same update on CPU and GPU, no JIT-built CUDA extension.
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "steps_per_print": 2**31 - 1,  # our own metrics replace DeepSpeed's console prints
        "wall_clock_breakdown": False,
        "seed": config.seed,
    }


def validate_deepspeed_config(ds_config: dict[str, Any], config: TrainConfig) -> Any:
    """Parse `ds_config` with DeepSpeed's own `DeepSpeedConfig` and check that DeepSpeed read what the recipe says.

    DeepSpeed drops unknown top-level keys without a word (a misspelt `zero_optimisation` silently means stage 0),
    so unknown keys are refused here, and the values that matter are compared after parsing. Raises ConfigError
    naming the key. Batch sizes are checked against the process group's world size when one is initialised."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from oracle.moe850b.config import ConfigError

    unknown = sorted(set(ds_config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"DeepSpeed config: unknown top-level key(s) {unknown}; DeepSpeed would ignore them")
    try:
        parsed = DeepSpeedConfig(ds_config)
    except (AssertionError, ValueError) as exc:
        raise ConfigError(f"DeepSpeed config rejected: {exc}") from exc
    expected = {
        "zero_optimization.stage": (parsed.zero_optimization_stage, config.parallelism.zero_stage),
        "train_micro_batch_size_per_gpu": (parsed.train_micro_batch_size_per_gpu, config.batch.micro_batch),
        "gradient_accumulation_steps": (parsed.gradient_accumulation_steps, config.batch.gradient_accumulation),
        "bf16.enabled": (parsed.bfloat16_config.enabled, config.precision == "bf16"),
        "gradient_clipping": (parsed.gradient_clipping, config.optimizer.grad_clip),
    }
    for key, (have, want) in expected.items():
        if have != want:
            raise ConfigError(f"DeepSpeed config: {key} is {have!r} after parsing, the recipe says {want!r}")
    return parsed


KNOWN_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "bf16",
        "fp16",
        "zero_optimization",
        "optimizer",
        "steps_per_print",
        "wall_clock_breakdown",
        "seed",
    }
)
