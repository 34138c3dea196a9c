"""Benchmark: training throughput of `oracle train` (DeepSpeed ZeRO-3) for the mini and bench presets, on 1 and 2
CPU processes (gloo), and on one GPU (bf16, grouped experts) when one is present.

Every case runs the real entry point, `oracle train`, inside a throwaway attested checkout with the environment of
a submitted job (as tests/train do), on a packed corpus written for it; tokens/s is the median of the steps after
the first two (start-up, shm-op build and allocator warm-up excluded), read from the run's metrics.jsonl. Ratios
printed: 2 processes / 1 process for each preset (the data-parallel scaling on this 2-core machine, measured in the
same run) and, on a GPU, the model FLOPs utilisation (6 x active parameters x tokens/s over the GPU's bf16 peak).

On CPU the bench preset runs with short sequences (seq_len 129) and one sequence per process: at its full 2048
tokens one step takes minutes here. Its training state (bf16 weights and gradients, fp32 master weights and two Adam
moments: 16 bytes x 1.02 B parameters = 16.3 GB, whichever way ZeRO splits it over processes on one host) does not fit
a 24 GiB machine: measured, the process is killed by the OOM killer. The case is skipped, saying so, when the
machine's memory is below twice that state.

Usage: python bench/train_step.py [--steps N] [--json FILE] [--skip-bench-preset]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oracle.moe850b.config import load_config  # noqa: E402
from oracle.moe850b.params import count_parameters  # noqa: E402
from tests.train.conftest import (  # noqa: E402
    local_training,
    make_checkout,
    make_local_trust,
    recipe,
    start_training,
    write_corpus,
)
from tests.trust import TestTrust, make_trust, set_session_trust  # noqa: E402

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM


def run_case(
    base: Path, preset: str, *, world: int, steps: int, seq_len: int, micro: int, device: str, trust: TestTrust
) -> dict[str, Any]:
    model = load_config(preset)
    work = Path(tempfile.mkdtemp(dir=base))
    corpus = write_corpus(
        work / "corpus",
        sequences=max(64, 4 * micro * world * steps),
        seq_len=seq_len,
        vocab=min(model.vocab_size, 4096),
    )
    checkout = make_checkout(work)
    path = recipe(
        work / f"{preset}.yaml",
        corpus,
        name=preset,
        model=preset,
        data__seq_len=seq_len,
        parallelism__data=world,
        batch__global_batch=micro * world,
        batch__micro_batch=micro,
        batch__gradient_accumulation=1,
        schedule__warmup_steps=1,
        schedule__total_steps=steps,
        checkpoint__interval=10**6,
    )
    job = start_training(
        checkout, ["--config", str(path)], world=world, env=local_training(checkout, trust), cpu=device == "cpu"
    )
    codes = job.wait(timeout=3600)
    if codes != [0] * world:
        raise SystemExit(f"{preset} x{world}: training failed (exit codes {codes})\n{job.output()[-3000:]}")
    lines = (checkout / "runs" / preset / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["tokens_per_s"] for line in lines][2:]
    active = count_parameters(model).active
    tokens_per_s = statistics.median(rates)
    return {
        "preset": preset,
        "processes": world,
        "device": device,
        "seq_len": seq_len,
        "global_batch": micro * world,
        "steps_measured": len(rates),
        "tokens_per_s": tokens_per_s,
        "model_tflops": 6 * active * tokens_per_s / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-bench-preset", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        # a development trust root whose floor allows the local-training override (a job's record would need a
        # scheduler that knows the job: the benchmark trains as tests/train do)
        session = make_trust(base / "trust")
        set_session_trust(session)
        trust = make_local_trust(base / "local-trust", session)
        if torch.cuda.is_available():
            result = run_case(
                base, "oracle-bench", world=1, steps=args.steps, seq_len=2049, micro=8, device="cuda", trust=trust
            )
            result["mfu"] = result["model_tflops"] * 1e12 / H100_BF16_PEAK
            results.append(result)
        cases = [("oracle-mini", 65, 4)]
        state = 16 * count_parameters(load_config("oracle-bench")).total
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if args.skip_bench_preset:
            pass
        elif memory < 2 * state:
            print(
                f"oracle-bench on CPU skipped: its training state is {state / 1e9:.1f} GB, this machine has "
                f"{memory / 2**30:.0f} GiB of memory"
            )
        else:
            cases.append(("oracle-bench", 129, 1))
        for preset, seq_len, micro in cases:
            for world in (1, 2):
                results.append(
                    run_case(
                        base,
                        preset,
                        world=world,
                        steps=args.steps,
                        seq_len=seq_len,
                        micro=micro,
                        device="cpu",
                        trust=trust,
                    )
                )
    for r in results:
        extra = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
        print(
            f"{r['preset']:>12} {r['device']} x{r['processes']}: {r['tokens_per_s']:9.0f} tokens/s "
            f"({r['model_tflops']:.3f} model TFLOP/s{extra}), seq {r['seq_len']}, batch {r['global_batch']}"
        )
    for preset in {r["preset"] for r in results if r["device"] == "cpu"}:
        one, two = (
            next(r for r in results if (r["preset"], r["processes"], r["device"]) == (preset, n, "cpu")) for n in (1, 2)
        )
        print(f"{preset}: 2 processes / 1 process = {two['tokens_per_s'] / one['tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
