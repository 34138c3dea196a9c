"""Benchmark: `oracle serve` (continuous batching over a slot KV cache) against a plain generation loop without the
KV cache, on the same weights, in the same run.

A tiny servable checkpoint (the mini preset with random weights, tests/serve/fixtures.py) is made on the spot and
served by the real entry point, `python -m oracle serve --max-concurrency 8`, in a subprocess; requests go through
the `openai` SDK as streaming completions (`stream=True`, `stream_options={"include_usage": True}`, greedy). The
prompts are token ids (so every case sees exactly `--prompt-tokens` prompt tokens), cut from tokenized text at
different offsets; a warm-up request per candidate keeps only prompts whose greedy continuation runs to `max_tokens`
(finish_reason "length"), so every request produces the same number of tokens. Completion tokens are counted from
the usage chunk, and finish reasons are reported.

Cases, interleaved within each repeat (the order rotates from one repeat to the next):

- no-cache loop (the baseline): in this process, one sequence; for every new token the whole sequence so far goes
  through `model(ids)`, greedy argmax.
- cached loop: in this process, `model.generate(ids, max_tokens, temperature=0)` (the model's own KV cache).
- server, 1 stream: `--requests` streaming requests one after another.
- server, 8 streams: 8 threads, each sending `--requests` streaming requests one after another, all at once.
- engine, 1 and 8 streams (a reference that separates the engine from HTTP): the server's own `Engine`, loaded in
  this process as `oracle serve` loads it, with threads submitting straight to it in the same pattern.

tokens/s is completion tokens over wall time: for the server cases from the first request sent to the last stream
ended (HTTP, SSE and the client's parsing included), for the loops from the first forward pass to the last. Each
figure is the median over the repeats; ratios are taken between medians of the same run (the per-repeat range is
printed too). Latency (request sent to the stream's end) and time to first token (request sent to the first chunk
carrying text) are per request, pooled over the repeats: p50 and p99. During the server cases /metrics is polled
for oracle_serve_running_requests (does the engine really batch?) and the CPU time of server and client is taken.
The script also checks that the cached and uncached loops produce the same tokens, and that every text, batched or
not, equals its prompt's text when it was served alone.

Threads: the client runs on the same machine as the server. By default the server (OMP_NUM_THREADS) and the
in-process loops (torch.set_num_threads) use one intra-op thread each, leaving the other core of a 2-core machine to
the client; `--threads 0` keeps torch's default (all cores), where OpenMP threads of a tiny model spin against the
client's threads and a busy neighbour can slow a forward pass a hundredfold.

Usage: python bench/serve.py [--repeats N] [--requests N] [--loop-runs N] [--max-tokens N] [--prompt-tokens N]
                             [--streams N] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oracle.moe850b.model import OracleMoE  # noqa: E402
from oracle.moe850b.weights import load_checkpoint  # noqa: E402
from oracle.serve.engine import Delta, Engine, Event, Finished, SamplingParams  # noqa: E402
from oracle.serve.loading import ServeOptions, check_servable, load_served_model  # noqa: E402
from oracle.tokenization.tokenizer import load_tokenizer  # noqa: E402
from tests.serve.fixtures import TEXTS, RunningServer, make_served_checkpoint, start_server  # noqa: E402

CASES = (
    "no-cache loop",
    "cached loop",
    "engine 1 stream",
    "engine N streams",
    "server 1 stream",
    "server N streams",
)


@dataclass
class RequestResult:
    latency_s: float
    ttft_s: float | None  # None: no chunk carried text
    completion_tokens: int
    finish_reason: str | None
    text: str
    prompt: int = 0  # index into the prompts


@dataclass
class CaseRun:
    case: str
    repeat: int
    tokens: int
    seconds: float
    requests: list[RequestResult] = field(default_factory=list)
    running_samples: list[float] = field(default_factory=list)  # oracle_serve_running_requests during the case
    server_cpu_s: float | None = None  # CPU time the server process used during the case
    client_cpu_s: float | None = None  # CPU time this process (the client threads) used during the case

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


# --- the server side -----------------------------------------------------------------------------------------------


def stream_request(
    client: openai.OpenAI, model: str, prompts: list[list[int]], index: int, max_tokens: int
) -> RequestResult:
    prompt = prompts[index]
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    completion_tokens, finish = 0, None
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.text:
                if first is None:
                    first = time.perf_counter()
                pieces.append(choice.text)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    ttft = None if first is None else first - start
    return RequestResult(end - start, ttft, completion_tokens, finish, "".join(pieces), index)


class RunningSampler:
    """Polls /metrics for oracle_serve_running_requests every `interval` seconds while it runs."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        self.url, self.interval = url + "/metrics", interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    text = response.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("oracle_serve_running_requests "):
                    self.samples.append(float(line.split()[1]))

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def server_streams(
    server: RunningServer, model: str, prompts: list[list[int]], *, streams: int, requests: int, max_tokens: int
) -> tuple[float, list[RequestResult], list[float]]:
    """`streams` threads, each sending `requests` requests one after another (request k of stream i uses prompt
    i + k, modulo the number of prompts)."""
    clients = [openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) for _ in range(streams)]
    barrier = threading.Barrier(streams + 1)

    def worker(index: int) -> list[RequestResult]:
        barrier.wait()
        n = len(prompts)
        return [stream_request(clients[index], model, prompts, (index + k) % n, max_tokens) for k in range(requests)]

    with RunningSampler(server.url) as sampler, ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(worker, i) for i in range(streams)]
        barrier.wait()
        start = time.perf_counter()
        results = [r for future in futures for r in future.result()]
        seconds = time.perf_counter() - start
    for client in clients:
        client.close()
    return seconds, results, sampler.samples


