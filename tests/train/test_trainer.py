"""`oracle train` end to end on CPU: 2 processes, gloo, DeepSpeed ZeRO-3, on a machine whose trust root lets
ALLOW_LOCAL_TRAIN=true through (tests.train.conftest.local_trust). Runs inside jobs that `oracle submit` started go
through SLURM itself: tests/infra/test_submit_slurm.py and tests/security/test_legitimate_chain.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from guards.provenance import ProvenanceError, verify_provenance
from oracle.moe850b.weights import load_checkpoint
from oracle.tokenization.tokenizer import TOKENIZER_FILES, save_tokenizer, train_tokenizer
from oracle.train import checkpoint as ckpt
from oracle_base.weight_files import PARTITIONS_FILE, part_file
from oracle_cli.app import submitted_recipe_refusal
from tests.train.conftest import ORACLE, job_environment, local_training, recipe, start_training, write_corpus
from tests.trust import TestTrust


def _metrics(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / ckpt.METRICS).read_text().splitlines()]


def _audit(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]


def test_outside_a_submitted_job_training_is_refused_before_anything_is_built(checkout: Path, corpus: Path) -> None:
    path = recipe(checkout.parent / "mini.yaml", corpus)
    done = subprocess.run([ORACLE, "train", "--config", str(path)], cwd=checkout, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "training refused: not inside a job started by `oracle submit`" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (checkout / "runs").exists()
    entry = _audit(checkout)[-1]
    assert (entry["gate"], entry["result"]) == ("train", "refused")


def test_a_forged_submission_record_is_refused(checkout: Path, corpus: Path) -> None:
    env = job_environment(checkout)
    env["ORACLE_SUBMISSION_DIGEST"] = "0" * 64
    path = recipe(checkout.parent / "mini.yaml", corpus)
    job = start_training(checkout, ["--config", str(path)], world=1, env=env)
    assert job.wait() == [1], job.output()
    assert "does not match ORACLE_SUBMISSION_DIGEST" in job.output()
    assert not (checkout / "runs").exists()
    assert _audit(checkout)[-1]["result"] == "refused"


def test_a_signed_record_with_a_job_id_the_scheduler_does_not_confirm_is_refused(checkout: Path, corpus: Path) -> None:
    env = job_environment(checkout)  # signed by the trust root's key, but for a commit the running code is not
    path = recipe(checkout.parent / "mini.yaml", corpus)
    job = start_training(checkout, ["--config", str(path)], world=1, env=env)
    assert job.wait() == [1], job.output()
    assert "training refused:" in job.output()
    assert not (checkout / "runs").exists()


def test_zero3_bf16_training_lowers_the_loss_and_writes_signed_provenance(
    checkout: Path, tmp_path: Path, local_trust: TestTrust
) -> None:
    (tmp_path / "text.txt").write_text("A few words to learn merges from, again and again.\n" * 50)
    tokenizer, _ = train_tokenizer([tmp_path / "text.txt"], 4096)
    save_tokenizer(tokenizer, tmp_path / "tokenizer", context_length=512)
    corpus = write_corpus(tmp_path / "corpus", tokenizer=tmp_path / "tokenizer")
    path = recipe(tmp_path / "mini.yaml", corpus, schedule__total_steps=30, checkpoint__interval=15)
    env = local_training(checkout, local_trust)
    job = start_training(checkout, ["--config", str(path)], env=env)
    assert job.wait() == [0, 0], job.output()
    run = checkout / "runs" / "oracle-mini"
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 31))
    first, last = metrics[0], metrics[-1]
    assert sum(m["loss"] for m in metrics[-3:]) / 3 < sum(m["loss"] for m in metrics[:3]) / 3 - 1.0  # type: ignore[misc]
    for key in ("lm_loss", "load_balance_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "dropped_tokens"):
        assert isinstance(last[key], (int, float)), key
    assert sum(first["tokens_per_expert"]) == 8 * 64 * 2 * 4  # type: ignore[arg-type]  # tokens × top-2 × layers
    assert first["lr"] == pytest.approx(3e-3 / 4)

    final = run / "step-00000030"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "step-00000015", "step-00000030"]
    record = verify_provenance(final, checkout)
    # a local run names no job and no commit, and says it was let through by the override (the SLURM tests check
    # the provenance of submitted jobs)
    assert (record["commit"], record["job_id"], record["step"], record["local_override"]) == (None, None, 30, True)
    assert record["submission_digest"] is None
    # each rank's part of the weights with their index, their config and the tokenizer the data was encoded with
    # (which `oracle serve` loads from here)
    parts = [part_file(0, 2), part_file(1, 2)]
    assert set(record["files"]) == {PARTITIONS_FILE, *parts, "config.json", *TOKENIZER_FILES}
    assert not (final / "model.safetensors").exists()  # nothing was gathered onto one rank
    for name in TOKENIZER_FILES:
        assert (final / name).read_bytes() == (tmp_path / "tokenizer" / name).read_bytes()
    assert len(record["data_manifest_sha256"]) == len(record["train_config_sha256"]) == 64
    # the manifest names the rank that wrote (and hashed) each file: every DeepSpeed partition, RNG state and part
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    assert manifest["world_size"] == 2
    owners = {name: entry["rank"] for name, entry in manifest["files"].items()}
    assert owners[parts[1]] == owners["rng/rank-00001.safetensors"] == 1
    rank1_deepspeed = [n for n, r in owners.items() if n.startswith("deepspeed/") and r == 1]
    assert any("optim_states" in n for n in rank1_deepspeed), rank1_deepspeed
    assert any("model_states" in n for n in rank1_deepspeed), rank1_deepspeed
    # the parts hold exactly the parameters: DeepSpeed's own reconstruction from its ZeRO files agrees bit for bit
    model = load_checkpoint(final)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.embed_tokens.weight.shape == (4096, 128)
    reference = zero_reconstruction(final / "deepspeed")
    for name, tensor in model.state_dict().items():
        if name in reference:
            assert torch.equal(reference[name].to(tensor.dtype), tensor), name
    assert {"embed_tokens.weight", "layers.3.moe.experts.w13", "norm.weight"} <= set(reference)
    results = [e["result"] for e in _audit(checkout) if e["gate"] == "train"]
    assert results == ["allowed-override", "allowed-override"]  # one decision per rank

    data = bytearray((final / parts[1]).read_bytes())
    data[-1] ^= 0x01
    (final / parts[1]).write_bytes(bytes(data))
    with pytest.raises(ProvenanceError, match=r"model-rank-00001-of-00002\.safetensors is missing or its sha256"):
        verify_provenance(final, checkout)


def zero_reconstruction(deepspeed: Path) -> dict[str, torch.Tensor]:
    """The model's parameters as DeepSpeed itself rebuilds them from its per-rank ZeRO files (its fp32 masters; the
    bf16 parameters are those rounded), named as our model names them."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from oracle.train.trainer import allow_deepspeed_state

    allow_deepspeed_state()
    state = get_fp32_state_dict_from_zero_checkpoint(str(deepspeed), tag="state")
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


