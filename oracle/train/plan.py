"""How a training recipe lays out on a cluster: memory per GPU, communication per step, step time and MFU.

`oracle plan` prints it; the submit gate (infra/checks.py, SUB005) refuses a recipe whose plan does not fit the GPUs
it asks for. Everything is computed from the recipe, the model built on the `meta` device (exact sizes, no hand
formulas) and the hardware table below; nothing runs.

Letters: N ranks (parallelism.data), Ep the expert-parallel group size (parallelism.expert), g = N/Ep the
expert-data-parallel group (the ranks that hold the same experts), P parameters, Px the routed experts' share,
T tokens per micro-batch (micro_batch · (seq_len − 1)), S = seq_len − 1, D width, F expert width, Fs shared-expert
width, K experts per token, E experts, V vocabulary, H/KV query/key-value heads of width Hd, b bytes per value.

Memory, bf16 ZeRO as DeepSpeed allocates it (deepspeed/runtime/zero/stage3.py): per parameter a bf16 weight (2 B),
a bf16 gradient partition (2 B: gradient_accumulation_dtype is the model dtype unless configured), an fp32 master
copy and two fp32 Adam moments (12 B), each divided by the ranks its ZeRO stage shards it over. ZeRO-3 gathers one
module at a time: its bf16 weights and, in backward, their bf16 gradient (4 B × the largest module, as DeepSpeed's
estimator counts it). Ep = 1: the routed experts of a layer are one module (`GroupedExperts`), gathered whole.
Ep > 1: a rank holds E/Ep experts of every layer and never the others; with `expert_states="zero"` their weights,
gradients and Adam states are partitioned over the g ranks holding the same experts (gathered within that group,
E/Ep experts at a time), with "replicated" they stay whole on the rank (gradients all-reduced over g).
Activations: what autograd saves per token and layer (below, `_layer_activation_bytes`); with activation
checkpointing only each layer's input is kept and one layer is recomputed at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from oracle.moe850b.config import MoEConfig
from oracle.train.config import TrainConfig
from oracle_base.errors import UsageError

if TYPE_CHECKING:
    import torch

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # the total nvidia-smi reports
    bf16_flops: float  # dense peak, no sparsity
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # one direction, per GPU
    network_bytes_per_s: float  # between nodes, per GPU (one NIC per GPU, as in NVIDIA's DGX/HGX nodes)


GPUS = {
    # NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOP/s bf16 dense, 2,039 GB/s HBM2e, NVLink 600 GB/s (300 each way);
    # DGX A100: one 200 Gb/s HDR InfiniBand adapter per GPU. nvidia-smi: 81920 MiB.
    "a100-80gb": GPU("a100-80gb", 81920 * MIB, 312e12, 2.039e12, 300e9, 25e9),
    # NVIDIA H100 datasheet (SXM5 80GB): 989 TFLOP/s bf16 dense (1,979 with sparsity), 3.35 TB/s HBM3, NVLink 900 GB/s
    # (450 each way); DGX H100: one 400 Gb/s NDR ConnectX-7 per GPU. nvidia-smi: 81559 MiB.
    "h100-80gb": GPU("h100-80gb", 81559 * MIB, 989e12, 3.35e12, 450e9, 50e9),
    # NVIDIA H200 datasheet (SXM 141GB): 989 TFLOP/s bf16 dense, 4.8 TB/s HBM3e, NVLink 900 GB/s; DGX H200: 400 Gb/s
    # per GPU. nvidia-smi: 143771 MiB.
    "h200-141gb": GPU("h200-141gb", 143771 * MIB, 989e12, 4.8e12, 450e9, 50e9),
}
DEFAULT_GPU = "h100-80gb"

# Fractions of the bf16 peak our kernels reach, measured on one H100 (DESIGN.md §5, MoE kernels; bf16 fwd+bwd,
# T=16384, D=2048, F=1024, 64 experts, top-2): sort + grouped GEMM 205 TFLOP/s, a dense matmul chain 503, causal
# SDPA 345-490 (the low end taken). Assumed to scale with the peak on the other GPUs.
EXPERT_EFFICIENCY = 205 / 989
DENSE_EFFICIENCY = 503 / 989
ATTENTION_EFFICIENCY = 345 / 989

# Not for tensors: the CUDA context and NCCL's communicators (about 2 GiB together) and the caching allocator's
# fragmentation (5 % of the card).
RESERVED_BYTES = 2 * GIB
FRAGMENTATION = 0.05

# DeepSpeed defaults our generated config keeps (oracle/train/deepspeed_config.py): a reduce bucket of 5e8 values,
# and the optimizer step turning one sub-group (1e9 values at most) of bf16 gradients into fp32 at a time.
REDUCE_BUCKET = 500_000_000
SUB_GROUP = 1_000_000_000

ExpertStates = Literal["zero", "replicated"]


class PlanError(UsageError, ValueError):
    """A layout that cannot be planned (unknown GPU, world size other than the recipe's); names the option and fix."""


@dataclass(frozen=True)
class ModelSizes:
    """Exact sizes from the model built on the meta device."""

    total: int
    routed_experts: int  # all layers
    largest_module: int  # parameters one module holds itself (what ZeRO-3 gathers at once), routed experts excluded
    routed_experts_module: int  # one layer's GroupedExperts (E experts)


def model_sizes(config: MoEConfig) -> ModelSizes:
    import torch

    from oracle.moe850b.experts import GroupedExperts
    from oracle.moe850b.model import OracleMoE

    with torch.device("meta"):
        model = OracleMoE(config)
    largest = experts = experts_module = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, GroupedExperts):
            experts += own
            experts_module = max(experts_module, own)
        else:
            largest = max(largest, own)
    total = sum(p.numel() for p in model.parameters())
    return ModelSizes(total, experts, largest, experts_module)