# --- the engine alone, in this process (no HTTP) --------------------------------------------------------------------


def engine_request(engine: Engine, prompts: list[list[int]], index: int, max_tokens: int) -> RequestResult:
    done = threading.Event()
    pieces: list[str] = []
    first: list[float] = []
    finished: list[Finished] = []

    def sink(event: Event) -> None:  # called from the engine thread
        if isinstance(event, Delta):
            if not first:
                first.append(time.perf_counter())
            pieces.append(event.text)
            return
        if isinstance(event, Finished):
            finished.append(event)
        done.set()

    start = time.perf_counter()
    engine.submit(prompts[index], SamplingParams(max_tokens=max_tokens, temperature=0.0), sink)
    done.wait()
    end = time.perf_counter()
    if not finished:
        raise RuntimeError("the engine failed a request")
    ttft = first[0] - start if first else None
    return RequestResult(end - start, ttft, finished[0].completion_tokens, finished[0].reason, "".join(pieces), index)


def engine_streams(
    engine: Engine, prompts: list[list[int]], *, streams: int, requests: int, max_tokens: int
) -> tuple[float, list[RequestResult]]:
    """As `server_streams`, with each thread submitting straight to the server's engine."""
    barrier = threading.Barrier(streams + 1)

    def worker(index: int) -> list[RequestResult]:
        barrier.wait()
        n = len(prompts)
        return [engine_request(engine, prompts, (index + k) % n, max_tokens) for k in range(requests)]

    with ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(worker, i) for i in range(streams)]
        barrier.wait()
        start = time.perf_counter()
        results = [r for future in futures for r in future.result()]
        seconds = time.perf_counter() - start
    return seconds, results


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the in-process loops -------------------------------------------------------------------------------------------