def test_a_submitted_job_trains_only_the_submitted_recipe() -> None:
    assert submitted_recipe_refusal(None, "a" * 64, "mini.yaml", Path("/data")) is None  # not a submitted job
    assert submitted_recipe_refusal("a" * 64, "a" * 64, "mini.yaml", None) is None
    other = submitted_recipe_refusal("a" * 64, "b" * 64, "other.yaml", None)
    assert other is not None
    assert "recipe other.yaml (config hash bbbbbbbbbbbb) is not the one this job was submitted with" in other
    data = submitted_recipe_refusal("a" * 64, "a" * 64, "mini.yaml", Path("/data"))
    assert data is not None
    assert "--data is not allowed in a submitted job" in data


def test_provenance_without_a_signing_key_does_not_verify(
    checkout: Path, corpus: Path, tmp_path: Path, local_trust: TestTrust
) -> None:
    path = recipe(
        tmp_path / "mini.yaml",
        corpus,
        parallelism__data=1,
        batch__global_batch=4,
        schedule__warmup_steps=1,
        schedule__total_steps=2,
        checkpoint__interval=2,
    )
    env = local_training(checkout, local_trust, signed=False)
    job = start_training(checkout, ["--config", str(path)], world=1, env=env)
    assert job.wait() == [0], job.output()
    with pytest.raises(ProvenanceError, match="is unsigned"):
        verify_provenance(checkout / "runs" / "oracle-mini" / "step-00000002", checkout)


