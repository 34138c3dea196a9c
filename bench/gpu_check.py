"""One prepared GPU check (issue 18), one run of a few minutes on one GPU (H100 or H200), one JSON record.

Three parts, each bounded (warm-up plus a few timed repeats, synchronised), each with a one-line summary:

1. **MoE layer**, forward + backward, bf16, T=16384, D=2048, F=1024, E=64, top-2: TFLOP/s of the grouped path, the
   per-expert loop and a dense matmul chain of the same FLOPs (bench/moe_layer.py's GPU case, run as it is), and
   whether the grouped path really ran (it needs bf16 on sm90+; elsewhere `moe_impl: grouped` falls back to the loop).
2. **Attention parity**: torch's flash SDPA backend and the model's own `causal_attention` (flash_attn where it is
   installed; it is in no lock) against causal GQA attention written out in fp32, for the head layouts of the bench
   and flagship presets; forward output and the gradients of q, k, v. A candidate passes when its largest error is at
   most twice that of the same written-out attention computed in bf16, plus one bf16 step of the largest value. Then
   fwd+bwd TFLOP/s of the flash backend at the bench preset's training shape.
3. **Training steps** of the bench recipe (oracle/moe850b/configs/oracle-bench.yaml): tokens/s and MFU. A bench-only
   step (model.loss, backward, gradient clipping, AdamW), not the trainer: one process, no DeepSpeed, random tokens,
   bf16 parameters and optimizer state (DeepSpeed's bf16 mode also keeps fp32 master weights, so its optimizer step
   moves more bytes). Training through `oracle train` happens only in a submitted job; this measures the model's step.

Without CUDA the script refuses in one line, unless `--cpu-smoke`: then every part runs at tiny sizes on the CPU
(the mini recipe and its head layout), which checks the script's logic and says nothing about a GPU.

Usage: python bench/gpu_check.py [--out FILE] [--cpu-smoke]   (FILE defaults to $OUT/gpu_check.json when OUT is set)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.moe_layer import run_case, timed  # noqa: E402
from oracle.core.attention import HAS_FLASH_ATTN, causal_attention  # noqa: E402
from oracle.moe850b.config import MoEConfig, load_config  # noqa: E402
from oracle.moe850b.experts import grouped_mm_preferred, grouped_mm_supported  # noqa: E402
from oracle.moe850b.model import OracleMoE  # noqa: E402
from oracle.moe850b.params import count_parameters  # noqa: E402
from oracle.train.config import TrainConfig, load_train_config  # noqa: E402

# Dense bf16 tensor-core peaks in FLOP/s, matched against torch.cuda.get_device_name(), most specific first.
# Sources: NVIDIA H100 Tensor Core GPU datasheet (SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS "with sparsity", halved
# here for dense); NVIDIA H200 datasheet (SXM 1,979 / NVL 1,671 with sparsity; GH200 carries the SXM-class part);
# NVIDIA A100 datasheet (312 dense).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)
GRADIENTS = ("out", "dq", "dk", "dv")
# A candidate may err by twice what bf16 costs the written-out attention, plus one bf16 step (2^-8 relative) of the
# largest reference value: a correctly rounded bf16 result is already up to half a step off.
PARITY_FACTOR, PARITY_ULP = 2.0, 2.0**-8


class Environment(BaseModel):
    torch: str
    cuda: str | None
    cudnn: int | None
    device: str
    capability: str | None
    python: str
    flash_attn: str | None  # its version, when installed
    peak_bf16_tflops: float | None  # None: not in PEAK_BF16_FLOPS, so no MFU


class MoELayerResult(BaseModel):
    dtype: str
    tokens: int
    hidden: int
    expert_ffn: int
    experts: int
    top_k: int
    flops_per_step: int
    seconds_median: dict[str, float]  # grouped, loop and (on CUDA) dense
    tflops: dict[str, float]
    grouped_path_ran: bool


class CandidateParity(BaseModel):
    max_abs_err: dict[str, float] | None  # out, dq, dk, dv against the fp32 reference
    passed: bool
    error: str | None = None  # the exception, when the candidate could not run


class AttentionShape(BaseModel):
    batch: int
    positions: int
    heads: int
    kv_heads: int
    head_dim: int

    def sizes(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """The sizes of q (B, H, S, Hd) and of k and v (B, G, S, Hd)."""
        q_size = (self.batch, self.heads, self.positions, self.head_dim)
        return q_size, (self.batch, self.kv_heads, self.positions, self.head_dim)

    def __str__(self) -> str:
        return f"B={self.batch} S={self.positions} H={self.heads} G={self.kv_heads} Hd={self.head_dim}"


class AttentionCase(BaseModel):
    name: str
    shape: AttentionShape
    bf16_reference_err: dict[str, float]  # the written-out attention in bf16: the error bf16 itself costs
    candidates: dict[str, CandidateParity]


class AttentionTiming(BaseModel):
    backend: str
    shape: AttentionShape
    flops_per_step: int
    seconds_median: float
    tflops: float


class AttentionResult(BaseModel):
    cases: list[AttentionCase]
    timing: AttentionTiming | None  # None: the flash backend refused the inputs, so there is nothing to time
    passed: bool


class TrainResult(BaseModel):
    recipe: str
    model: str
    dtype: str
    moe_path: Literal["grouped", "loop"]
    micro_batch: int
    gradient_accumulation: int
    positions: int
    tokens_per_step: int
    warmup_steps: int
    seconds_per_step: list[float]
    tokens_per_s: float
    active_params: int
    matmul_params: int
    flops_per_token: int  # model_flops_per_token: 6 x matmul_params + attention_flops_per_token
    attention_flops_per_token: int
    model_tflops: float
    mfu: float | None
    losses: list[float]  # every step's, the warm-up steps first
    peak_memory_gib: float | None


class GpuCheck(BaseModel):
    schema_version: Literal[1] = 1
    mode: Literal["gpu", "cpu-smoke"]
    started_utc: str
    environment: Environment
    moe_layer: MoELayerResult | None = None
    attention: AttentionResult | None = None
    train: TrainResult | None = None
    errors: dict[str, str] = {}  # part name -> the exception that stopped it
    part_seconds: dict[str, float] = {}
    seconds_total: float = 0.0
    passed: bool = False


def peak_bf16_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def model_flops_per_token(config: MoEConfig, positions: int) -> int:
    """6 x the active parameters that take part in matrix products (all but an untied embedding table, a lookup),
    plus attention's 12 · layers · heads · head_dim · positions (QKᵀ and AV, forward and twice that backward, the
    causal mask not discounted: the convention of PaLM, Chowdhery et al. 2022, appendix B)."""
    return 6 * matmul_parameters(config) + attention_flops_per_token(config, positions)


def attention_flops_per_token(config: MoEConfig, positions: int) -> int:
    return 12 * config.n_layers * config.n_heads * config.resolved_head_dim * positions


def matmul_parameters(config: MoEConfig) -> int:
    counts = count_parameters(config)
    embedding = 0 if config.tie_embeddings else counts.by_component["embedding"]["active"]
    return counts.active - embedding


def mfu(flops_per_token: int, tokens_per_s: float, peak_flops: float | None) -> float | None:
    return None if peak_flops is None else flops_per_token * tokens_per_s / peak_flops


def causal_attention_flops(shape: AttentionShape) -> int:
    """Forward and backward of causal attention as FlashAttention's benchmarks count them: QKᵀ and AV, 2·S²·Hd each
    per head, halved by the mask; the backward 2.5x the forward (it recomputes QKᵀ)."""
    forward = 2 * shape.batch * shape.heads * shape.positions**2 * shape.head_dim
    return forward * 7 // 2


def timed_repeats(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    return [timed(step, device) for _ in range(repeats)]


def check_moe_layer(device: torch.device, smoke: bool) -> tuple[MoELayerResult, str]:
    dtype, (tokens, hidden, ffn) = (torch.float32, (256, 64, 64)) if smoke else (torch.bfloat16, (16384, 2048, 1024))
    case = run_case("cpu-smoke" if smoke else "gpu", device, dtype, tokens, hidden, ffn, repeats=3 if smoke else 10)
    result = MoELayerResult(
        dtype=str(case["dtype"]),
        tokens=tokens,
        hidden=hidden,
        expert_ffn=ffn,
        experts=int(str(case["experts"])),
        top_k=int(str(case["top_k"])),
        flops_per_step=18 * tokens * int(str(case["top_k"])) * hidden * ffn,  # 3 GEMMs of 2·(T·k)·D·F, fwd + 2x bwd
        seconds_median=case["seconds_median"],  # type: ignore[arg-type]
        tflops=case["tflops"],  # type: ignore[arg-type]
        grouped_path_ran=grouped_mm_supported(torch.empty(0, dtype=dtype, device=device)),
    )
    rates = ", ".join(f"{key} {value:.3g}" for key, value in result.tflops.items())
    summary = (
        f"moe_layer: {result.dtype} T={tokens} D={hidden} F={ffn} E={result.experts} top-{result.top_k}: {rates} "
        f"TFLOP/s (grouped path ran: {'yes' if result.grouped_path_ran else 'NO, the loop ran in its place'})"
    )
    return result, summary


def reference_attention(q_BHSHd: torch.Tensor, k_BGSHd: torch.Tensor, v_BGSHd: torch.Tensor) -> torch.Tensor:
    """Causal grouped-query attention written out (scores, mask, softmax, weighted sum) in the inputs' dtype; query
    head h reads key/value head h // (H / G), as SDPA's enable_gqa and flash_attn do."""
    H, G, S = q_BHSHd.shape[1], k_BGSHd.shape[1], q_BHSHd.shape[2]
    k_BHSHd = k_BGSHd.repeat_interleave(H // G, dim=1)
    v_BHSHd = v_BGSHd.repeat_interleave(H // G, dim=1)
    scores_BHSS = (q_BHSHd @ k_BHSHd.transpose(-2, -1)) * q_BHSHd.shape[-1] ** -0.5
    allowed_SS = torch.ones(S, S, dtype=torch.bool, device=q_BHSHd.device).tril()
    return scores_BHSS.masked_fill(~allowed_SS, float("-inf")).softmax(dim=-1) @ v_BHSHd


def sdpa_flash(q_BHSHd: torch.Tensor, k_BGSHd: torch.Tensor, v_BGSHd: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # only flash: no silent fallback to another backend
        return F.scaled_dot_product_attention(q_BHSHd, k_BGSHd, v_BGSHd, is_causal=True, enable_gqa=True)


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
CANDIDATES: dict[str, AttentionFn] = {"sdpa_flash": sdpa_flash, "model": causal_attention}


def attention_errors(
    fn: AttentionFn, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor, reference: Sequence[torch.Tensor]
) -> dict[str, float]:
    """Largest absolute error of fn's output and q, k, v gradients against the reference's."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return {
        name: (got.float() - want.float()).abs().max().item()
        for name, got, want in zip(GRADIENTS, (out, *grads), reference, strict=True)
    }


def attention_parity(
    name: str, shape: AttentionShape, device: torch.device, candidates: dict[str, AttentionFn]
) -> AttentionCase:
    generator = torch.Generator(device=device).manual_seed(0)

    def draw(size: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(size, generator=generator, device=device, dtype=torch.bfloat16)

    q_size, kv_size = shape.sizes()
    inputs = (draw(q_size), draw(kv_size), draw(kv_size))
    grad_out = draw(q_size)
    exact = [x.float().requires_grad_() for x in inputs]
    out = reference_attention(*exact)
    reference = [out.detach(), *torch.autograd.grad(out, exact, grad_out.float())]
    baseline = attention_errors(reference_attention, inputs, grad_out, reference)
    scale = {g: want.abs().max().item() for g, want in zip(GRADIENTS, reference, strict=True)}
    results = {}
    for key, fn in candidates.items():
        try:
            errors = attention_errors(fn, inputs, grad_out, reference)
        except RuntimeError as exc:  # e.g. "No available kernel": the backend refuses this shape or device
            results[key] = CandidateParity(max_abs_err=None, passed=False, error=str(exc).splitlines()[0])
            continue
        passed = all(errors[g] <= PARITY_FACTOR * baseline[g] + PARITY_ULP * scale[g] for g in GRADIENTS)
        results[key] = CandidateParity(max_abs_err=errors, passed=passed)
    return AttentionCase(name=name, shape=shape, bf16_reference_err=baseline, candidates=results)


def time_flash_attention(shape: AttentionShape, device: torch.device, repeats: int) -> AttentionTiming:
    q_size, kv_size = shape.sizes()
    q, k, v = (
        torch.randn(size, device=device, dtype=torch.bfloat16, requires_grad=True)
        for size in (q_size, kv_size, kv_size)
    )
    grad_out = torch.randn_like(q)

    def step() -> None:
        sdpa_flash(q, k, v).backward(grad_out)

    seconds = statistics.median(timed_repeats(step, device, warmup=3, repeats=repeats))
    flops = causal_attention_flops(shape)
    return AttentionTiming(
        backend="sdpa_flash", shape=shape, flops_per_step=flops, seconds_median=seconds, tflops=flops / seconds / 1e12
    )


def check_attention(device: torch.device, smoke: bool, recipe: TrainConfig) -> tuple[AttentionResult, str]:
    # the recipe's input length; the bench recipe's 2047 is no multiple of the kernels' blocks: their tails run too
    positions = recipe.data.seq_len - 1
    presets = [load_config(recipe.model)] if smoke else [load_config(recipe.model), load_config("oracle850b")]
    shapes = {
        preset.name: AttentionShape(
            batch=1,
            positions=positions,
            heads=preset.n_heads,
            kv_heads=preset.n_kv_heads,
            head_dim=preset.resolved_head_dim,
        )
        for preset in presets
    }
    timing_shape = shapes[recipe.model].model_copy(update={"batch": recipe.batch.micro_batch})
    cases = [attention_parity(name, shape, device, CANDIDATES) for name, shape in shapes.items()]
    passed = all(c.passed for case in cases for c in case.candidates.values())
    flash_ran = all(case.candidates["sdpa_flash"].error is None for case in cases)
    timing = time_flash_attention(timing_shape, device, repeats=3 if smoke else 10) if flash_ran else None
    worst = max(
        (c.max_abs_err["out"] for case in cases for c in case.candidates.values() if c.max_abs_err), default=math.nan
    )
    baseline = max(case.bf16_reference_err["out"] for case in cases)
    summary = (
        f"attention: parity {'PASS' if passed else 'FAIL'} ({', '.join(CANDIDATES)} on {len(cases)} head layouts; "
        f"worst output error {worst:.2e}, bf16 written-out {baseline:.2e}"
        f"{'' if HAS_FLASH_ATTN else '; flash_attn not installed'}); "
        + (
            f"flash SDPA fwd+bwd {timing.tflops:.3g} TFLOP/s at {timing.shape}"
            if timing
            else "flash SDPA not timed: the backend refused these inputs"
        )
    )
    return AttentionResult(cases=cases, timing=timing, passed=passed), summary


def check_training(
    recipe: TrainConfig, device: torch.device, dtype: torch.dtype, *, warmup: int, steps: int, peak: float | None
) -> tuple[TrainResult, str]:
    config = recipe.moe_config()
    positions = recipe.data.seq_len - 1
    torch.manual_seed(recipe.seed)
    with torch.device(device):
        model = OracleMoE(config)
    for param in model.parameters():  # parameters only: the rotary tables and router biases stay fp32
        param.data = param.data.to(dtype)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    opt = recipe.optimizer
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": opt.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
        lr=opt.lr,
        betas=opt.betas,
        eps=opt.eps,
        fused=device.type == "cuda",
    )
    micro, accumulation = recipe.batch.micro_batch, recipe.batch.gradient_accumulation
    tokens_BS = torch.randint(0, config.vocab_size, (accumulation, micro, positions + 1), device=device)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for ids_BS in tokens_BS:
            loss, out = model.loss(ids_BS[:, :-1], ids_BS[:, 1:])
            (loss / accumulation).backward()
            total += loss.detach() / accumulation
        if opt.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optimizer.step()
        if config.bias_balancing:
            model.update_router_biases(out.routing)
        losses.append(total.item())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed_repeats(step, device, warmup=warmup, repeats=steps)
    tokens_per_step = micro * accumulation * positions
    tokens_per_s = tokens_per_step / statistics.median(seconds)
    flops_per_token = model_flops_per_token(config, positions)
    probe = torch.empty(0, dtype=dtype, device=device)
    moe_path: Literal["grouped", "loop"] = (
        "grouped"
        if (grouped_mm_preferred(probe) if config.moe_impl == "auto" else config.moe_impl == "grouped")
        and grouped_mm_supported(probe)
        else "loop"
    )
    result = TrainResult(
        recipe=recipe.name,
        model=config.name,
        dtype=str(dtype).removeprefix("torch."),
        moe_path=moe_path,
        micro_batch=micro,
        gradient_accumulation=accumulation,
        positions=positions,
        tokens_per_step=tokens_per_step,
        warmup_steps=warmup,
        seconds_per_step=seconds,
        tokens_per_s=tokens_per_s,
        active_params=count_parameters(config).active,
        matmul_params=matmul_parameters(config),
        flops_per_token=flops_per_token,
        attention_flops_per_token=attention_flops_per_token(config, positions),
        model_tflops=flops_per_token * tokens_per_s / 1e12,
        mfu=mfu(flops_per_token, tokens_per_s, peak),
        losses=losses,
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )
    mfu_text = f"MFU {result.mfu:.1%}" if result.mfu is not None else "MFU n/a (no peak figure for this device)"
    summary = (
        f"train: {recipe.name} {result.dtype} {moe_path} experts, {steps} timed steps of {tokens_per_step} tokens: "
        f"{tokens_per_s:,.0f} tokens/s, {result.model_tflops:.3g} model TFLOP/s, {mfu_text}; "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    return result, summary


def environment(device: torch.device) -> Environment:
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    try:
        flash_attn: str | None = metadata.version("flash-attn") if HAS_FLASH_ATTN else None
    except metadata.PackageNotFoundError:
        flash_attn = "installed (version unknown)"
    peak = peak_bf16_flops(name) if cuda else None
    return Environment(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        device=name,
        capability=".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
        python=platform.python_version(),
        flash_attn=flash_attn,
        peak_bf16_tflops=None if peak is None else peak / 1e12,
    )


def run_check(smoke: bool) -> GpuCheck:
    device = torch.device("cpu" if smoke else "cuda")
    env = environment(device)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    record = GpuCheck(mode="cpu-smoke" if smoke else "gpu", started_utc=started, environment=env)
    print(f"gpu_check: {env.device}, torch {env.torch}, CUDA {env.cuda}, flash_attn {env.flash_attn or 'absent'}")
    recipe = load_train_config("oracle-mini" if smoke else "oracle-bench")
    peak = None if env.peak_bf16_tflops is None else env.peak_bf16_tflops * 1e12
    parts: dict[str, Callable[[], tuple[BaseModel, str]]] = {
        "moe_layer": lambda: check_moe_layer(device, smoke),
        "attention": lambda: check_attention(device, smoke, recipe),
        "train": lambda: check_training(
            recipe,
            device,
            torch.float32 if smoke else torch.bfloat16,
            warmup=1 if smoke else 2,
            steps=2 if smoke else 6,
            peak=peak,
        ),
    }
    start = time.perf_counter()
    for name, part in parts.items():
        began = time.perf_counter()
        try:
            result, summary = part()
        except Exception as exc:  # one part's failure must not lose the others' figures from the one GPU run
            record.errors[name] = f"{type(exc).__name__}: {exc}"
            summary = f"{name}: FAILED ({record.errors[name].splitlines()[0]})"
        else:
            setattr(record, name, result)
        record.part_seconds[name] = time.perf_counter() - began
        print(f"{summary} [{record.part_seconds[name]:.1f} s]", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record.seconds_total = time.perf_counter() - start
    record.passed = (
        not record.errors
        and record.attention is not None
        and record.attention.passed
        and record.train is not None
        and all(math.isfinite(loss) for loss in record.train.losses)
    )
    return record


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="the JSON record (default: $OUT/gpu_check.json, or ./)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every part at tiny sizes on the CPU")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            f"gpu_check: refused: no CUDA device (torch {torch.__version__}); run it on a GPU machine, "
            "or pass --cpu-smoke to exercise its logic at tiny sizes on the CPU",
            file=sys.stderr,
        )
        return 2
    record = run_check(smoke=args.cpu_smoke)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    verdict = "passed" if record.passed else f"FAILED ({', '.join(record.errors) or 'see the parts above'})"
    print(f"gpu_check: {verdict} in {record.seconds_total:.1f} s; wrote {out}")
    return 0 if record.passed else 1


if __name__ == "__main__":
    sys.exit(main())