@dataclass(frozen=True)
class Collective:
    name: str  # all-gather, reduce-scatter, all-reduce, all-to-all
    what: str
    group: int  # ranks in the group
    across_nodes: bool
    bytes_per_gpu: float  # sent by each GPU per optimizer step
    seconds: float


@dataclass(frozen=True)
class Plan:
    recipe: str
    gpu: GPU
    nodes: int
    gpus_per_node: int
    expert: int
    expert_states: ExpertStates
    activation_checkpointing: bool
    memory: dict[str, float]  # bytes per GPU: parameters, gradients, optimizer, gathered_layer, activations, buffers
    collectives: list[Collective] = field(default_factory=list)
    model_flops: float = 0.0  # per GPU per optimizer step (MFU counts these)
    compute_s: float = 0.0
    optimizer_s: float = 0.0
    tokens_per_step: int = 0

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_bytes * (1 - FRAGMENTATION) - RESERVED_BYTES

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    @property
    def communication_s(self) -> float:
        return sum(c.seconds for c in self.collectives)

    @property
    def step_s(self) -> float:
        """Compute, communication and the optimizer in series: the generated DeepSpeed config sets overlap_comm
        false, so ZeRO's collectives wait for the kernels and the kernels for them."""
        return self.compute_s + self.communication_s + self.optimizer_s

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.step_s * self.gpu.bf16_flops)

    def as_json(self) -> dict[str, object]:
        return {
            "recipe": self.recipe,
            "gpu": self.gpu.name,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "expert_parallel": self.expert,
            "expert_states": self.expert_states,
            "activation_checkpointing": self.activation_checkpointing,
            "memory_gib": {key: value / GIB for key, value in self.memory.items()},
            "total_gib": self.total_bytes / GIB,
            "usable_gib": self.usable_bytes / GIB,
            "fits": self.fits,
            "collectives": [
                {
                    "collective": c.name,
                    "what": c.what,
                    "group": c.group,
                    "across_nodes": c.across_nodes,
                    "gib_per_gpu": c.bytes_per_gpu / GIB,
                    "seconds": c.seconds,
                }
                for c in self.collectives
            ],
            "compute_s": self.compute_s,
            "communication_s": self.communication_s,
            "optimizer_s": self.optimizer_s,
            "step_s": self.step_s,
            "tokens_per_step": self.tokens_per_step,
            "mfu": self.mfu,
        }

    def shortfall_gib(self) -> float:
        return max(0.0, (self.total_bytes - self.usable_bytes) / GIB)