def no_cache_loop(model: OracleMoE, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding without a cache: the whole sequence goes through the model for every new token."""
    ids_1S = torch.tensor([prompt], dtype=torch.long)
    for _ in range(max_tokens):
        next_1 = model(ids_1S).logits_BSV[:, -1].argmax(dim=-1)
        ids_1S = torch.cat([ids_1S, next_1[:, None]], dim=1)
    return [int(i) for i in ids_1S[0, len(prompt) :]]


def cached_loop(model: OracleMoE, prompt: list[int], max_tokens: int) -> list[int]:
    out_1S = model.generate(torch.tensor([prompt], dtype=torch.long), max_tokens, temperature=0.0)
    return [int(i) for i in out_1S[0, len(prompt) :]]


def timed_loop(
    loop: Callable[[OracleMoE, list[int], int], list[int]],
    model: OracleMoE,
    prompts: list[list[int]],
    runs: int,
    max_tokens: int,
) -> tuple[float, int, list[list[int]]]:
    outputs = []
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(runs):
            outputs.append(loop(model, prompts[k % len(prompts)], max_tokens))
    seconds = time.perf_counter() - start
    return seconds, sum(len(o) for o in outputs), outputs


# --- reporting ------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(runs: list[CaseRun]) -> dict[str, Any]:
    rates = [r.tokens_per_s for r in runs]
    requests = [q for r in runs for q in r.requests]
    out: dict[str, Any] = {"tokens_per_s_median": statistics.median(rates), "tokens_per_s_runs": rates}
    if requests:
        latencies = [q.latency_s for q in requests]
        ttfts = [q.ttft_s for q in requests if q.ttft_s is not None]
        reasons: dict[str, int] = {}
        for q in requests:
            reasons[str(q.finish_reason)] = reasons.get(str(q.finish_reason), 0) + 1
        out |= {
            "requests": len(requests),
            "latency_p50_s": percentile(latencies, 50),
            "latency_p99_s": percentile(latencies, 99),
            "ttft_p50_s": percentile(ttfts, 50) if ttfts else None,
            "ttft_p99_s": percentile(ttfts, 99) if ttfts else None,
            "mean_completion_tokens": statistics.fmean(q.completion_tokens for q in requests),
            "finish_reasons": reasons,
        }
    server_cores = [r.server_cpu_s / r.seconds for r in runs if r.server_cpu_s is not None]
    client_cores = [r.client_cpu_s / r.seconds for r in runs if r.client_cpu_s is not None]
    if server_cores and client_cores:
        out |= {
            "server_cores_busy": statistics.median(server_cores),
            "client_cores_busy": statistics.median(client_cores),
        }
    samples = [s for r in runs for s in r.running_samples]
    if samples:
        busy = [s for s in samples if s > 0]
        out |= {"running_requests_max": max(samples), "running_requests_mean_when_busy": statistics.fmean(busy or [0])}
    return out


def tokenized_prompts(tokenizer_dir: Path, length: int, count: int) -> list[list[int]]:
    """`count` prompts of `length` token ids, cut from the tokenized fixture texts at different offsets."""
    tokenizer = load_tokenizer(tokenizer_dir)
    ids: list[int] = []
    while len(ids) < length + 31 * count:
        ids += tokenizer.encode("\n".join(TEXTS), add_special_tokens=False).ids
    return [ids[31 * k : 31 * k + length] for k in range(count)]


def choose_prompts(
    server: RunningServer, model: str, candidates: list[list[int]], count: int, max_tokens: int
) -> tuple[list[list[int]], list[str]]:
    """Up to `count` prompts whose greedy continuation runs to max_tokens (one request each, which also warms the
    server up), and the text each produced as the only request in flight."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    prompts: list[list[int]] = []
    alone: list[str] = []
    reasons: list[str | None] = []
    for index in range(len(candidates)):
        result = stream_request(client, model, candidates, index, max_tokens)
        reasons.append(result.finish_reason)
        if result.finish_reason == "length":
            prompts.append(candidates[index])
            alone.append(result.text)
        if len(prompts) == count:
            break
    client.close()
    if not prompts:
        raise SystemExit(f"no prompt ran to max_tokens (finish reasons {reasons})")
    print(f"prompts: {len(prompts)} of {len(reasons)} candidates run to max_tokens (finish reasons {reasons})")
    return prompts, alone


def server_case(
    server: RunningServer, model: str, prompts: list[list[int]], case: str, repeat: int, **kwargs: int
) -> CaseRun:
    server_before, client_before = process_cpu_s(server.process.pid), time.process_time()
    seconds, requests, samples = server_streams(server, model, prompts, **kwargs)
    client_cpu = time.process_time() - client_before
    server_after = process_cpu_s(server.process.pid)
    server_cpu = None if server_before is None or server_after is None else server_after - server_before
    tokens = sum(r.completion_tokens for r in requests)
    return CaseRun(case, repeat, tokens, seconds, requests, samples, server_cpu, client_cpu)


def report(
    runs: list[CaseRun], alone: list[str], loop_outputs: dict[str, list[list[int]]], args: argparse.Namespace
) -> dict[str, Any]:
    streams = args.streams
    label = {c: c.replace(" N ", f" {streams} ") for c in CASES}
    table = {label[c]: summary([r for r in runs if r.case == c]) for c in CASES}
    print(
        f"\noracle-mini, prompt {args.prompt_tokens} tokens, max_tokens {args.max_tokens}, greedy; medians of "
        f"{args.repeats} interleaved repeats; {torch.get_num_threads()} intra-op thread(s)"
    )
    for name, r in table.items():
        line = f"{name:>18}: {r['tokens_per_s_median']:8.1f} tokens/s"
        if "requests" in r:
            line += (
                f"  latency p50 {r['latency_p50_s'] * 1e3:5.0f} ms p99 {r['latency_p99_s'] * 1e3:5.0f} ms"
                f"  TTFT p50 {(r['ttft_p50_s'] or 0) * 1e3:5.1f} ms p99 {(r['ttft_p99_s'] or 0) * 1e3:5.1f} ms"
                f"  ({r['requests']} requests, {r['mean_completion_tokens']:.1f} tokens each, {r['finish_reasons']})"
            )
        if "server_cores_busy" in r:
            line += f"  CPU: server {r['server_cores_busy']:.2f} cores, client {r['client_cores_busy']:.2f}"
        if "running_requests_max" in r:
            line += (
                f"  running requests: max {r['running_requests_max']:.0f}, "
                f"mean when busy {r['running_requests_mean_when_busy']:.1f}"
            )
        print(line)

    pairs = [
        ("server 1 stream", "no-cache loop"),
        ("server N streams", "server 1 stream"),
        ("server N streams", "no-cache loop"),
        ("cached loop", "no-cache loop"),
        ("server 1 stream", "cached loop"),
        ("engine N streams", "engine 1 stream"),
        ("server 1 stream", "engine 1 stream"),
        ("server N streams", "engine N streams"),
    ]
    ratios: dict[str, dict[str, Any]] = {}
    for top, bottom in pairs:
        name = f"{label[top]} / {label[bottom]}"
        of_medians = table[label[top]]["tokens_per_s_median"] / table[label[bottom]]["tokens_per_s_median"]
        rate = {(r.case, r.repeat): r.tokens_per_s for r in runs}
        per_repeat = [rate[top, k] / rate[bottom, k] for k in range(args.repeats)]
        ratios[name] = {"ratio_of_medians": of_medians, "per_repeat": per_repeat}
        print(f"{name}: {of_medians:.2f}x (per repeat {min(per_repeat):.2f}-{max(per_repeat):.2f}x)")

    # correctness on the way: the same greedy tokens with and without the cache, the same text batched or alone
    agree = sum(a == b for a, b in zip(loop_outputs["no-cache loop"], loop_outputs["cached loop"], strict=True))
    print(f"cached loop == no-cache loop (token ids): {agree}/{len(loop_outputs['cached loop'])} generations")
    for case in CASES[2:]:
        texts = [(r.prompt, r.text) for run in runs if run.case == case for r in run.requests]
        same = sum(text == alone[index] for index, text in texts)
        print(f"{label[case]}: {same}/{len(texts)} texts equal the prompt's text when served alone")
    return {"summary": table, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=6, help="requests per stream per repeat")
    parser.add_argument("--loop-runs", type=int, default=2, help="generations per in-process loop per repeat")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of server and loops (0: default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server subprocess inherits it
        torch.set_num_threads(args.threads)
    max_tokens, streams = args.max_tokens, args.streams
    runs: list[CaseRun] = []
    loop_outputs: dict[str, list[list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        served = make_served_checkpoint(base)
        model = load_checkpoint(served.checkpoint).eval()
        for block in model.blocks():  # as the server does: no capacity dropping at inference
            block.moe.capacity_factor = None
        candidates = tokenized_prompts(served.tokenizer, args.prompt_tokens, 4 * streams)
        slots = max(streams, 8)
        # the server's own engine, loaded as `oracle serve` loads it, to run in this process without HTTP
        options = ServeOptions(served.checkpoint, served.root, served.tokenizer, max_batch=slots)
        engine = load_served_model(options, check_servable(options)).engine
        server = start_server(served, base / "server.log", "--max-concurrency", str(slots))
        try:
            with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
                name = client.models.list().data[0].id
            prompts, alone = choose_prompts(server, name, candidates, streams, max_tokens)
            server_streams(server, name, prompts, streams=streams, requests=1, max_tokens=max_tokens)  # warm-up
            engine_streams(engine, prompts, streams=streams, requests=1, max_tokens=max_tokens)
            timed_loop(no_cache_loop, model, prompts, 1, max_tokens)
            timed_loop(cached_loop, model, prompts, 1, max_tokens)
            for repeat in range(args.repeats):
                for offset in range(len(CASES)):
                    case = CASES[(repeat + offset) % len(CASES)]
                    if case in ("no-cache loop", "cached loop"):
                        loop = no_cache_loop if case == "no-cache loop" else cached_loop
                        seconds, tokens, outputs = timed_loop(loop, model, prompts, args.loop_runs, max_tokens)
                        loop_outputs[case] = outputs
                        runs.append(CaseRun(case, repeat, tokens, seconds))
                    else:
                        n = 1 if " 1 " in case else streams
                        sizes = {"streams": n, "requests": args.requests, "max_tokens": max_tokens}
                        if case.startswith("server"):
                            runs.append(server_case(server, name, prompts, case, repeat, **sizes))
                        else:
                            seconds, requests = engine_streams(engine, prompts, **sizes)
                            tokens = sum(r.completion_tokens for r in requests)
                            runs.append(CaseRun(case, repeat, tokens, seconds, requests))
                    print(f"repeat {repeat + 1}/{args.repeats} {case:>16}: {runs[-1].tokens_per_s:8.1f} tokens/s")
        finally:
            engine.stop()
            print(f"server stopped (exit code {server.stop()}; -15: uvicorn re-raises SIGTERM once drained)")

    results = report(runs, alone, loop_outputs, args)
    if args.json:
        config = {**vars(args), "json": str(args.json), "torch": torch.__version__, "threads": torch.get_num_threads()}
        runs_raw = [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in runs]
        args.json.write_text(json.dumps({"config": config, **results, "runs": runs_raw}, indent=2) + "\n")


if __name__ == "__main__":
    main()
