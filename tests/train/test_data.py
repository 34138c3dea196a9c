"""The training data reader: the tokens written are the tokens read, batches are deterministic, partitioned across
ranks and resumable from a saved position, and every bad input is refused with a message naming the file or field."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from oracle.data.format import INDEX_FILE, PackedWriter, read_sequences
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle.train.data import PackedDataset, ShardedBatches, TrainDataError
from oracle_base.records import RecordError
from oracle_base.records.training import DataPosition

VOCAB = 300
SEQ_LEN = 8
EOS, PAD = 298, 299


def write_packed(root: Path, *, sequences: int, seq_len: int = SEQ_LEN, vocab: int = VOCAB, per_file: int = 7) -> Path:
    """`root/tokens/` with `sequences` sequences; sequence i starts with token i (its identity in these tests)."""
    rng = np.random.default_rng(1234)
    writer = PackedWriter(root / "tokens", seq_len, vocab, EOS, PAD, sequences_per_file=per_file)
    for i in range(sequences - 1):  # each document plus its EOS fills exactly one sequence
        writer.add([i, *rng.integers(0, EOS, seq_len - 2).tolist()])
    writer.add([sequences - 1, 5])  # the last one is padded
    writer.close()
    return root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_packed(tmp_path / "data", sequences=50)


def dataset(path: Path, **overrides: object) -> PackedDataset:
    options: dict[str, object] = {"seq_len": SEQ_LEN, "vocab_size": VOCAB}
    options.update(overrides)
    return PackedDataset(path, **options)  # type: ignore[arg-type]


def ids(batches: list[torch.Tensor]) -> list[int]:
    """The identities (first tokens) of the sequences of one rank's step, in order."""
    return [int(token) for batch in batches for token in batch[:, 0]]


def run(reader: ShardedBatches, steps: int) -> list[list[torch.Tensor]]:
    return [reader.next_step() for _ in range(steps)]


def readers(
    data: PackedDataset, world_size: int, *, seed: int = 7, global_batch: int = 8, micro_batch: int = 2
) -> list[ShardedBatches]:
    return [
        ShardedBatches(
            data, seed=seed, global_batch=global_batch, micro_batch=micro_batch, rank=rank, world_size=world_size
        )
        for rank in range(world_size)
    ]


# --- PackedDataset ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [VOCAB, 70_000])  # uint16 and uint32 files
@pytest.mark.parametrize("use_parent", [True, False])
def test_tokens_read_are_the_tokens_written(tmp_path: Path, vocab: int, use_parent: bool) -> None:
    root = write_packed(tmp_path / "data", sequences=23, vocab=vocab, per_file=5)
    tokens = root / "tokens"
    data = dataset(root if use_parent else tokens, vocab_size=vocab)
    expected = list(read_sequences(tokens))
    assert len(data) == len(expected) == 23
    assert len(list(tokens.glob("tokens-*.bin"))) == 5
    for index, sequence in enumerate(expected):
        got = data.sequence(index)
        assert got.dtype == np.int64
        assert got.shape == (SEQ_LEN,)
        np.testing.assert_array_equal(got, sequence.astype(np.int64))
    assert data.sequence(22)[-1] == PAD
    assert data.manifest_sha256 == hashlib.sha256((tokens / INDEX_FILE).read_bytes()).hexdigest()
    with pytest.raises(IndexError):
        data.sequence(23)


def test_files_are_memory_mapped_read_only(data_dir: Path) -> None:
    data = dataset(data_dir)
    assert all(isinstance(array, np.memmap) and array.mode == "r" for array in data._arrays)
    data.sequence(0)[0] = 1  # a copy: writing it cannot touch the file
    assert data.sequence(0)[0] == 0


def test_seq_len_mismatch_names_both_settings(data_dir: Path) -> None:
    with pytest.raises(TrainDataError, match=r"index\.json.*seq_len is 8.*data\.seq_len is 16"):
        dataset(data_dir, seq_len=16)


def test_missing_index_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    with pytest.raises(TrainDataError, match=r"index\.json"):
        dataset(tmp_path)


