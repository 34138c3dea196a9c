"""`oracle export --format hf`: a signed checkpoint becomes a folder transformers loads as Qwen2MoeForCausalLM (no
remote code) that computes what our model computes, streamed shard by shard, with provenance over every file.

Three exports are made once for the module: the mini preset (4 layers, a shared expert; with a trained tokenizer;
forced into several shards; its weights as 3 training ranks write them), a variant without a shared expert, with
tied embeddings, an explicit head_dim and other rope_theta / norm_eps (one model.safetensors), and a deeper one (8
layers, 16 experts, top-1, a shared expert wider than the routed ones, tied embeddings; 2 ranks' parts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import hub.export as hf_export
from guards.keys import load_signing_key
from guards.process_policy import gated_command, policy_for
from guards.provenance import PROVENANCE_FILE, verify_provenance, write_provenance
from hub.export import ExportError, audited_export
from oracle.moe850b.config import MoEConfig, load_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.partitioned import save_partitioned
from oracle.moe850b.weights import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint
from oracle.tokenization.chat_template import render_chat
from oracle.tokenization.tokenizer import TOKENIZER_FILES, save_tokenizer, train_tokenizer
from oracle_base.digests import sha256_file
from oracle_base.weight_files import PARTITIONS_FILE, part_file
from tests.trust import session_key

REPO = Path(__file__).resolve().parents[2]
MINI = load_config("oracle-mini")
SHARD_BYTES = 2_500_000  # mini's fp32 weights are ~12 MB: several shards
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the model learns to answer questions.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "def generate(prompt: str) -> str:\n    return model.complete(prompt, max_tokens=16)\n",
]


def variant(**changes: object) -> MoEConfig:
    fields = {**MINI.model_dump(), "param_total": None, "param_active": None, **changes}
    return MoEConfig.model_validate(fields)


def signing_key() -> object:
    return load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())})


@dataclass
class Checkpoint:
    directory: Path
    model: OracleMoE


def signed_checkpoint(
    directory: Path, config: MoEConfig, *, tokenizer: Path | None = None, seed: int = 0, ranks: int | None = None
) -> Checkpoint:
    """Random weights from our own init, config, tokenizer, signed record: laid out as `oracle train` leaves them
    with `ranks` processes (each rank's part and their index), or as one model.safetensors (ranks=None)."""
    torch.manual_seed(seed)
    model = OracleMoE(config).eval()
    save_checkpoint(model, directory)
    signed = [WEIGHTS_FILE, CONFIG_FILE]
    if ranks is not None:
        (directory / WEIGHTS_FILE).unlink()
        index = save_partitioned(model, directory, ranks)
        signed = [PARTITIONS_FILE, *index.files(), CONFIG_FILE]
    if tokenizer is not None:
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer / name, directory / name)
        signed += TOKENIZER_FILES
    facts = {"commit": "c" * 40, "run": "export-test", "step": 1, "job_id": "test"}
    write_provenance(directory, signed, facts, signing_key())  # type: ignore[arg-type]
    return Checkpoint(directory, model)


@dataclass
class ShardWrites:
    """What each call of the shard writer held: its bytes, and whether the previous call's tensors were still alive."""

    bytes_per_call: list[int] = field(default_factory=list)
    tensors_per_call: list[int] = field(default_factory=list)
    previous_alive: list[int] = field(default_factory=list)
    _previous: list[weakref.ref[torch.Tensor]] = field(default_factory=list)


@dataclass
class Export:
    root: Path
    checkpoint: Checkpoint
    out: Path
    writes: ShardWrites


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "corpus.txt").write_text("\n".join(TEXTS * 8), encoding="utf-8")
    trained, _ = train_tokenizer([directory / "corpus.txt"], MINI.vocab_size, min_frequency=2)
    return save_tokenizer(trained, directory / "saved", context_length=MINI.context_length)


def export(
    tmp: Path, config: MoEConfig, tokenizer: Path | None, max_shard_size: int | str, ranks: int | None = None
) -> Export:
    checkpoint = signed_checkpoint(tmp / "runs" / "r" / "step-00000001", config, tokenizer=tokenizer, ranks=ranks)
    writes = ShardWrites()
    native = hf_export.write_shard

    def watched(tensors: dict[str, torch.Tensor], path: Path) -> None:
        writes.previous_alive.append(sum(ref() is not None for ref in writes._previous))
        writes.bytes_per_call.append(sum(t.numel() * t.element_size() for t in tensors.values()))
        writes.tensors_per_call.append(len(tensors))
        writes._previous = [weakref.ref(t) for t in tensors.values()]
        native(tensors, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_export, "write_shard", watched)
        out = tmp / "exported"
        audited_export(checkpoint.directory, out, tmp, max_shard_size=max_shard_size, signing_key=signing_key())
    return Export(tmp, checkpoint, out, writes)


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory, tokenizer: Path) -> Export:
    return export(tmp_path_factory.mktemp("mini"), MINI, tokenizer, SHARD_BYTES, ranks=3)  # as 3 ranks wrote it


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Export:
    config = variant(
        name="plain", n_layers=2, shared_expert_hidden_size=0, tie_embeddings=True, head_dim=16, rope_theta=5e5,
        norm_eps=1e-5, context_length=256,
    )  # fmt: skip
    return export(tmp_path_factory.mktemp("plain"), config, None, "5GB")


