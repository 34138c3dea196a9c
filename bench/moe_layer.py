"""Benchmark: forward+backward of one MoE layer, the grouped-GEMM path against the reference per-expert loop.

Both paths run on the same weights and inputs in the same process, interleaved, so the ratio is robust to a
noisy shared machine. CPU case (always): fp32, hidden 256, expert FFN 512, 64 experts, top-2, 4096 tokens.
GPU case (when CUDA is available): bf16, 16,384 tokens, hidden 2048, expert FFN 1024, 64 experts, top-2, with
TFLOP/s for the grouped path, the loop and a dense matmul chain of the same FLOPs.

Usage: python bench/moe_layer.py [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from oracle.moe850b.config import MoEConfig
from oracle.moe850b.moe import MoE


def layer_config(hidden: int, ffn: int, experts: int, top_k: int, impl: str) -> MoEConfig:
    return MoEConfig(
        name="bench-layer",
        vocab_size=8,
        hidden_size=hidden,
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        head_dim=8,
        context_length=8,
        n_experts=experts,
        top_k=top_k,
        expert_hidden_size=ffn,
        moe_impl=impl,  # type: ignore[arg-type]
    )


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def moe_step(layer: MoE, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        out.y_BSD.backward(torch.ones_like(out.y_BSD))

    return step


def dense_step(tokens: int, hidden: int, ffn: int, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """The same matmul FLOPs as the experts (gate+up, down; forward and backward) with no routing at all."""
    w13 = torch.randn(2 * ffn, hidden, dtype=dtype, device=device, requires_grad=True)
    w2 = torch.randn(hidden, ffn, dtype=dtype, device=device, requires_grad=True)
    x = torch.randn(tokens, hidden, dtype=dtype, device=device, requires_grad=True)

    def step() -> None:
        h = x @ w13.t()
        y = h[:, :ffn] @ w2.t()
        y.backward(torch.ones_like(y))

    return step


def run_case(
    name: str, device: torch.device, dtype: torch.dtype, tokens: int, hidden: int, ffn: int, repeats: int
) -> dict[str, object]:
    experts, top_k = 64, 2
    torch.manual_seed(0)
    grouped = MoE(layer_config(hidden, ffn, experts, top_k, "grouped")).to(device=device, dtype=dtype)
    loop = MoE(layer_config(hidden, ffn, experts, top_k, "loop")).to(device=device, dtype=dtype)
    loop.load_state_dict(grouped.state_dict())
    x = torch.randn(1, tokens, hidden, dtype=dtype, device=device)
    steps = {"grouped": moe_step(grouped, x), "loop": moe_step(loop, x)}
    if device.type == "cuda":
        steps["dense"] = dense_step(tokens * top_k, hidden, ffn, dtype, device)
    for step in steps.values():  # warm-up
        step()
        step()
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            times[key].append(timed(step, device))
    medians = {key: statistics.median(values) for key, values in times.items()}
    flops = 18 * tokens * top_k * hidden * ffn  # 3 GEMMs of 2·(T·k)·D·F, forward + 2× backward
    result: dict[str, object] = {
        "case": name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "tokens": tokens,
        "hidden": hidden,
        "expert_ffn": ffn,
        "experts": experts,
        "top_k": top_k,
        "seconds_median": medians,
        "tflops": {key: flops / seconds / 1e12 for key, seconds in medians.items()},
        "ratio_grouped_over_loop": medians["loop"] / medians["grouped"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()

    results = [run_case("cpu", torch.device("cpu"), torch.float32, 4096, 256, 512, args.repeats)]
    if torch.cuda.is_available():
        results.append(run_case("gpu", torch.device("cuda"), torch.bfloat16, 16384, 2048, 1024, args.repeats))
    for result in results:
        seconds = result["seconds_median"]
        tflops = result["tflops"]
        assert isinstance(seconds, dict)
        assert isinstance(tflops, dict)
        timings = ", ".join(f"{key} {seconds[key] * 1e3:.1f} ms ({tflops[key]:.3f} TFLOP/s)" for key in seconds)
        print(
            f"moe_layer[{result['case']}] {result['device']} {result['dtype']} T={result['tokens']} "
            f"D={result['hidden']} F={result['expert_ffn']} E={result['experts']} top-{result['top_k']}: {timings}"
        )
        print(f"moe_layer[{result['case']}] ratio grouped/loop = {result['ratio_grouped_over_loop']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
