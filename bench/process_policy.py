"""Benchmark: what the runtime layer's audit hooks (guards/process_policy.py) cost a training step and serving.

Each case runs the real command twice per repeat, interleaved: with the hooks (`python -m oracle …`, the entry
point every job and pod starts, which installs them first) and without them (the same command through
`oracle_cli.app.main`, bypassing that entry point: the only way to run it without the hooks, used here as the baseline).

- training: `oracle train` on the oracle-mini recipe (one process, DeepSpeed ZeRO-3 on CPU, the local-training
  override of a development trust root), `--steps` steps; the median tokens/s of the steps after the first two,
  from the run's metrics.jsonl (start-up excluded);
- serving: `oracle serve` on a signed mini checkpoint; `--requests` sequential completions of `--max-tokens` tokens
  each, after one warm-up request; completion tokens per second of wall time.

Printed: the ratio hooks/baseline of the step time and of the serving throughput (target: a training step under 2 %
slower), medians over `--repeats`.

Usage: python bench/process_policy.py [--repeats N] [--steps N] [--requests N] [--max-tokens N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serve.fixtures import make_served_checkpoint  # noqa: E402
from tests.train.conftest import local_training, make_checkout, make_local_trust, recipe, write_corpus  # noqa: E402
from tests.trust import make_trust, set_session_trust  # noqa: E402

WITH_HOOKS = [sys.executable, "-m", "oracle"]
WITHOUT_HOOKS = [sys.executable, "-c", "import sys; sys.argv[0] = 'oracle'; from oracle_cli.app import main; main()"]
MODES = {"hooks": WITH_HOOKS, "baseline": WITHOUT_HOOKS}


def training_run(root: Path, config: Path, env: dict[str, str], prefix: list[str], name: str) -> float:
    """Median tokens/s of one `oracle train` run (steps after the first two)."""
    run_env = {**os.environ, **env, "DS_ACCELERATOR": "cpu", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    run_env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*prefix, "train", "--config", str(config), "--run-name", name],
        cwd=root,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"training ({name}) failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    lines = (root / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return float(statistics.median(json.loads(line)["tokens_per_s"] for line in lines[2:]))


def serving_run(work: Path, prefix: list[str], env: dict[str, str], requests: int, max_tokens: int) -> float:
    """Completion tokens per second of `requests` sequential completions (after one warm-up)."""
    if not (work / "root").exists():
        make_served_checkpoint(work)
    checkpoint = next((work / "runs" / "serve-test").glob("step-*"))
    log = work / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*prefix, "serve", "--checkpoint", str(checkpoint), "--port", "0", "--threads", "1"],
            cwd=work / "root",
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")
            for line in log.read_text(errors="replace").splitlines():
                if "Uvicorn running on http://" in line:
                    url = "http://" + line.split("http://", 1)[1].split()[0]
            time.sleep(0.1)
        body = {"model": "oracle-mini", "prompt": "The quick brown fox", "max_tokens": max_tokens, "temperature": 0}
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        httpx.post(f"{url}/v1/completions", json=body, timeout=300).raise_for_status()  # warm-up
        tokens, start = 0, time.perf_counter()
        for _ in range(requests):
            answer = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
            answer.raise_for_status()
            tokens += int(answer.json()["usage"]["completion_tokens"])
        return tokens / (time.perf_counter() - start)
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {"training": {}, "serving": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        trust = make_trust(base / "trust")
        set_session_trust(trust)
        local = make_local_trust(base / "local-trust", trust)
        corpus = write_corpus(base / "corpus", sequences=max(64, 4 * args.steps))
        checkout = make_checkout(base)
        config = recipe(
            base / "mini.yaml",
            corpus,
            parallelism__data=1,
            batch__global_batch=4,
            batch__micro_batch=4,
            batch__gradient_accumulation=1,
            schedule__warmup_steps=1,
            schedule__total_steps=args.steps,
            checkpoint__interval=10**6,
        )
        train_env = local_training(checkout, local)
        serve_dir = base / "serve"
        serve_dir.mkdir()
        for repeat in range(args.repeats):
            for mode, prefix in MODES.items():
                rate = training_run(checkout, config, train_env, prefix, f"{mode}-{repeat}")
                results["training"].setdefault(mode, []).append(rate)
                print(f"training {mode} #{repeat}: {rate:.0f} tokens/s", flush=True)
            for mode, prefix in MODES.items():
                rate = serving_run(serve_dir, prefix, trust.env, args.requests, args.max_tokens)
                results["serving"].setdefault(mode, []).append(rate)
                print(f"serving {mode} #{repeat}: {rate:.1f} tokens/s", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for case, modes in results.items():
        hooks, baseline = statistics.median(modes["hooks"]), statistics.median(modes["baseline"])
        summary[case] = {"hooks": hooks, "baseline": baseline, "ratio": hooks / baseline, "runs": modes}
    step = summary["training"]["baseline"] / summary["training"]["hooks"]  # time per step, hooks / baseline
    print(
        f"training step time, hooks / baseline: {step:.4f}x ({(step - 1) * 100:+.2f} %; target < +2 %); "
        f"serving throughput, hooks / baseline: {summary['serving']['ratio']:.4f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({**summary, "step_time_ratio": step}, indent=2) + "\n")


if __name__ == "__main__":
    main()