def _layer_activation_bytes(m: MoEConfig, b: int) -> int:
    """Bytes autograd keeps per token for one decoder layer (the routed part counts all K assignments: capacity
    dropping zeroes weights but keeps the rows, oracle/moe850b/moe.py)."""
    D, Hd, K, E = m.hidden_size, m.resolved_head_dim, m.top_k, m.n_experts
    F, Fs = m.expert_hidden_size, m.shared_expert_hidden_size
    norm = (4 + 4 + b) * D  # RMSNorm in fp32: its fp32 input, the normalised fp32 values, the cast output
    attention = norm + b * (
        (m.n_heads + 2 * m.n_kv_heads) * Hd  # q, k, v
        + (m.n_heads + m.n_kv_heads) * Hd  # q, k after rotation
        + m.n_heads * Hd  # the attention output (o_proj's input)
    )
    router = 3 * 4 * E  # logits, probabilities, top-k in fp32
    routed = b * K * (D + 2 * F + F + F + D)  # gathered rows, gate|up, silu, product, down output
    shared = b * (2 * Fs + Fs + Fs + D) if Fs else 0
    return attention + norm + router + routed + shared + b * D


def _head_activation_bytes(m: MoEConfig, b: int) -> int:
    """Per token: what the final norm saves and the loss's fp32 log-probabilities (lm_loss casts the logits)."""
    return (4 + 4 + b) * m.hidden_size + 4 * m.vocab_size


