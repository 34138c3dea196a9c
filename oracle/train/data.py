"""The training data reader: packed token sequences (oracle/data/format.py) as deterministic, resumable batches.

`PackedDataset` reads a `tokens/` folder's index by its schema (oracle_base.records.training.PackedIndex, the one the
packer writes with), checks it against the training config and the files on disk, and memory-maps them read-only.
`ShardedBatches` turns it into one optimizer step at a time for data-parallel training: each epoch has a global order,
a permutation of every sequence drawn from `(seed, epoch)`; a step takes the next `global_batch` sequences of it, rank
`r` takes its contiguous share and cuts it into micro-batches. Where the reader is (`DataPosition`: epoch and sequences
consumed) is all a checkpoint needs to resume on exactly the next batch; an epoch's remainder smaller than a global
batch is skipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from oracle.data.format import INDEX_FILE, TOKENIZER_DIR, PackedFormatError, parse_index
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle_base.digests import sha256_file
from oracle_base.errors import ConfigurationError
from oracle_base.records.training import DataPosition, PackedIndex

_HINT = "re-run `oracle data run --tokenizer ...` to rewrite the tokens folder"


class TrainDataError(ConfigurationError, ValueError):
    """Training data that cannot be used as configured; the message names the file or field and the fix."""


class PackedDataset:
    """Every sequence of a packed tokens folder, checked against the training config and memory-mapped read-only."""

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
        data = index_path.read_bytes()  # parsed and digested from the same bytes
        try:
            index = parse_index(data, index_path)
        except PackedFormatError as exc:
            raise TrainDataError(f"{exc}; {_HINT}") from exc
        self.directory = directory
        self.index_path = index_path
        self._manifest_sha256 = hashlib.sha256(data).hexdigest()
        if index.seq_len != seq_len:
            raise TrainDataError(
                f"{index_path}: seq_len is {index.seq_len} but the training config's data.seq_len is {seq_len}; "
                f"set data.seq_len to {index.seq_len} or re-pack with `oracle data run --tokenizer ... "
                f"--seq-len {seq_len}`"
            )
        if index.vocab_size > vocab_size:
            raise TrainDataError(
                f"{index_path}: vocab_size is {index.vocab_size} but the model's vocab_size is {vocab_size}, so some "
                "token ids would have no embedding; use the tokenizer the model was configured for or raise the "
                "model's vocab_size"
            )
        self.seq_len, self.vocab_size = seq_len, index.vocab_size
        self.eos_id, self.pad_id = index.eos_id, index.pad_id
        self.dtype = np.dtype(index.dtype).newbyteorder("<")
        self._arrays: list[np.memmap[Any, np.dtype[Any]]] = []
        for entry in index.files:
            path = directory / entry.name
            self._check_file(path, entry.sha256, entry.sequences * seq_len * self.dtype.itemsize, verify=verify)
            self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(entry.sequences, seq_len)))
        self._starts = np.concatenate([[0], np.cumsum([entry.sequences for entry in index.files])]).astype(np.int64)
        self.tokenizer_dir = self._tokenizer(index, verify=verify)

    def _check_file(self, path: Path, sha256: str, size: int | None, *, verify: bool) -> None:
        """A file the index lists is there, of the size it implies (always: cheap), with its sha256 (`verify`)."""
        if not path.is_file():
            raise TrainDataError(f"{path}: listed in {INDEX_FILE} but missing; restore it or {_HINT}")
        if size is not None and path.stat().st_size != size:
            raise TrainDataError(
                f"{path}: {path.stat().st_size} bytes, but {INDEX_FILE} says {size} (sequences x seq_len x "
                f"{self.dtype.itemsize} bytes); the file is truncated or altered: restore it or {_HINT}"
            )
        if verify and sha256_file(path) != sha256:
            raise TrainDataError(f"{path}: sha256 differs from {INDEX_FILE}; it was altered: restore it or {_HINT}")

    def _tokenizer(self, index: PackedIndex, *, verify: bool) -> Path | None:
        """The folder of the tokenizer that encoded these tokens, when the index lists one (checked like the
        token files); training copies it into every checkpoint."""
        if index.tokenizer is None:
            return None
        if set(index.tokenizer) != set(TOKENIZER_FILES):
            message = f"tokenizer must map {', '.join(TOKENIZER_FILES)} to sha256; {_HINT}"
            raise TrainDataError(f"{self.index_path}: {message}")
        folder = self.directory / TOKENIZER_DIR
        for name, digest in index.tokenizer.items():
            self._check_file(folder / name, digest, None, verify=verify)
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