@pytest.fixture(scope="module")
def deeper(tmp_path_factory: pytest.TempPathFactory) -> Export:
    """More layers than mini, a wider shared expert than its routed ones, top-1 of 16 experts, written by 2 ranks."""
    config = variant(
        name="deeper", n_layers=8, n_experts=16, top_k=1, expert_hidden_size=64, shared_expert_hidden_size=192,
        tie_embeddings=True,
    )  # fmt: skip
    return export(tmp_path_factory.mktemp("deeper"), config, None, SHARD_BYTES, ranks=2)


def relative_logit_difference(exported: Export) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(exported.out).eval()
    assert type(hf).__name__ == "Qwen2MoeForCausalLM"
    ids = torch.randint(
        0, exported.checkpoint.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours = exported.checkpoint.model(ids).logits_BSV
        theirs = hf(ids).logits
        greedy_ours = exported.checkpoint.model.generate(ids, 16)
        greedy_theirs = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, eos_token_id=None
        )
    assert torch.equal(greedy_ours, greedy_theirs)
    return float((ours - theirs).abs().max() / ours.abs().max())


@pytest.mark.parametrize("name", ["mini", "plain", "deeper"])
def test_transformers_loads_the_export_without_remote_code_and_computes_the_same(
    name: str, request: pytest.FixtureRequest
) -> None:
    exported: Export = request.getfixturevalue(name)
    difference = relative_logit_difference(exported)
    print(f"{name}: max |Δlogit| / max |logit| = {difference:.2e}")
    assert difference < 1e-4


def test_the_ranks_parts_and_one_file_export_to_the_same_bytes(mini: Export, tmp_path: Path, tokenizer: Path) -> None:
    single = export(tmp_path, MINI, tokenizer, SHARD_BYTES)  # the same seed, saved as one model.safetensors
    assert (mini.checkpoint.directory / part_file(2, 3)).is_file()
    assert not (mini.checkpoint.directory / WEIGHTS_FILE).exists()
    shards = sorted(p.name for p in mini.out.glob("*.safetensors"))
    assert len(shards) > 1
    assert shards == sorted(p.name for p in single.out.glob("*.safetensors"))
    for name in [*shards, "model.safetensors.index.json", "config.json"]:
        assert (mini.out / name).read_bytes() == (single.out / name).read_bytes(), name


def test_the_tokenizer_loads_with_our_chat_template(mini: Export, tokenizer: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(mini.out)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox?"}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == render_chat(messages, add_generation_prompt=True)
    ours = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_special_tokens=False).ids


