"""`oracle plan`: memory per GPU, communication per step, step time and MFU of a recipe on a cluster layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from oracle.moe850b.config import load_config
from oracle.moe850b.model import OracleMoE, lm_loss
from oracle.train.config import TrainConfig, load_train_config
from oracle.train.plan import (
    GIB,
    GPUS,
    ModelSizes,
    PlanError,
    _head_activation_bytes,
    _head_gradient_bytes,
    _layer_activation_bytes,
    model_sizes,
    plan,
    remedy,
    saved_activations,
)
from oracle_cli.app import app
from tests.checkouts import REPO

runner = CliRunner()


@pytest.fixture(scope="module")
def flagship() -> TrainConfig:
    """The flagship's model and batch with expert parallelism 1 and no activation checkpointing: the base the
    formula tests change one thing of (the committed recipe's own layout has its test)."""
    committed = load_train_config("oracle850b")
    parallelism = committed.parallelism.model_copy(update={"expert": 1})
    return committed.model_copy(update={"parallelism": parallelism, "activation_checkpointing": False})


@pytest.fixture(scope="module")
def flagship_sizes(flagship: TrainConfig) -> ModelSizes:
    return model_sizes(flagship.moe_config())


def test_expert_parallelism_1_gathers_whole_moe_layers(flagship: TrainConfig, flagship_sizes: ModelSizes) -> None:
    # 64 experts × 3 × 8192 × 7488 parameters, in bf16: 23.6 GB of weights gathered, and as much gradient in backward
    assert flagship_sizes.routed_experts_module == 64 * 3 * 8192 * 7488
    layout = plan(flagship, nodes=32, gpus_per_node=8, expert=1, sizes=flagship_sizes)
    assert layout.memory["gathered_layer"] == 2 * 2 * 64 * 3 * 8192 * 7488
    assert round(64 * 3 * 8192 * 7488 * 2 / 1e9, 1) == 23.6
    # with 8 expert-parallel ranks a rank gathers only its own 8 experts of a layer
    sharded = plan(flagship, nodes=32, gpus_per_node=8, expert=8, sizes=flagship_sizes)
    assert sharded.memory["gathered_layer"] == layout.memory["gathered_layer"] / 8
    assert sharded.step_s < layout.step_s / 2


def test_model_states_agree_with_deepspeeds_estimator(flagship: TrainConfig, flagship_sizes: ModelSizes) -> None:
    """DeepSpeed counts 18 bytes per parameter and 4 per parameter of the largest layer (no offload); bf16 ZeRO-3
    allocates 16 (measured below, on a real engine), so the two differ by exactly 2 bytes per parameter."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    largest = max(flagship_sizes.largest_module, flagship_sizes.routed_experts_module)
    _, gpu_mem, largest_layer_memory = estimate_zero3_model_states_mem_needs(
        flagship_sizes.total, largest, num_gpus_per_node=8, num_nodes=32, cpu_offload=False
    )
    layout = plan(flagship, nodes=32, gpus_per_node=8, expert=1, sizes=flagship_sizes)
    states = layout.memory["parameters"] + layout.memory["gradients"] + layout.memory["optimizer"]
    assert layout.memory["gathered_layer"] == largest_layer_memory
    assert states == pytest.approx(16 * flagship_sizes.total / 256)
    assert gpu_mem - (states + layout.memory["gathered_layer"]) == pytest.approx(2 * flagship_sizes.total / 256, abs=1)


def test_deepspeeds_live_estimator_reads_the_same_sizes_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_live

    config = load_train_config("oracle-mini")
    sizes = model_sizes(config.moe_config())
    estimate_zero3_model_states_mem_needs_all_live(OracleMoE(config.moe_config()), num_gpus_per_node=2)
    printed = capsys.readouterr().out
    assert f"{int(sizes.total / 1e6)}M total params" in printed
    no_offload = next(line for line in printed.splitlines() if "offload_param=none, offload_optimizer=none" in line)
    largest = max(sizes.largest_module, sizes.routed_experts_module)
    expected = 4 * largest + 18 * sizes.total / 2
    assert float(re.findall(r"([\d.]+)GB", no_offload)[1]) == pytest.approx(expected / GIB, abs=0.005)


def test_activation_formula_matches_what_autograd_saves() -> None:
    """The planned activations of one forward pass against the bytes autograd keeps (weights excluded), bf16."""
    config = load_config("oracle-mini")
    torch.manual_seed(0)
    model = OracleMoE(config).to(torch.bfloat16)
    B, S = 2, 64
    tokens = torch.randint(0, config.vocab_size, (B, S + 1))
    with saved_activations() as saved:
        out = model(tokens[:, :-1])
        lm_loss(out.logits_BSV, tokens[:, 1:])
    planned = B * S * (config.n_layers * _layer_activation_bytes(config, 2) + _head_activation_bytes(config, 2))
    assert 0.85 < sum(saved.values()) / planned < 1.15


def test_activation_checkpointing_keeps_only_each_layers_input(
    flagship: TrainConfig, flagship_sizes: ModelSizes
) -> None:
    model = flagship.moe_config()
    off = plan(flagship, nodes=32, gpus_per_node=8, activation_checkpointing=False, sizes=flagship_sizes)
    on = plan(flagship, nodes=32, gpus_per_node=8, activation_checkpointing=True, sizes=flagship_sizes)
    T = flagship.data.seq_len - 1
    layer = _layer_activation_bytes(model, 2)
    head = _head_activation_bytes(model, 2) + _head_gradient_bytes(model, 2)
    assert off.memory["activations"] == T * (model.n_layers * layer + head)
    assert on.memory["activations"] == T * (model.n_layers * 2 * model.hidden_size + layer + head)
    assert on.compute_s > off.compute_s  # the recomputed forward
    assert on.mfu < off.mfu


def test_the_flagship_without_expert_parallelism_or_checkpointing_fits_no_gpu(
    flagship: TrainConfig, flagship_sizes: ModelSizes
) -> None:
    for gpu in GPUS:
        layout = plan(
            flagship, nodes=32, gpus_per_node=8, gpu=gpu, expert=1, activation_checkpointing=False, sizes=flagship_sizes
        )
        assert not layout.fits
        assert layout.memory["activations"] > GPUS[gpu].memory_bytes
        assert "set activation_checkpointing: true" in remedy(flagship, layout, flagship_sizes)


def test_the_flagship_recipe_as_committed_fits_the_clusters_gpu(
    flagship: TrainConfig, flagship_sizes: ModelSizes
) -> None:
    """The recipe runs expert parallelism 64 with every block recomputed, on the 141 GB cards policies.toml names;
    on 80 GB cards it does not fit the 256 GPUs the policy allows."""
    from policies.settings import load_settings

    flagship = load_train_config("oracle850b")
    assert (flagship.parallelism.expert, flagship.activation_checkpointing) == (64, True)
    gpu = load_settings(REPO).cluster.gpu
    assert gpu == "h200-141gb"
    assert plan(flagship, nodes=32, gpus_per_node=8, gpu=gpu, sizes=flagship_sizes).fits
    for small in ("a100-80gb", "h100-80gb"):
        assert not plan(flagship, nodes=32, gpus_per_node=8, gpu=small, sizes=flagship_sizes).fits


def test_the_flagship_fits_h200s_with_expert_parallelism_and_checkpointing(
    flagship: TrainConfig, flagship_sizes: ModelSizes
) -> None:
    layout = plan(
        flagship,
        nodes=32,
        gpus_per_node=8,
        gpu="h200-141gb",
        expert=64,
        activation_checkpointing=True,
        sizes=flagship_sizes,
    )
    assert layout.fits
    h100 = plan(flagship, nodes=32, gpus_per_node=8, expert=64, activation_checkpointing=True, sizes=flagship_sizes)
    assert not h100.fits
    assert 0 < layout.mfu < 0.5
    assert layout.tokens_per_step == flagship.batch.global_batch * (flagship.data.seq_len - 1)


def test_expert_parallelism_moves_tokens_by_all_to_all(flagship: TrainConfig, flagship_sizes: ModelSizes) -> None:
    model = flagship.moe_config()
    layout = plan(flagship, nodes=32, gpus_per_node=8, expert=8, sizes=flagship_sizes)
    (a2a,) = [c for c in layout.collectives if c.name == "all-to-all"]
    T = flagship.batch.micro_batch * (flagship.data.seq_len - 1)
    rows = T * model.top_k * model.hidden_size * 2 * model.n_layers
    assert a2a.bytes_per_gpu == pytest.approx(4 * flagship.batch.gradient_accumulation * rows * 7 / 8)
    assert (a2a.group, a2a.across_nodes) == (8, False)  # 8 ranks: one node's NVLink
    assert not [
        c for c in plan(flagship, nodes=32, gpus_per_node=8, sizes=flagship_sizes).collectives if c.name == "all-to-all"
    ]


def test_replicated_expert_states_keep_whole_experts_on_each_rank(
    flagship: TrainConfig, flagship_sizes: ModelSizes
) -> None:
    zero = plan(flagship, nodes=32, gpus_per_node=8, expert=64, sizes=flagship_sizes)
    whole = plan(flagship, nodes=32, gpus_per_node=8, expert=64, expert_states="replicated", sizes=flagship_sizes)
    local = flagship_sizes.routed_experts / 64
    assert whole.memory["optimizer"] - zero.memory["optimizer"] == pytest.approx(12 * local * (1 - 1 / 4))
    assert [c.name for c in whole.collectives if "rank's experts" in c.what] == ["all-reduce"]


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ({"nodes": 32, "gpus_per_node": 8, "gpu": "tpu-v5"}, "--gpu tpu-v5: unknown GPU"),
        ({"nodes": 4, "gpus_per_node": 8}, "trains on 256 \\(parallelism.data\\)"),
        ({"nodes": 32, "gpus_per_node": 8, "expert": 3}, "must divide the 256 ranks"),
        ({"nodes": 32, "gpus_per_node": 0}, "at least 1"),
    ],
)
def test_bad_layouts_are_refused_naming_the_option(
    flagship: TrainConfig, layout: dict[str, object], words: str
) -> None:
    with pytest.raises(PlanError, match=words):
        plan(flagship, **layout)  # type: ignore[arg-type]


def test_cli_prints_the_plan_and_exits_1_when_it_does_not_fit() -> None:
    args = ["plan", "--config", "oracle850b", "--nodes", "32", "--gpus-per-node", "8"]
    refused = runner.invoke(app, [*args, "--expert", "1", "--no-activation-checkpointing"])
    assert refused.exit_code == 1
    assert "does NOT fit" in refused.stdout
    assert "activation checkpointing" in refused.stderr
    fits = runner.invoke(app, [*args, "--gpu", "h200-141gb", "--expert", "64", "--activation-checkpointing"])
    assert fits.exit_code == 0, fits.output
    for words in ("parameters", "optimizer", "gathered layer", "activations", "all-to-all", "MFU"):
        assert words in fits.stdout
    payload = json.loads(runner.invoke(app, [*args, "--format", "json", "--expert", "8"]).stdout)
    assert payload["expert_parallel"] == 8
    assert payload["fits"] is False
    assert set(payload["memory_gib"]) == {
        "parameters",
        "gradients",
        "optimizer",
        "gathered_layer",
        "activations",
        "buffers",
    }
    bad = runner.invoke(app, [*args, "--gpu", "tpu-v5"])
    assert bad.exit_code == 2
    assert "unknown GPU" in bad.stderr


def test_a_recipe_that_fits_only_with_expert_parallelism_is_told_so(tmp_path: Path) -> None:
    """Two flagship-wide layers on 8 GPUs: the whole MoE layer gathered (44 GiB) does not fit beside the states,
    the experts split over expert-parallel ranks do."""
    model = load_config("oracle850b").model_dump() | {"name": "wide", "n_layers": 2, "vocab_size": 4096}
    model |= {"param_total": None, "param_active": None}
    (tmp_path / "wide.moe.json").write_text(json.dumps(model))
    recipe = load_train_config("oracle-mini").model_dump(mode="json")
    recipe.update(model=str(tmp_path / "wide.moe.json"), parallelism={"data": 8, "expert": 1, "zero_stage": 3})
    recipe["batch"] = {"global_batch": 8, "micro_batch": 1, "gradient_accumulation": 1}
    config = TrainConfig.model_validate(recipe)
    layout = plan(config, nodes=1, gpus_per_node=8)
    assert not layout.fits
    advice = remedy(config, layout)
    expert = int(re.findall(r"set parallelism.expert: (\d+)", advice)[0])
    assert plan(config, nodes=1, gpus_per_node=8, expert=expert).fits
    assert not plan(config, nodes=1, gpus_per_node=8, expert=expert // 2).fits


# A model of 110 M parameters, mostly routed experts, measured on a real ZeRO-3 engine (the trainer's own).
MEASURED_MODEL = {
    "name": "plan-measured",
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
MEASURED_SEQ_LEN, MEASURED_MICRO_BATCH = 513, 4


def _measured_recipe(directory: Path) -> Path:
    (directory / "plan-measured.moe.json").write_text(json.dumps(MEASURED_MODEL))
    recipe = load_train_config("oracle-mini").model_dump(mode="json")
    recipe.update(name="plan-measured", model=str(directory / "plan-measured.moe.json"))
    recipe["data"]["seq_len"] = MEASURED_SEQ_LEN
    batch = MEASURED_MICRO_BATCH
    recipe["batch"] = {"global_batch": batch, "micro_batch": batch, "gradient_accumulation": 1}
    recipe["parallelism"] = {"data": 1, "expert": 1, "zero_stage": 3}
    (directory / "plan-measured.yaml").write_text(json.dumps(recipe))
    return directory / "plan-measured.yaml"


def _high_water_mark() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _measure_engine(rank: int, directory: str) -> None:
    """One process (gloo): the trainer's engine, two steps on random tokens; writes what its optimizer holds, the
    bytes autograd saved in the last forward pass and the growth of the peak resident memory."""
    import os

    from oracle.train.distributed import Placement, init_process_group
    from oracle.train.trainer import initialise_engine

    os.environ["DS_ACCELERATOR"] = "cpu"
    config = load_train_config(Path(directory) / "plan-measured.yaml")
    placement = Placement(rank, 1, 0, "127.0.0.1", 29533)
    init_process_group(placement)
    before = _high_water_mark()
    engine, _ = initialise_engine(config, placement)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # Adam's moments exist from the first step on
        tokens = torch.randint(0, 4096, (MEASURED_MICRO_BATCH, MEASURED_SEQ_LEN), generator=generator)
        with saved_activations() as saved:
            loss = engine(tokens[:, :-1], tokens[:, 1:])[0]
        engine.backward(loss)
        engine.step()
    opt = engine.optimizer
    moments = [v for state in opt.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim()]
    tensors = [*opt.fp16_partitioned_groups_flat, *opt.fp32_partitioned_groups_flat, *moments]
    states = sum(t.numel() * t.element_size() for t in [*tensors, opt.grad_partitions_flat_buffer])
    figures = {"states": states, "saved": sum(saved.values()), "peak_growth": _high_water_mark() - before}
    (Path(directory) / "measured.json").write_text(json.dumps(figures))


def test_the_plan_matches_a_measured_zero3_engine(tmp_path: Path) -> None:
    """Measured on this CPU (bf16, ZeRO-3, one process): the model states are exactly the plan's 16 bytes per
    parameter (DeepSpeed's estimator says 18), autograd saves 1.02x the planned activations, and the process's peak
    grows by 1.3x the plan's total (the CPU allocator's and DeepSpeed's start-up copies on top)."""
    import torch.multiprocessing as mp

    config = load_train_config(_measured_recipe(tmp_path))
    mp.spawn(_measure_engine, args=(str(tmp_path),), nprocs=1, join=True)
    measured = json.loads((tmp_path / "measured.json").read_text())
    sizes = model_sizes(config.moe_config())
    layout = plan(config, nodes=1, gpus_per_node=1, sizes=sizes)
    assert measured["states"] == layout.memory["parameters"] + layout.memory["gradients"] + layout.memory["optimizer"]
    assert measured["states"] == 16 * sizes.total
    tokens = MEASURED_MICRO_BATCH * (MEASURED_SEQ_LEN - 1)
    planned_saved = layout.memory["activations"] - tokens * _head_gradient_bytes(config.moe_config(), 2)
    assert 0.9 < measured["saved"] / planned_saved < 1.15
    assert 0.9 < measured["peak_growth"] / layout.total_bytes < 1.6
