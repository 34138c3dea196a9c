"""Benchmark: `oracle plan`'s memory figures against a real DeepSpeed ZeRO-3 engine on this CPU (one process, gloo).

The engine is the trainer's own (`initialise_engine`), for a model of about 110 M parameters (mostly routed experts)
and the oracle-mini recipe otherwise. Measured: the bytes of the tensors DeepSpeed's optimizer holds for the model
states (bf16 partitions, fp32 master, Adam moments, gradient partitions) and the process's peak resident memory
(VmHWM) before and after a few training steps, and the bytes autograd saves in a forward pass (weights excluded).
Printed beside the plan's parameters + gradients + optimizer, its saved activations, its total, and DeepSpeed's own
estimate
(`estimate_zero3_model_states_mem_needs`, 18 bytes per parameter plus 4 per parameter of the largest layer).

Usage: python bench/plan_memory.py [--steps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = {
    "name": "plan-bench",
    "vocab_size": 4096,
    "hidden_size": 512,
    "n_layers": 4,
    "n_heads": 8,
    "n_kv_heads": 2,
    "context_length": 1024,
    "n_experts": 16,
    "top_k": 2,
    "expert_hidden_size": 1024,
    "shared_expert_hidden_size": 512,
}
SEQ_LEN, MICRO_BATCH = 513, 4


def high_water_mark() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def state_bytes(engine: Any) -> dict[str, int]:
    """The model-state tensors DeepSpeed's ZeRO-3 optimizer holds, by kind."""
    opt = engine.optimizer
    size = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    moments = [v for state in opt.optimizer.state.values() for v in state.values() if hasattr(v, "numel")]
    return {
        "bf16 weight partitions": size(opt.fp16_partitioned_groups_flat),
        "fp32 master": size(opt.fp32_partitioned_groups_flat),
        "Adam moments": size(m for m in moments if m.dim() > 0),
        "gradient partitions": size([opt.grad_partitions_flat_buffer]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    import torch
    import yaml

    from oracle.train.config import load_train_config
    from oracle.train.distributed import Placement, init_process_group
    from oracle.train.plan import GIB, _head_gradient_bytes, model_sizes, plan, saved_activations
    from oracle.train.trainer import initialise_engine

    work = Path(tempfile.mkdtemp(prefix="oracle-plan-memory-"))
    (work / "plan-bench.moe.json").write_text(json.dumps(MODEL))
    recipe = load_train_config("oracle-mini").model_dump(mode="json")
    recipe.update(name="plan-bench", model=str(work / "plan-bench.moe.json"))
    recipe["data"]["seq_len"] = SEQ_LEN
    recipe["batch"] = {"global_batch": MICRO_BATCH, "micro_batch": MICRO_BATCH, "gradient_accumulation": 1}
    recipe["parallelism"] = {"data": 1, "expert": 1, "zero_stage": 3}
    (work / "plan-bench.yaml").write_text(yaml.safe_dump(recipe))
    config = load_train_config(work / "plan-bench.yaml")
    sizes = model_sizes(config.moe_config())

    placement = Placement(0, 1, 0, "127.0.0.1", 29533)
    init_process_group(placement)
    before = high_water_mark()
    engine, _ = initialise_engine(config, placement)
    generator = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        tokens = torch.randint(0, MODEL["vocab_size"], (MICRO_BATCH, SEQ_LEN), generator=generator)
        with saved_activations() as saved:
            loss = engine(tokens[:, :-1], tokens[:, 1:])[0]
        engine.backward(loss)
        engine.step()
        if step == 0:
            after_first = high_water_mark()
    after_steps = high_water_mark()
    states = state_bytes(engine)  # after a step: Adam's moments exist only from the first step on

    layout = plan(config, nodes=1, gpus_per_node=1, gpu="h100-80gb", sizes=sizes)
    planned_states = layout.memory["parameters"] + layout.memory["gradients"] + layout.memory["optimizer"]
    tokens = MICRO_BATCH * (SEQ_LEN - 1)
    planned_saved = layout.memory["activations"] - tokens * _head_gradient_bytes(config.moe_config(), 2)
    deepspeed_estimate = 18 * sizes.total + 4 * max(sizes.largest_module, sizes.routed_experts_module)
    figures = {
        "parameters": sizes.total,
        "measured_state_bytes": states,
        "measured_states_total": sum(states.values()),
        "planned_states": planned_states,
        "deepspeed_estimate_states_plus_largest_layer": deepspeed_estimate,
        "planned_states_plus_gathered": planned_states + layout.memory["gathered_layer"],
        "rss_growth_first_step": after_first - before,
        "rss_growth_later_steps": after_steps - after_first,
        "rss_growth_total": after_steps - before,
        "planned_total": layout.total_bytes,
        "measured_activations_saved_by_autograd": sum(saved.values()),
        "planned_activations_saved": planned_saved,
    }
    for key, value in figures.items():
        if isinstance(value, dict):
            for name, amount in value.items():
                print(f"  {name:<28}{amount / GIB:8.3f} GiB ({amount / sizes.total:.2f} B/param)")
        elif key != "parameters":
            print(f"{key:<48}{value / GIB:8.3f} GiB")
    print(f"measured states / planned: {figures['measured_states_total'] / planned_states:.3f}")
    print(f"saved activations / planned: {sum(saved.values()) / planned_saved:.3f}")
    print(f"peak RSS growth / planned total: {(after_steps - before) / layout.total_bytes:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