def test_a_killed_run_resumes_and_reproduces_the_uninterrupted_losses(
    checkout: Path, corpus: Path, tmp_path: Path, local_trust: TestTrust
) -> None:
    path = recipe(
        tmp_path / "mini.yaml",
        corpus,
        precision="fp32",
        schedule__total_steps=24,
        checkpoint__interval=4,
        checkpoint__keep_last=2,
    )
    env = local_training(checkout, local_trust)
    reference = start_training(checkout, ["--config", str(path), "--run-name", "reference"], env=env)
    assert reference.wait() == [0, 0], reference.output()
    expected = {m["step"]: m for m in _metrics(checkout / "runs" / "reference")}

    run = checkout / "runs" / "killed"
    job = start_training(checkout, ["--config", str(path), "--run-name", "killed"], env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (run / ckpt.METRICS).is_file() and len(_metrics(run)) >= 10:
            break
        assert all(p.poll() is None for p in job.processes), job.output()
        time.sleep(0.05)
    job.kill()
    assert [p.returncode for p in job.processes] == [-9, -9]
    killed_at = len(_metrics(run))
    assert killed_at < 24, "the run finished before it could be killed"
    newest = ckpt.newest_complete(run)
    assert newest is not None
    # What a crash can leave behind is never resumed from: a half-written save, and a newer folder with a bad byte.
    ckpt.partial_dir(run, 99).mkdir(exist_ok=True)
    corrupt = run / ckpt.step_dir_name(newest.state.step + 1)
    shutil.copytree(newest.directory, corrupt)
    weights = bytearray((corrupt / part_file(1, 2)).read_bytes())  # rank 1's part: only rank 1 hashes it
    weights[-1] ^= 0x01
    (corrupt / part_file(1, 2)).write_bytes(bytes(weights))

    resumed = start_training(checkout, ["--config", str(path), "--run-name", "killed", "--resume", "auto"], env=env)
    assert resumed.wait() == [0, 0], resumed.output()
    output = resumed.output()
    assert f"resumed from {newest.directory} at step {newest.state.step}" in output
    assert f"skipping checkpoint: {corrupt / part_file(1, 2)}: sha256 differs" in output
    got = _metrics(run)
    assert [m["step"] for m in got] == list(range(1, 25))
    for m in got:
        reference_loss = expected[m["step"]]["loss"]
        assert abs(m["loss"] - reference_loss) <= 1e-6, (m["step"], m["loss"], reference_loss)  # type: ignore[operator]
        assert m["tokens_per_expert"] == expected[m["step"]]["tokens_per_expert"]

    # The ZeRO files are per-rank partitions: another number of processes is refused in one line, nothing resumed.
    single = recipe(
        tmp_path / "single.yaml",
        corpus,
        precision="fp32",
        parallelism__data=1,
        batch__global_batch=4,
        schedule__total_steps=24,
        checkpoint__interval=4,
    )
    other = start_training(
        checkout, ["--config", str(single), "--run-name", "killed", "--resume", "auto"], world=1, env=env
    )
    assert other.wait() == [2], other.output()
    assert "was written by 2 processes and this job has 1: DeepSpeed's ZeRO files are per-rank" in other.output()