def _rewrite_index(data_dir: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    index_path = data_dir / "tokens" / INDEX_FILE
    index = json.loads(index_path.read_text())
    change(index)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return index_path


# Each refused with one line naming the file, the line of the key, the key and what is wrong.
INDEX_DEFECTS = {
    "unknown key": (lambda d: d.update(compression="zstd"), "compression", "Extra inputs are not permitted"),
    "missing key": (lambda d: d.pop("pad_id"), "pad_id", "Field required"),
    "wrong type": (lambda d: d.update(seq_len="8"), "seq_len", "Input should be a valid integer"),
    "wrong format": (lambda d: d.update(format="oracle-packed-v0"), "format", "Input should be 'oracle-packed-v1'"),
}


@pytest.mark.parametrize(("change", "key", "problem"), INDEX_DEFECTS.values(), ids=INDEX_DEFECTS)
def test_an_index_off_its_schema_is_refused_naming_file_line_and_key(
    data_dir: Path, change: Callable[[dict[str, Any]], object], key: str, problem: str
) -> None:
    index_path = _rewrite_index(data_dir, change)
    with pytest.raises(TrainDataError) as refused:
        dataset(data_dir)
    message = str(refused.value)
    where = re.escape(str(index_path))
    match = re.fullmatch(rf"packed-data index {where}(?::(\d+))?: {key}: {problem}; re-run .+", message)
    assert match, message
    holding = [n for n, line in enumerate(index_path.read_text().splitlines(), 1) if f'"{key}":' in line]
    assert match.group(1) == (str(holding[0]) if holding else None), message  # a missing key has no line


def test_model_vocab_smaller_than_the_data_vocab_is_refused(data_dir: Path) -> None:
    with pytest.raises(TrainDataError, match=r"vocab_size is 300.*vocab_size is 256"):
        dataset(data_dir, vocab_size=256)
    assert len(dataset(data_dir, vocab_size=512)) == 50  # a larger model vocabulary is fine


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_file_is_refused_even_without_verify(data_dir: Path, verify: bool) -> None:
    path = data_dir / "tokens" / "tokens-000002.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(TrainDataError, match=r"tokens-000002\.bin.*truncated"):
        dataset(data_dir, verify=verify)


def test_missing_file_is_refused(data_dir: Path) -> None:
    (data_dir / "tokens" / "tokens-000003.bin").unlink()
    with pytest.raises(TrainDataError, match=r"tokens-000003\.bin.*missing"):
        dataset(data_dir)


def test_a_changed_byte_fails_sha256_when_verifying(data_dir: Path) -> None:
    path = data_dir / "tokens" / "tokens-000001.bin"
    content = bytearray(path.read_bytes())
    content[3] ^= 0x01
    path.write_bytes(bytes(content))
    with pytest.raises(TrainDataError, match=r"tokens-000001\.bin.*sha256"):
        dataset(data_dir)
    assert len(dataset(data_dir, verify=False)) == 50  # same size: only the digest can tell


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "int8", r"dtype: Input should be 'uint16' or 'uint32'"),
        ("files", [], r"files: List should have at least 1 item"),
        ("files", [{"name": "../x.bin", "sequences": 1, "sha256": "0" * 64}], r"files\.0\.name: '\.\./x\.bin' is not"),
        ("files", [{"name": "tokens-000000.bin", "sequences": "7", "sha256": "0" * 64}], r"files\.0\.sequences: "),
        ("files", [{"name": "tokens-000000.bin", "sequences": 7, "sha256": "abc"}], r"files\.0\.sha256: "),
        ("files", [{"name": "t.bin", "sequences": 7, "sha256": "0" * 64}] * 2, r"files: 't\.bin' is listed twice"),
        ("pad_id", 300, r"pad_id: 300 is outside vocab_size 300"),
    ],
)
def test_malformed_index_fields_are_named(data_dir: Path, field: str, value: object, message: str) -> None:
    index_path = data_dir / "tokens" / INDEX_FILE
    index = json.loads(index_path.read_text())
    index[field] = value
    index_path.write_text(json.dumps(index))
    with pytest.raises(TrainDataError, match=message):
        dataset(data_dir)


# --- ShardedBatches --------------------------------------------------------------------------------------------------


def test_step_shapes_and_accumulation(data_dir: Path) -> None:
    (reader,) = readers(dataset(data_dir), 1, global_batch=12, micro_batch=3)
    assert reader.accumulation == 4
    step = reader.next_step()
    assert len(step) == 4
    assert all(batch.dtype == torch.int64 and batch.shape == (3, SEQ_LEN) for batch in step)


def test_batches_hold_the_dataset_tokens(data_dir: Path) -> None:
    data = dataset(data_dir)
    expected = [sequence.astype(np.int64) for sequence in read_sequences(data_dir / "tokens")]
    for batch in readers(data, 1)[0].next_step():
        for row in batch.numpy():
            np.testing.assert_array_equal(row, expected[int(row[0])])


def test_same_seed_same_batches_different_seed_different_order(data_dir: Path) -> None:
    data = dataset(data_dir)
    first = [ids(step) for step in run(readers(data, 1, seed=3)[0], 10)]
    again = [ids(step) for step in run(readers(data, 1, seed=3)[0], 10)]
    other = [ids(step) for step in run(readers(data, 1, seed=4)[0], 10)]
    assert first == again
    assert first != other
    epoch = [i for step in first[:6] for i in step]
    assert epoch != sorted(epoch)  # a shuffle, not the file order


