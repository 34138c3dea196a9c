"""Benchmark: peak host memory of loading a checkpoint with verified digests (oracle.moe850b.weights.load_checkpoint
with `expected_sha256`, as `oracle serve` loads it).

A checkpoint of about `--size-mb` MB of random float32 weights (an Oracle MoE config scaled up, written with
safetensors into a temporary folder) is loaded in a fresh interpreter per measurement, three ways, interleaved:
- streaming (what the code does): each file read once into the tensors' own buffers, hashed on the way;
- ranks: the same weights as a training job of 4 processes writes them (each rank's part, oracle.moe850b.partitioned),
  each part file read once straight into the model's tensors, hashed on the way;
- read-all (the baseline, the previous implementation, inlined here): the whole file read into one bytes object,
  hashed, then the tensors built from those bytes (`safetensors.torch.load`).
Each interpreter first builds a model of the same config on the meta device (torch's one-time set-up, ~80 MB
whatever the model's size, is not loading), then records its high-water mark (VmHWM, else ru_maxrss) before and
after the load. Printed: the growth of the peak over the weights' size for both (medians of `--repeats`), their
ratio, and the load times.

Usage: python bench/load_memory.py [--size-mb N] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oracle.moe850b.config import MoEConfig  # noqa: E402
from oracle.moe850b.model import OracleMoE  # noqa: E402
from oracle.moe850b.partitioned import save_partitioned  # noqa: E402
from oracle.moe850b.weights import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402

MEASURE = """
import hashlib, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
from oracle.moe850b.config import parse_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.weights import load_checkpoint

checkpoint, mode = Path({checkpoint!r}), {mode!r}
digests = json.loads((checkpoint.parent / "digests.json").read_text())


def high_water_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checked(path):
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digests[path.name]:
        raise SystemExit(f"{{path}}: sha256 differs")
    return data


def read_all():
    # the previous verified load: one bytes object of the whole file, then tensors built from it
    from safetensors.torch import load
    config = parse_config(checked(checkpoint / "config.json").decode("utf-8"), checkpoint / "config.json")
    with torch.device("meta"):
        model = OracleMoE(config)
    data = checked(checkpoint / "model.safetensors")
    tensors = load(data)
    del data
    model.load_state_dict(tensors, assign=True)
    return model


config = parse_config((checkpoint / "config.json").read_text(), checkpoint / "config.json")
with torch.device("meta"):
    OracleMoE(config)  # torch's one-time set-up for a first model
before = high_water_bytes()
start = time.perf_counter()
if mode == "streaming":
    model = load_checkpoint(checkpoint, expected_sha256=digests)
elif mode == "ranks":
    parts = checkpoint.parent / "parts"
    model = load_checkpoint(parts, expected_sha256=json.loads((checkpoint.parent / "parts.json").read_text()))
else:
    model = read_all()
seconds = time.perf_counter() - start
print(json.dumps({{"before": before, "after": high_water_bytes(), "seconds": seconds}}))
"""

MODES = ("streaming", "ranks", "read-all")
RANKS = 4


def make_checkpoint(directory: Path, size_mb: int) -> int:
    """A checkpoint of random float32 weights of about `size_mb` MB in `directory`; its weights' size in bytes."""
    n_layers = 1
    while True:
        config = MoEConfig.model_validate(
            {
                "name": "load-memory-bench",
                "vocab_size": 8192,
                "hidden_size": 1024,
                "n_layers": n_layers,
                "n_heads": 8,
                "n_kv_heads": 4,
                "context_length": 256,
                "n_experts": 8,
                "top_k": 2,
                "expert_hidden_size": 1024,
                "shared_expert_hidden_size": 1024,
            }
        )
        with torch.device("meta"):
            shapes = {name: t.shape for name, t in OracleMoE(config).state_dict().items()}
        size = sum(4 * shape.numel() for shape in shapes.values())
        if size >= size_mb * 1_000_000:
            break
        n_layers += 1
    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {name: torch.rand(shape, generator=generator) for name, shape in shapes.items()}
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    with torch.device("meta"):
        model = OracleMoE(config)
    model.load_state_dict(tensors, assign=True)
    parts = directory.parent / "parts"  # the same weights as a training job of RANKS processes leaves them
    save_partitioned(model, parts, RANKS)
    del tensors, model
    for folder in (directory, parts):
        (folder / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    for folder, name in ((directory, "digests.json"), (parts, "parts.json")):
        digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        (directory.parent / name).write_text(json.dumps(digests))
    return (directory / WEIGHTS_FILE).stat().st_size


def measure(checkpoint: Path, mode: str) -> dict[str, Any]:
    script = MEASURE.format(root=str(ROOT), checkpoint=str(checkpoint), mode=mode)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{mode} load failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="weights size to generate (default 300 MB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oracle-load-memory-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        size = make_checkpoint(checkpoint, args.size_mb)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:  # interleaved, the order alternating
                runs[mode].append(measure(checkpoint, mode))
    growth = {mode: statistics.median((r["after"] - r["before"]) / size for r in runs[mode]) for mode in MODES}
    seconds = {mode: statistics.median(r["seconds"] for r in runs[mode]) for mode in MODES}
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "weights_bytes": size,
        "repeats": args.repeats,
        "peak_growth_over_weights": growth,
        "growth_ratio_streaming_over_read_all": growth["streaming"] / growth["read-all"],
        "seconds": seconds,
        "runs": runs,
    }
    print(f"weights: {size:,} bytes ({figures['machine']}); medians of {args.repeats}")
    for mode in MODES:
        print(f"{mode:>10}: peak RSS growth {growth[mode]:.3f}x the weights, load {seconds[mode]:.2f} s")
    print(f"streaming / read-all: peak growth {figures['growth_ratio_streaming_over_read_all']:.3f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
