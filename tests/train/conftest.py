"""Fixtures for training tests: a tiny packed corpus, a checkout that `oracle submit` would have attested, the
environment of the cluster job it would have started, and a runner that starts `oracle train` as N processes."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from guards.attestation import verify_attestation, write_attestation
from guards.keys import load_signing_key
from guards.result import GateResult
from guards.submission import DIGEST_ENV, RECORD_ENV, new_record, write_submission_record
from guards.trust import load_trust_root
from oracle.data.format import PackedWriter
from oracle.train.config import load_train_config
from policies.floor import PolicyFloor
from policies.rule import Gate
from tests.trust import TestTrust, make_trust, session_key, session_trust

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (gloo) when imported in-process

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
ORACLE = str(Path(sys.executable).parent / "oracle")


def write_corpus(
    directory: Path,
    *,
    sequences: int = 96,
    seq_len: int = 65,
    vocab: int = 4096,
    seed: int = 0,
    tokenizer: Path | None = None,
) -> Path:
    """Token sequences with learnable structure (repeating ramps), written in the packed format (with `tokenizer`
    kept beside them, as `oracle data run --tokenizer` does)."""
    rng = np.random.default_rng(seed)
    writer = PackedWriter(
        directory / "tokens",
        seq_len=seq_len,
        vocab_size=vocab,
        eos_id=0,
        pad_id=1,
        sequences_per_file=32,
        tokenizer_dir=tokenizer,
    )
    for _ in range(sequences):
        start, stride = int(rng.integers(9, 200)), int(rng.integers(1, 4))
        writer.add([(start + stride * i) % 256 + 9 for i in range(seq_len - 1)])
    writer.close()
    return directory


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path)


def make_checkout(tmp_path: Path) -> Path:
    """A clean, attested git checkout (the working directory of the job) attested with the session trust root's
    key, copied to tmp_path/signing.pem."""
    root = tmp_path / "checkout"
    (root / "policies" / "keys").mkdir(parents=True)
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text(".oracle/\njobs/\nruns/\n")
    (root / "requirements.lock").write_text("")
    (root / "policies" / "policies.toml").write_text("")
    key = session_key(tmp_path / "signing.pem")  # a key of the session's trust root (tests.trust)
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=root, check=True)
    signing_key = load_signing_key({"ORACLE_SIGNING_KEY": str(key)})
    write_attestation(root, GateResult(gate=Gate.ci, root=str(root), rules=[]), signing_key)
    return root


def job_environment(root: Path, job_id: str = "4242", config: Path | None = None) -> dict[str, str]:
    """What a SLURM job started by `oracle submit` carries: the submission record's digest and path (a record signed
    by the session trust root's submission key, naming this checkout's commit and attestation), the job id. The
    scheduler knows no such job, so training refuses it: only the refusals are tested with it here; the SLURM tests
    (tests/infra/test_submit_slurm.py, tests/security) run real submitted jobs."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    tree = subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=root, capture_output=True, text=True).stdout
    record = root / "jobs" / "submission.json"
    digest = write_submission_record(
        record,
        new_record(
            commit=head,
            tree=tree.strip(),
            attestation_digest=verify_attestation(root).digest,
            config_hash=load_train_config(config).sha256() if config is not None else "c",
            spec_hash="s",
            target="slurm",
            lock_sha256=hashlib.sha256((root / "requirements.lock").read_bytes()).hexdigest(),
            trust=load_trust_root(root).describe(),
            audit=None,
            waivers=[],
        ),
        load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())}),
    )
    return {DIGEST_ENV: digest, RECORD_ENV: str(record), "SLURM_JOB_ID": job_id}


@pytest.fixture(scope="session")
def local_trust(tmp_path_factory: pytest.TempPathFactory) -> TestTrust:
    """A trust root whose policy floor lets ALLOW_LOCAL_TRAIN=true through (an organisation's choice for a
    development machine), signed with the session's keys: provenance written under it verifies under the session
    trust root too."""
    return make_local_trust(tmp_path_factory.mktemp("local-trust"), session_trust())


def make_local_trust(directory: Path, keys_from: TestTrust) -> TestTrust:
    """A trust root in `directory` whose floor allows the ALLOW_LOCAL_TRAIN override, with `keys_from`'s keys."""
    floor = PolicyFloor().model_dump(mode="json")
    floor["settings"]["local_train"]["allow_override"] = True
    return make_trust(directory, floor=floor, keys_from=keys_from)


def local_training(root: Path, trust: TestTrust, *, signed: bool = True) -> dict[str, str]:
    """Opt `root` into local training (policies.toml's local_train.allow_override, committed and attested again) and
    return the environment that trains there under `trust`: the override the floor and the settings both allow,
    the provenance key unless `signed` is false."""
    (root / "policies" / "policies.toml").write_text("[local_train]\nallow_override = true\n")
    subprocess.run([*GIT, "commit", "-qam", "local training allowed on this machine"], cwd=root, check=True)
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())})
    write_attestation(root, GateResult(gate=Gate.ci, root=str(root), rules=[]), key)
    env = {**trust.env, "ALLOW_LOCAL_TRAIN": "true"}
    return env | {"ORACLE_SIGNING_KEY": str(session_key())} if signed else env


def recipe(path: Path, corpus: Path, **changes: object) -> Path:
    """The oracle-mini recipe with `section.key` changes, written to `path`."""
    data = load_train_config("oracle-mini").model_dump(mode="json")
    data["data"]["path"] = str(corpus)
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Job:
    processes: list[subprocess.Popen[str]]
    logs: list[Path]

    def wait(self, timeout: float = 300) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for process in self.processes:
            codes.append(process.wait(timeout=max(deadline - time.monotonic(), 1)))
        return codes

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def output(self) -> str:
        return "\n".join(f"--- rank {i}\n{log.read_text()}" for i, log in enumerate(self.logs))


def start_training(
    root: Path, args: list[str], *, world: int = 2, env: dict[str, str] | None = None, cpu: bool = True
) -> Job:
    """`oracle train ARGS` as `world` processes in `root`, with the rendezvous variables torchrun would set."""
    port = _free_port()
    processes, logs = [], []
    for rank in range(world):
        log = root.parent / f"train-rank{rank}-{port}.log"
        rank_env = dict(
            os.environ,
            **(env or {}),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // world)),
        )
        if cpu:
            rank_env["DS_ACCELERATOR"] = "cpu"
        handle = log.open("w")
        processes.append(
            subprocess.Popen(
                [ORACLE, "train", *args],
                cwd=root,
                env=rank_env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
        logs.append(log)
    return Job(processes, logs)