def test_ranks_partition_every_global_batch_and_an_epoch_drops_only_the_remainder(data_dir: Path) -> None:
    data = dataset(data_dir)  # 50 sequences, global batch 8: 6 steps an epoch, 2 skipped
    ranks = readers(data, 2)
    (single,) = readers(data, 1, micro_batch=4)
    epoch: list[int] = []
    for _ in range(6):
        per_rank = [ids(reader.next_step()) for reader in ranks]
        assert all(len(part) == 4 for part in per_rank)
        global_batch = per_rank[0] + per_rank[1]
        assert len(set(global_batch)) == 8  # no overlap between ranks
        assert global_batch == ids(single.next_step())  # the order does not depend on world_size or micro_batch
        epoch += global_batch
    assert len(set(epoch)) == 48
    assert set(epoch) <= set(range(50))
    assert all(reader.position == DataPosition(epoch=1, consumed=0) for reader in ranks)
    next_epoch = [ids(reader.next_step()) for reader in ranks]
    assert next_epoch[0] + next_epoch[1] != epoch[:8]  # a fresh permutation


def test_an_exact_epoch_skips_nothing(tmp_path: Path) -> None:
    data = dataset(write_packed(tmp_path, sequences=48))
    (reader,) = readers(data, 1)
    seen = [i for step in run(reader, 6) for i in ids(step)]
    assert sorted(seen) == list(range(48))
    assert reader.position == DataPosition(epoch=1, consumed=0)


@pytest.mark.parametrize("steps", [0, 1, 3, 6, 7, 13])  # 6 steps an epoch: resume at, before and after the boundary
def test_resuming_from_a_saved_position_continues_the_same_batches(data_dir: Path, steps: int) -> None:
    data = dataset(data_dir)
    uninterrupted = [[ids(step) for step in run(reader, steps + 8)] for reader in readers(data, 2)]
    for rank, reader in enumerate(readers(data, 2)):
        run(reader, steps)
        saved = reader.position.to_json()
        resumed = ShardedBatches(
            data,
            seed=7,
            global_batch=8,
            micro_batch=2,
            rank=rank,
            world_size=2,
            position=DataPosition.parse_text(saved, "trainer_state.json"),
        )
        assert resumed.position == reader.position
        assert [ids(step) for step in run(resumed, 8)] == uninterrupted[rank][steps:]


def test_position_round_trips_and_bad_positions_are_named() -> None:
    position = DataPosition(epoch=2, consumed=16)
    assert DataPosition.parse_text(position.to_json(), "state.json") == position
    for bad, key in (
        ('{"epoch": 1}', "consumed"),
        ('{"epoch": -1, "consumed": 0}', "epoch"),
        ('{"epoch": 0, "consumed": "8"}', "consumed"),
        ('{"epoch": true, "consumed": 0}', "epoch"),
        ('{"epoch": 0, "consumed": 0, "step": 3}', "step"),
    ):
        with pytest.raises(RecordError, match=rf"^data position state\.json(:1)?: {key}: "):
            DataPosition.parse_text(bad, "state.json")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"global_batch": 10, "micro_batch": 4, "world_size": 1}, r"global_batch 10.*micro_batch 4.*world_size 1"),
        ({"global_batch": 8, "micro_batch": 2, "world_size": 3}, r"global_batch 8.*micro_batch 2.*world_size 3"),
        ({"global_batch": 64, "micro_batch": 8, "world_size": 2}, r"50 sequences.*global_batch of 64"),
        ({"global_batch": 8, "micro_batch": 0, "world_size": 1}, r"micro_batch"),
        ({"global_batch": 8, "micro_batch": 2, "world_size": 2, "rank": 2}, r"rank is 2.*world_size is 2"),
        ({"global_batch": 8, "micro_batch": 2, "world_size": 1, "seed": -1}, r"seed"),
    ],
)
def test_inconsistent_batch_settings_are_refused(data_dir: Path, options: dict[str, int], message: str) -> None:
    settings = {"seed": 0, "rank": 0, **options}
    with pytest.raises(TrainDataError, match=message):
        ShardedBatches(dataset(data_dir), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("consumed", [4, 56])  # not a step boundary; beyond the dataset
def test_a_position_from_another_batch_size_or_dataset_is_refused(data_dir: Path, consumed: int) -> None:
    with pytest.raises(TrainDataError, match=rf"consumed {consumed}.*global_batch 8"):
        ShardedBatches(
            dataset(data_dir),
            seed=0,
            global_batch=8,
            micro_batch=2,
            rank=0,
            world_size=1,
            position=DataPosition(epoch=0, consumed=consumed),
        )


def test_the_tokenizer_kept_with_the_tokens_is_found_and_checked(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in TOKENIZER_FILES:
        (tokenizer / name).write_text(f"{name} of the tokenizer that encoded the data\n")
    writer = PackedWriter(tmp_path / "tokens", seq_len=8, vocab_size=64, eos_id=0, pad_id=1, tokenizer_dir=tokenizer)
    writer.add(list(range(2, 20)))
    writer.close()
    dataset = PackedDataset(tmp_path, seq_len=8, vocab_size=64)
    assert dataset.tokenizer_dir == tmp_path / "tokens" / "tokenizer"
    (dataset.tokenizer_dir / "tokenizer.json").write_text("altered\n")
    with pytest.raises(TrainDataError, match=r"tokenizer\.json: sha256 differs from index\.json"):
        PackedDataset(tmp_path, seq_len=8, vocab_size=64)
