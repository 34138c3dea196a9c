"""The training data reader: packed token sequences (oracle/data/format.py) as deterministic, resumable batches.

`PackedDataset` validates a `tokens/` folder against the training config and memory-maps its files read-only.
`ShardedBatches` turns it into one optimizer step at a time for data-parallel training: each epoch has a global order,
a permutation of every sequence drawn from `(seed, epoch)`; a step takes the next `global_batch` sequences of it, rank
`r` takes its contiguous share and cuts it into micro-batches. Where the reader is (`DataPosition`: epoch and sequences
consumed) is all a checkpoint needs to resume on exactly the next batch; an epoch's remainder smaller than a global
batch is skipped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from oracle.data.format import FORMAT, INDEX_FILE, TOKENIZER_DIR, PackedFormatError, read_index
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle.train.checkpoint import sha256_file

_DTYPES = {"uint16": 2**16, "uint32": 2**32}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HINT = "re-run `oracle data run --tokenizer ...` to rewrite the tokens folder"


class TrainDataError(ValueError):
    """Training data that cannot be used as configured; the message names the file or field and the fix."""


@dataclass(frozen=True)
class DataPosition:
    """Where the reader is: `consumed` sequences of epoch `epoch`'s global order are already used."""

    epoch: int
    consumed: int

    def __post_init__(self) -> None:
        for name in ("epoch", "consumed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainDataError(f"data position: {name} is {value!r}; it must be an integer >= 0")

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DataPosition:
        values: dict[str, int] = {}
        for name in ("epoch", "consumed"):
            if name not in data:
                raise TrainDataError(
                    f"data position: field {name!r} is missing (got {sorted(data)}); "
                    "save positions with DataPosition.to_dict()"
                )
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrainDataError(f"data position: {name} is {value!r}; it must be an integer >= 0")
            values[name] = value
        unknown = sorted(set(data) - set(values))
        if unknown:
            raise TrainDataError(f"data position: unknown field(s) {unknown}; only 'epoch' and 'consumed' are saved")
        return cls(epoch=values["epoch"], consumed=values["consumed"])


def _index_int(index: Mapping[str, object], key: str, path: Path, minimum: int) -> int:
    value = index.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TrainDataError(f"{path}: {key} is {value!r}, expected an integer >= {minimum}; {_HINT}")
    return value


class PackedDataset:
    """Every sequence of a packed tokens folder, validated against the training config and memory-mapped read-only."""

    def __init__(self, directory: Path, *, seq_len: int, vocab_size: int, verify: bool = True) -> None:
        directory = Path(directory)
        if (directory / "tokens" / INDEX_FILE).is_file():
            directory = directory / "tokens"
        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            raise TrainDataError(
                f"{index_path}: no {INDEX_FILE} here nor in {directory / 'tokens'}; point data.path at the folder "
                f"`oracle data run --tokenizer ...` wrote (it holds tokens/{INDEX_FILE})"
            )
        try:
            index = read_index(directory)
        except PackedFormatError as exc:
            raise TrainDataError(f"{exc}; {INDEX_FILE} must be {FORMAT!r}: {_HINT}") from exc
        self.directory = directory
        self.index_path = index_path
        self._manifest_sha256 = hashlib.sha256(index_path.read_bytes()).hexdigest()

        packed_seq_len = _index_int(index, "seq_len", index_path, 1)
        if packed_seq_len != seq_len:
            raise TrainDataError(
                f"{index_path}: seq_len is {packed_seq_len} but the training config's data.seq_len is {seq_len}; "
                f"set data.seq_len to {packed_seq_len} or re-pack with `oracle data run --tokenizer ... "
                f"--seq-len {seq_len}`"
            )
        self.seq_len = seq_len
        packed_vocab = _index_int(index, "vocab_size", index_path, 1)
        if packed_vocab > vocab_size:
            raise TrainDataError(
                f"{index_path}: vocab_size is {packed_vocab} but the model's vocab_size is {vocab_size}, so some "
                "token ids would have no embedding; use the tokenizer the model was configured for or raise the "
                "model's vocab_size"
            )
        self.vocab_size = packed_vocab
        special: dict[str, int] = {}
        for key in ("eos_id", "pad_id"):
            special[key] = _index_int(index, key, index_path, 0)
            if special[key] >= packed_vocab:
                raise TrainDataError(
                    f"{index_path}: {key} {special[key]} is outside vocab_size {packed_vocab}; {_HINT}"
                )
        self.eos_id = special["eos_id"]
        self.pad_id = special["pad_id"]

        dtype_name = index.get("dtype")
        if dtype_name not in _DTYPES:
            raise TrainDataError(f"{index_path}: dtype is {dtype_name!r}, expected one of {sorted(_DTYPES)}; {_HINT}")
        assert isinstance(dtype_name, str)
        if packed_vocab > _DTYPES[dtype_name]:
            raise TrainDataError(f"{index_path}: dtype {dtype_name} cannot hold vocab_size {packed_vocab}; {_HINT}")
        self.dtype = np.dtype(dtype_name).newbyteorder("<")

        files = index.get("files")
        if not isinstance(files, list) or not files:
            raise TrainDataError(f"{index_path}: files is {files!r}, expected a non-empty list; {_HINT}")
        self._arrays: list[np.memmap[Any, np.dtype[Any]]] = []
        seen: set[str] = set()
        counts: list[int] = []
        for position, entry in enumerate(files):
            where = f"{index_path}: files[{position}]"
            if not isinstance(entry, dict):
                raise TrainDataError(f"{where} is {entry!r}, expected an object with name, sequences, sha256; {_HINT}")
            name = entry.get("name")
            if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
                raise TrainDataError(f"{where}.name is {name!r}, expected a file name inside {directory}; {_HINT}")
            if name in seen:
                raise TrainDataError(f"{where}.name {name!r} is listed twice; {_HINT}")
            seen.add(name)
            sequences = entry.get("sequences")
            if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
                raise TrainDataError(f"{where}.sequences is {sequences!r}, expected an integer >= 1; {_HINT}")
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise TrainDataError(f"{where}.sha256 is {digest!r}, expected 64 lower-case hex digits; {_HINT}")
            path = directory / name
            if not path.is_file():
                raise TrainDataError(f"{path}: listed in {INDEX_FILE} but missing; restore it or {_HINT}")
            expected = sequences * seq_len * self.dtype.itemsize
            size = path.stat().st_size
            if size != expected:
                raise TrainDataError(
                    f"{path}: {size} bytes, but {INDEX_FILE} says {sequences} sequences x {seq_len} tokens x "
                    f"{self.dtype.itemsize} bytes = {expected}; the file is truncated or altered: restore it or {_HINT}"
                )
            if verify and sha256_file(path) != digest:
                raise TrainDataError(
                    f"{path}: sha256 differs from {INDEX_FILE}; the file was altered: restore it or {_HINT}"
                )
            self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(sequences, seq_len)))
            counts.append(sequences)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.tokenizer_dir = self._tokenizer(index, index_path, verify=verify)

    def _tokenizer(self, index: dict[str, object], index_path: Path, *, verify: bool) -> Path | None:
        """The folder of the tokenizer that encoded these tokens, when the index lists one (checked like the
        token files); training copies it into every checkpoint."""
        listed = index.get("tokenizer")
        if listed is None:
            return None
        if not isinstance(listed, dict) or set(listed) != set(TOKENIZER_FILES):
            raise TrainDataError(f"{index_path}: tokenizer must map {', '.join(TOKENIZER_FILES)} to sha256; {_HINT}")
        folder = self.directory / TOKENIZER_DIR
        for name, digest in listed.items():
            path = folder / name
            if not path.is_file():
                raise TrainDataError(f"{path}: listed in {INDEX_FILE} but missing; restore it or {_HINT}")
            if verify and sha256_file(path) != digest:
                raise TrainDataError(f"{path}: sha256 differs from {INDEX_FILE}; restore it or {_HINT}")
        return folder

    def __len__(self) -> int:
        return int(self._starts[-1])

    def sequence(self, index: int) -> npt.NDArray[np.int64]:
        """Sequence `index` (0-based over all files in index order), shape `(seq_len,)`, as int64."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} out of range: {self.directory} holds {len(self)} sequences")
        file = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = index - int(self._starts[file])
        return np.asarray(self._arrays[file][row], dtype=np.int64)

    @property
    def manifest_sha256(self) -> str:
        """sha256 of index.json's bytes: it lists every file's sha256, so it identifies the whole dataset."""
        return self._manifest_sha256


class ShardedBatches:
    """Deterministic, resumable batches for data-parallel training."""

    def __init__(
        self,
        dataset: PackedDataset,
        *,
        seed: int,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        position: DataPosition | None = None,
    ) -> None:
        for name, value, minimum in (
            ("seed", seed, 0),
            ("global_batch", global_batch, 1),
            ("micro_batch", micro_batch, 1),
            ("world_size", world_size, 1),
            ("rank", rank, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise TrainDataError(f"{name} is {value!r}; it must be an integer >= {minimum}")
        if rank >= world_size:
            raise TrainDataError(f"rank is {rank} but world_size is {world_size}; ranks are 0..{world_size - 1}")
        if global_batch % (micro_batch * world_size) != 0:
            raise TrainDataError(
                f"global_batch {global_batch} is not micro_batch {micro_batch} x accumulation x world_size "
                f"{world_size} for any integer accumulation >= 1; set global_batch to a multiple of "
                f"{micro_batch * world_size}"
            )
        if len(dataset) < global_batch:
            raise TrainDataError(
                f"{dataset.index_path}: {len(dataset)} sequences, fewer than one global_batch of {global_batch}; "
                "lower global_batch or pack more data"
            )
        self.dataset = dataset
        self.seed = seed
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self._accumulation = global_batch // (micro_batch * world_size)
        self._order_epoch = -1
        self._order: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        position = position if position is not None else DataPosition(epoch=0, consumed=0)
        if position.consumed % global_batch != 0 or position.consumed > len(dataset):
            raise TrainDataError(
                f"data position: consumed {position.consumed} is not a multiple of global_batch {global_batch} within "
                f"the {len(dataset)} sequences of {dataset.index_path}; resume with the global_batch and dataset the "
                "position was saved with"
            )
        self._position = self._normalised(position)

    @property
    def accumulation(self) -> int:
        return self._accumulation

    @property
    def position(self) -> DataPosition:
        """The position before the next step (save it in the checkpoint to resume on exactly that step)."""
        return self._position

    def _epoch_order(self, epoch: int) -> npt.NDArray[np.int64]:
        """The global order of epoch `epoch`: a permutation of every sequence index, from `(seed, epoch)` only."""
        if epoch != self._order_epoch:
            generator = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._order = generator.permutation(len(self.dataset)).astype(np.int64)
            self._order_epoch = epoch
        return self._order

    def next_step(self) -> list[torch.Tensor]:
        """This rank's `accumulation` micro-batches, each int64 `(micro_batch, seq_len)`, for one optimizer step."""
        epoch, consumed = self._position.epoch, self._position.consumed
        step = self._epoch_order(epoch)[consumed : consumed + self.global_batch]
        per_rank = self.global_batch // self.world_size
        mine = step[self.rank * per_rank : (self.rank + 1) * per_rank]
        rows = np.stack([self.dataset.sequence(int(index)) for index in mine])
        batches = [
            torch.from_numpy(rows[start : start + self.micro_batch].copy())
            for start in range(0, per_rank, self.micro_batch)
        ]
        self._position = self._normalised(DataPosition(epoch=epoch, consumed=consumed + self.global_batch))
        return batches

    def _normalised(self, position: DataPosition) -> DataPosition:
        # Fewer than a global batch left in the epoch: that remainder is skipped and the next epoch begins.
        if position.consumed + self.global_batch > len(self.dataset):
            return DataPosition(epoch=position.epoch + 1, consumed=0)
        return position
