"""Benchmark: checkpoints of a model of a few hundred million parameters, ZeRO-3 on 2 CPU processes (gloo).

Three measurements, all in one run:

1. `oracle train` itself (the real entry point, in a throwaway attested checkout with the local-training override of
   a development trust root, as tests/train do): 2 steps, saved at step 2, then `--resume auto` of the same run
   (every rank hashes its own files, DeepSpeed loads its partitions). The resident memory of each rank is sampled
   from /proc every 10 ms (RssAnon: allocated memory; file pages of memory maps are page cache); the save window is
   from the moment the partial folder appears to the moment the sealed one does. Reported: each rank's peak during
   the save over its resident memory just before it, against the size of that rank's own part of the weights.
2. The save itself against the save it replaced, in the same 2-process job (this script in `--worker` mode, after
   the same runtime check `oracle train` makes): each rank writing its own part (oracle.moe850b.partitioned.own_part
   + safetensors) against the former consolidated save (every parameter gathered onto rank 0, one at a time, then
   one model.safetensors written by rank 0; reproduced here only as the baseline). Time and peak memory over the
   start of each, per rank.
3. `oracle export --format hf` of the trained checkpoint (in this process): peak memory over its start against the
   largest output shard, and time.

Usage: python bench/checkpoint_scale.py [--layers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss(pid: int | str = "self") -> int:
    """Resident anonymous memory (RssAnon): what the process allocated. File pages a memory map touched (safetensors'
    lazy reads) are page cache the kernel can drop at any time, and are not counted."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Peak:
    """The highest resident memory of this process while the block runs, over its value at the start."""

    def __enter__(self) -> Peak:
        self.start = self.peak = rss()
        self.began = time.perf_counter()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.began
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def bench_config(layers: int) -> dict[str, Any]:
    """~75 M parameters per layer plus 67 M of embeddings and head: 4 layers are about 0.37 B parameters."""
    return {
        "name": "oracle-ckpt-bench",
        "model_type": "oracle_moe",
        "vocab_size": 32768,
        "hidden_size": 1024,
        "n_layers": layers,
        "n_heads": 8,
        "n_kv_heads": 4,
        "context_length": 256,
        "rope_theta": 10000.0,
        "tie_embeddings": False,
        "n_experts": 16,
        "top_k": 2,
        "expert_hidden_size": 1408,
        "shared_expert_hidden_size": 1408,
        "capacity_factor": None,
        "router_aux_loss_coef": 0.01,
        "router_z_loss_coef": 0.001,
    }