def test_shards_are_written_one_at_a_time_and_the_index_lists_every_tensor(mini: Export) -> None:
    index = json.loads((mini.out / "model.safetensors.index.json").read_text())
    shards = sorted(mini.out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    stored = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            stored.update(dict.fromkeys(handle.keys(), shard.name))
    assert stored == index["weight_map"]
    assert set(stored) == {item.name for item in hf_export.plan_tensors(MINI)}
    # streaming: each write holds one shard (at most the maximum, or a single larger tensor such as the embedding),
    # and the previous shard's tensors are gone by the next write
    writes = mini.writes
    assert len(writes.bytes_per_call) == len(shards)
    assert all(
        size <= SHARD_BYTES or n == 1 for size, n in zip(writes.bytes_per_call, writes.tensors_per_call, strict=True)
    )
    assert set(writes.previous_alive) == {0}


def test_the_provenance_covers_every_file_and_names_the_source(mini: Export) -> None:
    record = verify_provenance(mini.out, mini.root)  # signed by a provenance key of the session trust root
    exported = {p.name for p in mini.out.iterdir()} - {PROVENANCE_FILE}
    assert set(record["files"]) == exported
    assert all(record["files"][name] == sha256_file(mini.out / name) for name in exported)
    assert {"config.json", "generation_config.json", *TOKENIZER_FILES} <= exported
    source = record["source"]
    assert source["checkpoint"] == str(mini.checkpoint.directory.resolve())
    assert source["provenance_sha256"] == sha256_file(mini.checkpoint.directory / PROVENANCE_FILE)
    assert source["commit"] == "c" * 40
    assert record["export"]["architecture"] == "Qwen2MoeForCausalLM"
    config = json.loads((mini.out / "config.json").read_text())
    assert config["model_type"] == "qwen2_moe"
    assert config["oracle"]["name"] == "oracle-mini"


def test_a_selection_bias_is_refused_in_one_line_before_anything_is_written(tmp_path: Path) -> None:
    checkpoint = signed_checkpoint(tmp_path / "step-00000001", variant(name="biased", n_layers=1, bias_balancing=True))
    out = tmp_path / "out"
    with pytest.raises(ExportError) as refused:
        audited_export(checkpoint.directory, out, tmp_path)
    assert "bias_balancing" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not out.exists()
    assert not hf_export.partial_dir(out).exists()


def test_a_tampered_checkpoint_is_refused_before_anything_is_written(mini: Export, tmp_path: Path) -> None:
    tampered = tmp_path / "step-00000001"
    shutil.copytree(mini.checkpoint.directory, tampered)
    data = bytearray((tampered / part_file(1, 3)).read_bytes())  # one rank's part
    data[-1] ^= 0x01
    (tampered / part_file(1, 3)).write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(ExportError) as refused:
        audited_export(tampered, out, tmp_path)
    assert refused.value.refused
    assert "sha256" in str(refused.value)
    assert not out.exists()
    assert not hf_export.partial_dir(out).exists()
    audit = (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["gate"] == "export"
    assert json.loads(audit[-1])["result"] == "refused"


@pytest.mark.parametrize("how", ["swapped", "written and restored"])
def test_weights_changed_during_the_export_are_refused_and_nothing_is_written(
    mini: Export, tmp_path: Path, how: str
) -> None:
    """The bytes converted are the bytes hashed: the export reads the very file it opened and hashed, and any change to
    it during the export — another file renamed over its name (the original loses its link), or a write restored
    before the end — changes its ctime and refuses the export."""
    checkpoint = Path(shutil.copytree(mini.checkpoint.directory, tmp_path / "step-00000001"))
    part = checkpoint / part_file(1, 3)
    original = part.read_bytes()
    native = hf_export.write_shard
    calls: list[int] = []

    def meddling(tensors: dict[str, torch.Tensor], path: Path) -> None:
        calls.append(1)
        if len(calls) == 1:
            if how == "swapped":  # another file under the signed name
                evil = checkpoint / "evil"
                evil.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
                os.replace(evil, part)
            else:
                part.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
                part.write_bytes(original)  # the same bytes again, before any hash at the end could see it
        native(tensors, path)

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_export, "write_shard", meddling)
        with pytest.raises(ExportError, match=r"model-rank-00001-of-00003\.safetensors changed while it was exported"):
            audited_export(checkpoint, out, tmp_path, max_shard_size=SHARD_BYTES)
    assert not out.exists()
    assert not hf_export.partial_dir(out).exists()


def test_a_non_empty_out_is_refused_unless_forced(plain: Export, monkeypatch: pytest.MonkeyPatch) -> None:
    from oracle_cli.app import app

    monkeypatch.chdir(plain.root)  # the audit log of the working directory
    args = ["export", "--checkpoint", str(plain.checkpoint.directory), "--out", str(plain.out)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert "--force" in refused.output
    before = sha256_file(plain.out / "model.safetensors")
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
    assert sha256_file(plain.out / "model.safetensors") == before  # the same bytes again
    assert not hf_export.partial_dir(plain.out).exists()
    audit = [json.loads(line) for line in (plain.root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert [entry["result"] for entry in audit] == ["allowed", "refused", "allowed"]


def test_oracle_export_runs_under_the_process_policy(plain: Export, tmp_path: Path) -> None:
    checkpoint, out = plain.checkpoint.directory, tmp_path / "exported"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert gated_command(argv) == "export"
    roots = policy_for("export", argv[1:], {}, tmp_path).read_roots
    assert roots == {str(checkpoint.resolve()), str(out), str(hf_export.partial_dir(out))}
    env = {**os.environ, "PYTHONPATH": str(REPO), "ORACLE_SIGNING_KEY": str(session_key())}
    done = subprocess.run(
        [sys.executable, "-m", "oracle", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert verify_provenance(out, tmp_path)["source"]["step"] == 1
    audit = [json.loads(line) for line in (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert [(entry["gate"], entry["result"]) for entry in audit] == [("export", "allowed")]