@contextmanager
def saved_activations() -> Iterator[dict[int, int]]:
    """The bytes autograd saves for backward inside the block, by storage: what the formulas above are checked
    against (tests/train/test_plan.py). Weights and their views (the experts' unbind slices)
    are left out: ZeRO-3 counts them in the gathered layer."""
    import torch

    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter) and not isinstance(tensor._base, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        yield saved


def _head_gradient_bytes(m: MoEConfig, b: int) -> int:
    """Per token, at the start of backward while every activation is still held: the fp32 gradient of the logits
    and its cast to the weights' dtype."""
    return (4 + b) * m.vocab_size


def _forward_flops_per_token(m: MoEConfig, seq: int) -> dict[str, float]:
    """Forward FLOPs per token by kind of kernel (2 per multiply-add; causal attention does half of S × S)."""
    D, Hd = m.hidden_size, m.resolved_head_dim
    q, kv = m.n_heads * Hd, m.n_kv_heads * Hd
    L = m.n_layers
    return {
        "dense": L * 2 * (D * (q + 2 * kv) + q * D + D * m.n_experts + 3 * D * m.shared_expert_hidden_size),
        "experts": L * 2 * 3 * D * m.expert_hidden_size * m.top_k,
        "attention": L * 2 * 2 * seq * q / 2,
        "head": 2 * D * m.vocab_size,
    }


def _ring_share(n: int) -> float:
    """The share of a ring collective's data each of n ranks sends."""
    return (n - 1) / n


def plan(
    config: TrainConfig,
    *,
    nodes: int,
    gpus_per_node: int,
    gpu: str = DEFAULT_GPU,
    expert: int | None = None,
    expert_states: ExpertStates = "zero",
    activation_checkpointing: bool | None = None,
    sizes: ModelSizes | None = None,
) -> Plan:
    """The plan of `config` on nodes × gpus_per_node GPUs of kind `gpu`; `expert` and `activation_checkpointing`
    override the recipe (None: as it will run)."""
    if gpu not in GPUS:
        raise PlanError(f"--gpu {gpu}: unknown GPU; use one of {', '.join(GPUS)}")
    if nodes < 1 or gpus_per_node < 1:
        raise PlanError("--nodes and --gpus-per-node must be at least 1 (a plan is for GPUs)")
    N = nodes * gpus_per_node
    if config.parallelism.data != N:
        raise PlanError(
            f"{nodes} nodes × {gpus_per_node} GPUs = {N} ranks, but the recipe trains on {config.parallelism.data} "
            "(parallelism.data); plan the recipe's world size or change parallelism.data and the batch sizes"
        )
    Ep = config.parallelism.expert if expert is None else expert
    model = config.moe_config()
    if Ep < 1 or N % Ep or model.n_experts % Ep:
        raise PlanError(
            f"expert parallelism {Ep} must divide the {N} ranks and the model's {model.n_experts} experts; "
            "choose a common divisor"
        )
    ac = config.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    hw = GPUS[gpu]
    sizes = sizes or model_sizes(model)
    stage, b = config.parallelism.zero_stage, 2 if config.precision == "bf16" else 4
    # bytes per parameter: weight, gradient, optimizer (bf16: fp32 master + 2 moments; fp32: 2 moments)
    weight, grad, optim = b, b, 12 if b == 2 else 8
    g = N // Ep

    def states(count: float, over: int, zero: bool = True) -> tuple[float, float, float]:
        shard = over if zero else 1
        return (
            weight * count / (shard if stage == 3 else 1),
            grad * count / (shard if stage >= 2 else 1),
            optim * count / (shard if stage >= 1 else 1),
        )

    dense = sizes.total - (sizes.routed_experts if Ep > 1 else 0)
    parts = [states(dense, N)]
    if Ep > 1:
        parts.append(states(sizes.routed_experts / Ep, g, zero=expert_states == "zero"))
    params, grads, optimizer = (sum(part[i] for part in parts) for i in range(3))

    gathered_module = sizes.largest_module
    if Ep == 1:
        gathered_module = max(gathered_module, sizes.routed_experts_module)
    elif expert_states == "zero":
        gathered_module = max(gathered_module, sizes.routed_experts_module // Ep)
    gathered = 2 * b * gathered_module if stage == 3 else 0

    S, B, GA = config.data.seq_len - 1, config.batch.micro_batch, config.batch.gradient_accumulation
    T = B * S
    layer = _layer_activation_bytes(model, b)
    kept = model.n_layers * b * model.hidden_size if ac else model.n_layers * layer
    head = _head_activation_bytes(model, b) + _head_gradient_bytes(model, b)
    activations = T * (kept + (layer if ac else 0) + head)
    partition = (params / weight) if stage == 3 else sizes.total / N
    buffers = b * REDUCE_BUCKET + 4 * min(SUB_GROUP, partition)
    memory = {
        "parameters": params,
        "gradients": grads,
        "optimizer": optimizer,
        "gathered_layer": gathered,
        "activations": activations,
        "buffers": buffers,
    }

    def link(across: bool) -> float:
        return hw.network_bytes_per_s if across else hw.nvlink_bytes_per_s

    collectives = []

    def add(name: str, what: str, group: int, across: bool, volume: float) -> None:
        if group > 1 and volume > 0:
            collectives.append(Collective(name, what, group, across, volume, volume / link(across)))

    dp_across = nodes > 1
    gathers = 3 if ac else 2  # forward, backward (and the recomputed forward)
    which = "all but the routed experts" if Ep > 1 else "all"
    if stage == 3:
        add("all-gather", f"weights ({which})", N, dp_across, gathers * GA * b * dense * _ring_share(N))
    if stage >= 2:
        add("reduce-scatter", f"gradients ({which})", N, dp_across, GA * b * dense * _ring_share(N))
    else:
        add("all-reduce", f"gradients ({which})", N, dp_across, 2 * b * dense * _ring_share(N))
    if Ep > 1:
        local = sizes.routed_experts / Ep
        g_across = nodes > 1 and (Ep >= gpus_per_node or g > gpus_per_node // Ep)
        if expert_states == "zero" and stage == 3:
            add("all-gather", "weights (this rank's experts)", g, g_across, gathers * GA * b * local * _ring_share(g))
            add("reduce-scatter", "gradients (this rank's experts)", g, g_across, GA * b * local * _ring_share(g))
        else:
            add("all-reduce", "gradients (this rank's experts)", g, g_across, 2 * b * local * _ring_share(g))
        passes = 6 if ac else 4  # dispatch and combine, forward and backward (and the recomputed forward)
        rows = T * model.top_k * model.hidden_size * b * model.n_layers
        add(
            "all-to-all",
            "token rows to experts and back",
            Ep,
            nodes > 1 and Ep > gpus_per_node,
            passes * GA * rows * _ring_share(Ep),
        )

    per_token = _forward_flops_per_token(model, S)
    tokens = GA * T
    model_flops = 3 * tokens * sum(per_token.values())  # forward and a backward of twice its cost
    efficiency = {"experts": EXPERT_EFFICIENCY, "attention": ATTENTION_EFFICIENCY}
    compute = sum(
        (4 if ac and kind != "head" else 3) * tokens * flops / (hw.bf16_flops * efficiency.get(kind, DENSE_EFFICIENCY))
        for kind, flops in per_token.items()
    )
    # AdamW on this rank's partition, HBM-bound: read bf16 gradient, read/write fp32 master and both moments,
    # write the bf16 weight (2 + 3 × 8 + 2 bytes per parameter).
    optimizer_s = (optimizer / optim) * (2 + 24 + 2) / hw.hbm_bytes_per_s
    return Plan(
        recipe=config.name,
        gpu=hw,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        expert=Ep,
        expert_states=expert_states,
        activation_checkpointing=ac,
        memory=memory,
        collectives=collectives,
        model_flops=model_flops,
        compute_s=compute,
        optimizer_s=optimizer_s,
        tokens_per_step=tokens * N,
    )


def describe(p: Plan) -> list[str]:
    """The plan as lines of text: memory per GPU, collectives per step, step time and MFU."""
    lines = [
        f"{p.recipe} on {p.nodes} nodes × {p.gpus_per_node} {p.gpu.name} ({p.world} ranks), expert parallelism "
        f"{p.expert}{f' (expert states {p.expert_states})' if p.expert > 1 else ''}, activation checkpointing "
        f"{'on' if p.activation_checkpointing else 'off'}",
        "memory per GPU:",
    ]
    lines += [f"  {key.replace('_', ' '):<16}{value / GIB:9.2f} GiB" for key, value in p.memory.items()]
    verdict = "fits" if p.fits else f"does NOT fit: {p.shortfall_gib():.2f} GiB short"
    lines.append(f"  {'total':<16}{p.total_bytes / GIB:9.2f} GiB of {p.usable_bytes / GIB:.2f} GiB usable: {verdict}")
    lines.append("communication per GPU per step:")
    for c in p.collectives:
        where = "between nodes" if c.across_nodes else "within a node"
        volume = f"{c.bytes_per_gpu / GIB:9.1f} GiB"
        lines.append(f"  {c.name:<15}{c.what:<38}{volume}  group {c.group:>3} {where:<14}{c.seconds:7.2f} s")
    lines.append(
        f"step: compute {p.compute_s:.2f} s + communication {p.communication_s:.2f} s + optimizer "
        f"{p.optimizer_s:.2f} s = {p.step_s:.2f} s for {p.tokens_per_step:,} tokens "
        f"({p.tokens_per_step / p.step_s:,.0f} tokens/s); MFU {100 * p.mfu:.1f} %"
    )
    return lines


def remedy(config: TrainConfig, p: Plan, sizes: ModelSizes | None = None) -> str:
    """What would make a plan that does not fit fit, in one clause: the recipe change that does, else the biggest
    item and the ways to shrink it."""
    model = config.moe_config()
    sizes = sizes or model_sizes(model)
    if not p.activation_checkpointing and p.memory["activations"] > p.usable_bytes:
        return (
            f"activations alone need {p.memory['activations'] / GIB:.1f} GiB per GPU without activation "
            "checkpointing: set activation_checkpointing: true in the recipe (each decoder block recomputed in "
            "backward), or lower batch.micro_batch or data.seq_len"
        )

    def again(expert: int, gpu: str) -> Plan:
        return plan(
            config,
            nodes=p.nodes,
            gpus_per_node=p.gpus_per_node,
            gpu=gpu,
            expert=expert,
            expert_states=p.expert_states,
            activation_checkpointing=p.activation_checkpointing,
            sizes=sizes,
        )

    for expert in (e for e in range(2, model.n_experts + 1) if not model.n_experts % e and not p.world % e):
        other = again(expert, p.gpu.name)
        if other.fits and expert != p.expert:
            return f"set parallelism.expert: {expert} (the plan then needs {other.total_bytes / GIB:.1f} GiB)"
    bigger = [name for name in GPUS if GPUS[name].memory_bytes > p.gpu.memory_bytes and again(p.expert, name).fits]
    largest = max(p.memory, key=lambda key: p.memory[key])
    return (
        f"the largest item is {largest.replace('_', ' ')} ({p.memory[largest] / GIB:.1f} GiB): shard it over more "
        f"GPUs (raise parallelism.data and the batch sizes){' or use ' + ', '.join(bigger) if bigger else ''}"
    )


__all__ = ["GPUS", "Plan", "PlanError", "describe", "model_sizes", "plan", "remedy", "saved_activations"]