# --- 2: the worker (one rank of a 2-process job) -----------------------------------------------------------------
def worker(recipe_path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from guards.runtime import require_training_allowed
    from oracle.moe850b.partitioned import own_part
    from oracle.train.config import load_train_config
    from oracle.train.distributed import init_process_group, placement_from_env
    from oracle.train.trainer import _gathered, initialise_engine

    require_training_allowed()  # the runtime check `oracle train` makes first (here: the local-training override)
    config = load_train_config(recipe_path)
    placement = placement_from_env()
    init_process_group(placement)
    _, model = initialise_engine(config, placement)
    rank, world = placement.rank, placement.world_size
    folder = out / "worker"
    folder.mkdir(exist_ok=True)
    torch.distributed.barrier()

    with Peak() as own:  # this change: every rank writes its own part
        _, parts = own_part(model, rank=rank, world_size=world, zero3=True)
        save_file(parts, str(folder / f"part-{rank}.safetensors"))
        shard = sum(t.numel() * t.element_size() for t in parts.values())
        parts.clear()
        torch.distributed.barrier()
    torch.distributed.barrier()

    with Peak() as gathered:  # the former save: everything gathered onto rank 0, written by rank 0
        state: dict[str, torch.Tensor] = {}
        for name, param in model.named_parameters():
            with _gathered([param], enabled=True):
                if rank == 0:
                    state[name] = param.detach().to("cpu", copy=True).contiguous()
        if rank == 0:
            save_file(state, str(folder / "consolidated.safetensors"))
        whole = sum(t.numel() * t.element_size() for t in state.values())
        state.clear()
        torch.distributed.barrier()
    result = {
        "rank": rank,
        "own_part_bytes": shard,
        "own_save_s": own.seconds,
        "own_save_growth_bytes": own.growth,
        "consolidated_save_s": gathered.seconds,
        "consolidated_growth_bytes": gathered.growth,
        "consolidated_bytes_on_this_rank": whole,
    }
    (out / f"worker-{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


# --- 1 and 3 -------------------------------------------------------------------------------------------------------
def sample_job(job: Any, run: Path, step_dir: str) -> dict[str, Any]:
    """Resident memory of each rank every 10 ms while the job runs, and the save window (partial folder → sealed)."""
    pids = [p.pid for p in job.processes]
    samples: list[tuple[float, list[int]]] = []
    window: dict[str, float] = {}
    partial, final = run / f".partial-{step_dir}", run / step_dir
    while any(p.poll() is None for p in job.processes):
        now = time.perf_counter()
        samples.append((now, [rss(pid) for pid in pids]))
        if "start" not in window and partial.exists():
            window["start"] = now
        if "start" in window and "end" not in window and final.exists():
            window["end"] = now
        time.sleep(0.01)
    if set(window) != {"start", "end"}:
        raise SystemExit(f"the save window was not seen ({window}); the job's output:\n{job.output()[-3000:]}")
    before = [s for t, s in samples if t < window["start"]][-1]
    during = [s for t, s in samples if window["start"] <= t <= window["end"]]
    peaks = [max(s[r] for s in during) for r in range(len(pids))]
    return {
        "save_window_s": window["end"] - window["start"],
        "rss_before_save": before,
        "rss_peak_during_save": peaks,
        "growth_during_save": [peaks[r] - before[r] for r in range(len(pids))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    from hub.export import export_checkpoint
    from oracle.moe850b.config import parse_config
    from oracle.moe850b.params import count_parameters
    from oracle_base.weight_files import part_file
    from tests.train import conftest as fixtures
    from tests.trust import make_trust, set_session_trust

    spec = bench_config(args.layers)
    parameters = count_parameters(parse_config(json.dumps(spec), Path("bench.moe.json"))).total
    print(f"model: {parameters / 1e6:.0f} M parameters ({args.layers} layers, {spec['n_experts']} experts)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        session = make_trust(base / "trust")
        set_session_trust(session)
        trust = fixtures.make_local_trust(base / "local-trust", session)
        (base / "bench.moe.json").write_text(json.dumps(spec))
        corpus = fixtures.write_corpus(base / "corpus", sequences=64, seq_len=65, vocab=spec["vocab_size"])
        checkout = fixtures.make_checkout(base)
        path = fixtures.recipe(
            base / "bench.yaml",
            corpus,
            name="ckpt-bench",
            model=str(base / "bench.moe.json"),
            precision="fp32",
            data__seq_len=65,
            parallelism__data=2,
            batch__global_batch=2,
            batch__micro_batch=1,
            batch__gradient_accumulation=1,
            schedule__warmup_steps=1,
            schedule__total_steps=2,
            checkpoint__interval=2,
        )
        env = fixtures.local_training(checkout, trust)
        run = checkout / "runs" / "ckpt-bench"
        results: dict[str, Any] = {"parameters": parameters, "layers": args.layers}

        started = time.perf_counter()
        job = fixtures.start_training(checkout, ["--config", str(path)], env=env)
        results["train"] = sample_job(job, run, "step-00000002")
        if job.wait(timeout=3600) != [0, 0]:
            raise SystemExit(f"training failed:\n{job.output()[-3000:]}")
        results["train"]["wall_s"] = time.perf_counter() - started
        checkpoint = run / "step-00000002"
        results["train"]["own_part_file_bytes"] = [(checkpoint / part_file(r, 2)).stat().st_size for r in range(2)]

        started = time.perf_counter()
        resumed = fixtures.start_training(checkout, ["--config", str(path), "--resume", "auto"], env=env)
        if resumed.wait(timeout=3600) != [0, 0] or "resumed from" not in resumed.output():
            raise SystemExit(f"resume failed:\n{resumed.output()[-3000:]}")
        results["resume_wall_s"] = time.perf_counter() - started

        os.environ.update({k: v for k, v in env.items() if k.startswith(("ORACLE_", "HOME"))})
        out = base / "exported"
        with Peak() as exported:
            export_checkpoint(checkpoint, out, checkout, max_shard_size="200MB")
        shard = max(p.stat().st_size for p in out.glob("*.safetensors"))
        results["export"] = {"s": exported.seconds, "growth_bytes": exported.growth, "largest_shard_bytes": shard}

        port_env = dict(env, PYTHONPATH=str(ROOT))
        processes = []
        for rank in range(2):
            rank_env = dict(
                os.environ, **port_env, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29600 + os.getpid() % 300), OMP_NUM_THREADS="1",
            )  # fmt: skip
            command = [sys.executable, __file__, "--worker", str(path), str(base)]
            processes.append(subprocess.Popen(command, cwd=checkout, env=rank_env))
        if [p.wait(timeout=3600) for p in processes] != [0, 0]:
            raise SystemExit("the save comparison failed")
        results["save_comparison"] = [json.loads((base / f"worker-{r}.json").read_text()) for r in range(2)]

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def report(r: dict[str, Any]) -> None:
    mb = 1e6
    train = r["train"]
    for rank in range(2):
        part = train["own_part_file_bytes"][rank]
        growth = train["growth_during_save"][rank]
        print(
            f"oracle train, rank {rank}: save grew resident memory by {growth / mb:.0f} MB = {growth / part:.2f}x "
            f"its own part ({part / mb:.0f} MB); peak {train['rss_peak_during_save'][rank] / mb:.0f} MB"
        )
    print(f"oracle train: save window {train['save_window_s']:.1f} s; start-up, 2 steps, save {train['wall_s']:.0f} s")
    print(f"oracle train --resume auto: {r['resume_wall_s']:.0f} s (start-up, per-rank verification, load)")
    e = r["export"]
    shard = e["largest_shard_bytes"]
    print(
        f"oracle export: {e['s']:.1f} s, memory grew by {e['growth_bytes'] / mb:.0f} MB = "
        f"{e['growth_bytes'] / shard:.2f}x its largest output shard ({shard / mb:.0f} MB)"
    )
    for w in r["save_comparison"]:
        part = w["own_part_bytes"]
        print(
            f"save, rank {w['rank']}: own part {w['own_save_s']:.2f} s, +{w['own_save_growth_bytes'] / mb:.0f} MB "
            f"({w['own_save_growth_bytes'] / part:.2f}x its {part / mb:.0f} MB part) | consolidated "
            f"{w['consolidated_save_s']:.2f} s, +{w['consolidated_growth_bytes'] / mb:.0f} MB "
            f"({w['consolidated_growth_bytes'] / part:.2f}x) | ratio consolidated/own "
            f"{w['consolidated_save_s'] / w['own_save_s']:.1f}x"
        )


if __name__ == "__main__":
    main()
