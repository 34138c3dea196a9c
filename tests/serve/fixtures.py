"""A tiny servable checkpoint made on the spot: the mini preset with random weights, a tokenizer trained on a few KB
of text, and a provenance record signed with a provenance key of the session trust root (tests.trust).

Used by the serving tests and by bench/serve.py. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from guards.keys import load_signing_key
from guards.provenance import write_provenance
from oracle.moe850b.config import load_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.partitioned import save_partitioned
from oracle.moe850b.weights import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint
from oracle.serve import API_KEY_ENV
from oracle.tokenization.tokenizer import TOKENIZER_FILES, save_tokenizer, train_tokenizer
from oracle.train import checkpoint as ckpt
from oracle_base.weight_files import PARTITIONS_FILE
from tests.trust import session_key

REPO = Path(__file__).resolve().parents[2]

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the model learns to answer questions.",
    "Oracle serves its checkpoints through an API that speaks the same language as other servers.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "def generate(prompt: str) -> str:\n    return model.complete(prompt, max_tokens=16)\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: commas, periods; colons: and (brackets).",
]


@dataclass(frozen=True)
class ServedCheckpoint:
    root: Path  # the working directory of `oracle serve`: hub/assets
    checkpoint: Path
    tokenizer: Path
    signing_key: Path


def make_served_checkpoint(
    directory: Path, *, config: str = "oracle-mini", seed: int = 0, ranks: int | None = None
) -> ServedCheckpoint:
    """A signed checkpoint: the weights as `ranks` training processes leave them (each rank's part and their index,
    oracle.moe850b.partitioned), or as one model.safetensors (ranks=None)."""
    root = directory / "root"
    (root / "hub").mkdir(parents=True)
    shutil.copytree(REPO / "hub" / "assets", root / "hub" / "assets")
    signing_key = directory / "signing.pem"
    session_key(signing_key)  # a provenance key of the session's trust root (tests.trust)

    model_config = load_config(config)
    corpus = directory / "corpus"
    corpus.mkdir()
    (corpus / "text.txt").write_text("\n".join(TEXTS * 12), encoding="utf-8")
    tokenizer, _ = train_tokenizer([corpus], model_config.vocab_size, min_frequency=2)
    tokenizer_dir = save_tokenizer(tokenizer, directory / "tokenizer", context_length=model_config.context_length)

    # laid out as `oracle train` leaves a checkpoint: weights, config, the data's tokenizer, signed provenance over
    # them, trainer state, manifest
    torch.manual_seed(seed)
    run = directory / "runs" / "serve-test"
    model = OracleMoE(model_config)
    partial = save_checkpoint(model, ckpt.partial_dir(run, 1))
    weights = [WEIGHTS_FILE]
    if ranks is not None:
        (partial / WEIGHTS_FILE).unlink()
        weights = [PARTITIONS_FILE, *save_partitioned(model, partial, ranks).files()]
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, partial / name)
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(signing_key)})
    facts = {"commit": "0" * 40, "run": run.name, "step": 1, "job_id": "test"}
    write_provenance(partial, [*weights, CONFIG_FILE, *TOKENIZER_FILES], facts, key)
    (partial / ckpt.TRAINER_STATE).write_text(json.dumps({"step": 1}) + "\n", encoding="utf-8")
    checkpoint = ckpt.seal(partial, run / ckpt.step_dir_name(1))
    return ServedCheckpoint(root, checkpoint, tokenizer_dir, signing_key)


def flip_last_byte(path: Path) -> None:
    """Alter a file the way a bit flip on disk or a deliberate edit would."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def serve_command(served: ServedCheckpoint, checkpoint: Path | None = None, *extra: str) -> list[str]:
    """`python -m oracle serve` for this checkpoint on any free port (its tokenizer is the one the checkpoint
    carries, as for a checkpoint `oracle train` wrote)."""
    command = [sys.executable, "-m", "oracle", "serve", "--checkpoint", str(checkpoint or served.checkpoint)]
    return [*command, "--port", "0", *extra]


def serve_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This checkout's code; only the root's keys are trusted; no API key unless `extra` sets one."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop(API_KEY_ENV, None)
    return {**env, **(extra or {})}


def metric_value(url: str, name: str, **labels: str) -> float | None:
    """One sample of the server's /metrics (parsed with prometheus_client's own parser); None when absent."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


class RunningServer:
    """`python -m oracle serve` in a subprocess on a free port, its output in a log file."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_server(
    served: ServedCheckpoint,
    log: Path,
    *extra: str,
    checkpoint: Path | None = None,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start the server on port 0 and read the port uvicorn bound from its log; wait until /ready (or it exits)."""
    command = serve_command(served, checkpoint, *extra)
    handle = log.open("wb")
    process = subprocess.Popen(command, cwd=served.root, env=serve_env(env), stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    port = None
    while port is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')}")
        for line in log.read_text(errors="replace").splitlines():
            if "Uvicorn running on http://" in line:
                port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
        time.sleep(0.05)
    server = RunningServer(process, port, log)
    while wait_ready:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not become ready:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return server
