"""Weights as the training job's own partitions: every rank writes its part, no rank ever holds the whole model.

A checkpoint `oracle train` writes holds, beside `config.json`:

- `model.partitions.json` (written by rank 0): the layout — the number of parts, and for every tensor its dtype, its
  full shape and its part size P;
- `model-rank-RRRRR-of-NNNNN.safetensors` (written by rank r): for every tensor, the elements [r*P, min((r+1)*P,
  numel)) of the tensor flattened in row-major order, as one 1-D tensor under the tensor's name (left out when that
  range is empty).

Under ZeRO-3 that range is exactly the rank's own `ds_tensor`: DeepSpeed partitions each flattened parameter into
equal parts of ceil(numel / world) elements, padded at the end, so a rank writes what it already holds, with no
communication. Under ZeRO 0-2 every rank holds whole parameters and writes the same range of them, so the layout is
one whatever the stage. Persistent buffers (the routers' balancing biases) are the same on every rank: rank 0 writes
them whole (P = numel).

With expert parallelism a routed expert stack is not one flat partition over all ranks: rank r holds the experts of
its expert-parallel rank, partitioned by ZeRO over the ranks that hold the same experts. Such a tensor's layout lists
every rank's range explicitly (`spans`, [begin, end) per rank, in rank order); together the ranges tile the tensor
exactly once, so readers place and read them like any other part. `expert_parallel_spans` computes them.

Readers never assemble more than they need. `load_partitioned` (serving) streams one part file at a time into the
model's own tensors, each file read once and hashed on the bytes used; `PartitionedReader` (export) reads any flat
range of a tensor, touching only the part files and bytes that hold it. Pickle is never written or read: DeepSpeed's
own per-rank files (`deepspeed/`) are for resuming only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError, safe_open

from oracle.moe850b.weights import DTYPES, CheckpointError, small_file, stream_verified
from oracle_base.validation import describe_validation_error
from oracle_base.weight_files import PARTITIONS_FILE, part_file

FORMAT: Final = "oracle.rank-partitions"
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


class TensorLayout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    dtype: str
    shape: list[int]
    part: int = Field(ge=1)  # elements per rank: rank r holds [r*part, min((r+1)*part, numel))
    # explicit [begin, end) per rank instead (expert-parallel expert stacks); `part` is then the longest range
    spans: list[tuple[int, int]] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def span(self, rank: int) -> tuple[int, int]:
        """The flat element range rank `rank` holds (empty when begin == end)."""
        if self.spans is not None:
            return self.spans[rank]
        begin = min(rank * self.part, self.numel)
        return begin, min(begin + self.part, self.numel)

    def ranks_in_order(self, world_size: int) -> list[int]:
        """The ranks sorted by the start of their range (the rank order itself unless `spans` says otherwise)."""
        return sorted(range(world_size), key=lambda rank: self.span(rank))


class PartitionIndex(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["oracle.rank-partitions"]
    world_size: int = Field(ge=1, le=99_999)
    tensors: dict[str, TensorLayout]

    @model_validator(mode="after")
    def _covering(self) -> PartitionIndex:
        for name, layout in self.tensors.items():
            if layout.dtype not in DTYPES:
                raise ValueError(f"tensor {name!r}: unknown dtype {layout.dtype!r}")
            if any(n < 0 for n in layout.shape):
                raise ValueError(f"tensor {name!r}: negative size in shape {layout.shape}")
            if layout.spans is not None:
                _check_spans(name, layout, self.world_size)
            elif layout.part * self.world_size < layout.numel:
                raise ValueError(
                    f"tensor {name!r}: {self.world_size} parts of {layout.part} elements do not cover its "
                    f"{layout.numel}"
                )
        return self

    def files(self) -> list[str]:
        return [part_file(rank, self.world_size) for rank in range(self.world_size)]

    def held_by(self, rank: int) -> dict[str, tuple[int, int]]:
        """{tensor: its flat range} of what rank `rank`'s file holds (tensors with an empty range are left out)."""
        spans = {name: layout.span(rank) for name, layout in self.tensors.items()}
        return {name: span for name, span in spans.items() if span[1] > span[0]}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"


def _check_spans(name: str, layout: TensorLayout, world_size: int) -> None:
    """Explicit ranges: one per rank, none longer than `part`, tiling [0, numel) exactly once."""
    spans = layout.spans or []
    if len(spans) != world_size:
        raise ValueError(f"tensor {name!r}: {len(spans)} ranges for {world_size} ranks")
    if any(not 0 <= begin <= end <= layout.numel for begin, end in spans):
        raise ValueError(f"tensor {name!r}: its ranges {spans} leave [0, {layout.numel}]")
    covered = 0
    for begin, end in sorted(spans):
        if begin == end:
            continue
        if begin != covered or end < begin or end - begin > layout.part:
            raise ValueError(f"tensor {name!r}: its ranges {spans} do not tile its {layout.numel} elements once")
        covered = end
    if covered != layout.numel:
        raise ValueError(f"tensor {name!r}: its ranges {spans} do not tile its {layout.numel} elements once")


def expert_parallel_spans(numel: int, n_experts: int, ep_size: int, world_size: int) -> list[tuple[int, int]]:
    """Every rank's flat range of an expert stack of `numel` elements over `n_experts` experts (leading dimension)
    under expert parallelism `ep_size`, in DeepSpeed's expert-and-data topology: rank r is expert-parallel rank
    r % ep_size (experts [e·L, (e+1)·L), L = n_experts / ep_size) and ZeRO partition r // ep_size of those experts
    over the world_size / ep_size ranks holding them (ceil-sized parts, the last one short)."""
    if n_experts % ep_size or world_size % ep_size or numel % n_experts:
        raise ValueError(f"{n_experts} experts ({numel} elements) over {ep_size} of {world_size} ranks do not divide")
    local = numel // ep_size
    edp = world_size // ep_size
    part = max(1, math.ceil(local / edp))
    spans = []
    for rank in range(world_size):
        base, first = (rank % ep_size) * local, min((rank // ep_size) * part, local)
        spans.append((base + first, base + min(first + part, local)))
    return spans


def parse_index(data: bytes, path: Path) -> PartitionIndex:
    """The index in `data` (the bytes of `path`, the ones checked against the signed record); CheckpointError names
    the file, the line and the key of each problem."""
    try:
        return PartitionIndex.model_validate_json(data)
    except ValidationError as exc:
        fix = "it is written by `oracle train` (oracle/moe850b/partitioned.py): use another checkpoint"
        text = data.decode("utf-8", errors="replace")
        raise CheckpointError(f"partition index {describe_validation_error(path, text, exc, fix=fix)}") from exc


def read_index(directory: Path, expected_sha256: Mapping[str, str] | None) -> PartitionIndex:
    path = directory / PARTITIONS_FILE
    return parse_index(small_file(path, expected_sha256), path)


def check_against(index: PartitionIndex, expected: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """The index describes exactly the tensors `expected` names (name -> shape), with those shapes."""
    missing = sorted(set(expected) - set(index.tensors))
    unexpected = sorted(set(index.tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match config.json (missing: {missing[:5]}, unexpected: {unexpected[:5]}); the "
            "weights and config.json come from different models"
        )
    for name, layout in index.tensors.items():
        if tuple(layout.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(layout.shape)}, the config expects {tuple(expected[name])}"
            )


def _check_part(found: Mapping[str, tuple[str, tuple[int, ...]]], index: PartitionIndex, rank: int, path: Path) -> None:
    """A part file holds exactly the 1-D ranges the index gives its rank, in the index's dtypes
    (`found`: name -> (safetensors dtype, shape))."""
    held = index.held_by(rank)
    if set(found) != set(held):
        stray, absent = sorted(set(found) - set(held)), sorted(set(held) - set(found))
        raise CheckpointError(
            f"{path}: holds tensors its rank does not ({stray[:3]}) or lacks ones it does ({absent[:3]}) by "
            f"{PARTITIONS_FILE}; the part files and their index come from different saves"
        )
    for name, (dtype, shape) in found.items():
        begin, end = held[name]
        layout = index.tensors[name]
        if dtype != layout.dtype or shape != (end - begin,):
            raise CheckpointError(
                f"{path}: tensor {name!r} is {dtype} {list(shape)}, {PARTITIONS_FILE} says {layout.dtype} "
                f"[{end - begin}]; the part files and their index come from different saves"
            )


def load_partitioned(
    directory: Path,
    expected: Mapping[str, tuple[int, ...]],
    device: torch.device,
    expected_sha256: Mapping[str, str] | None,
) -> dict[str, torch.Tensor]:
    """The full tensors, assembled on `device` from the part files read one after another. With `expected_sha256`
    every file is read once, its header checked against the index before any data, hashed on the bytes used, and
    refused unless listed: on the host the bytes go straight into the model's tensors (one copy of the weights); for
    a device they pass through host buffers one part file at a time."""
    index = read_index(directory, expected_sha256)
    check_against(index, expected, directory / PARTITIONS_FILE)
    flat = {
        name: torch.empty(layout.numel, dtype=layout.torch_dtype, device=device)
        for name, layout in index.tensors.items()
    }
    on_host = device.type == "cpu"  # read straight into the model's tensors: host memory holds one copy
    for rank, name in enumerate(index.files()):
        path = directory / name
        held = index.held_by(rank)
        if expected_sha256 is None:
            parts = _load_unverified(path)
            _check_part({k: (dtype_name(t.dtype), tuple(t.shape)) for k, t in parts.items()}, index, rank, path)
            _place(flat, parts, held)
            del parts  # before the next file is read
        elif name not in expected_sha256:
            raise CheckpointError(f"{path}: no verified sha256 was given for it; list it in the provenance record")
        else:

            def destinations(
                header: list[tuple[str, torch.dtype, tuple[int, ...]]],
                rank: int = rank,
                path: Path = path,
                held: dict[str, tuple[int, int]] = held,
            ) -> Callable[[str], torch.Tensor]:
                _check_part({n: (dtype_name(d), s) for n, d, s in header}, index, rank, path)  # before any data
                if on_host:
                    return lambda n: flat[n][held[n][0] : held[n][1]]
                return lambda n: torch.empty(held[n][1] - held[n][0], dtype=index.tensors[n].torch_dtype)

            parts = stream_verified(path, expected_sha256[name], torch.device("cpu"), into=destinations)
            if not on_host:  # verified on the host, then moved: one part file's worth of host memory at a time
                _place(flat, parts, held)
            del parts
    return {name: flat[name].view(layout.shape) for name, layout in index.tensors.items()}


def _place(flat: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], held: dict[str, tuple[int, int]]) -> None:
    """Copy one part file's ranges into the model's flat tensors."""
    for name, (begin, end) in held.items():
        flat[name][begin:end].copy_(parts[name])


def _load_unverified(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


@dataclass
class PartitionedReader:
    """Flat ranges of the tensors of a partitioned checkpoint, read lazily (safetensors' memory map): a read touches
    only the part files, and the bytes of them, that hold the range. Use as a context manager."""

    directory: Path
    index: PartitionIndex
    sources: Mapping[str, str] | None = None  # part file name -> the path to open it by (e.g. a pinned descriptor)

    def __post_init__(self) -> None:
        self._stack = ExitStack()
        self._handles: dict[int, Any] = {}

    def __enter__(self) -> PartitionedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._handles.clear()

    def check_headers(self) -> None:
        """Every part file's header against the index (names, dtypes, lengths), before anything is converted."""
        for rank in range(self.index.world_size):
            handle, path = self._handle(rank), self.directory / part_file(rank, self.index.world_size)
            found = {}
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                view = handle.get_slice(name)
                found[name] = (view.get_dtype(), tuple(view.get_shape()))
            _check_part(found, self.index, rank, path)

    def read(self, name: str, begin: int, end: int) -> torch.Tensor:
        """Elements [begin, end) of tensor `name` flattened, as a new 1-D tensor."""
        layout = self.index.tensors[name]
        if not 0 <= begin <= end <= layout.numel:
            raise CheckpointError(f"{name}: range [{begin}, {end}) is outside its {layout.numel} elements")
        out = torch.empty(end - begin, dtype=layout.torch_dtype)
        filled = 0
        for piece in self._pieces(layout, name, begin, end):  # one piece alive at a time, copied into place
            out[filled : filled + piece.numel()].copy_(piece)
            filled += piece.numel()
        return out

    def read_tensor(self, name: str) -> torch.Tensor:
        layout = self.index.tensors[name]
        return self.read(name, 0, layout.numel).view(layout.shape)

    def _pieces(self, layout: TensorLayout, name: str, begin: int, end: int) -> Iterator[torch.Tensor]:
        for rank in layout.ranks_in_order(self.index.world_size):
            lo, hi = layout.span(rank)
            if lo >= end:
                break
            take_lo, take_hi = max(lo, begin), min(hi, end)
            if take_hi > take_lo:
                yield self._handle(rank).get_slice(name)[take_lo - lo : take_hi - lo]

    def _handle(self, rank: int) -> Any:
        if rank not in self._handles:
            name = part_file(rank, self.index.world_size)
            path = self.directory / name
            opened = self.sources[name] if self.sources is not None else str(path)
            try:
                self._handles[rank] = self._stack.enter_context(safe_open(opened, framework="pt"))
            except (OSError, SafetensorError) as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        return self._handles[rank]


def own_part(
    model: torch.nn.Module, *, rank: int, world_size: int, zero3: bool
) -> tuple[PartitionIndex, dict[str, torch.Tensor]]:
    """The layout of the whole model and this rank's part of it (oracle.moe850b.partitioned), without communication:
    under ZeRO-3 the part of a parameter is the rank's own `ds_tensor` (DeepSpeed's partition: ceil(numel / world)
    elements, padded at the end), otherwise the same range of the whole parameter every rank holds. The tensors are
    views of what the rank holds (copied to the host one at a time when they live on a device), never a gather."""
    layouts: dict[str, TensorLayout] = {}
    parts: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():  # tied weights appear once
        ep_size = getattr(param, EP_SIZE_ATTR, 1)
        if ep_size > 1:  # this rank's experts, ZeRO-partitioned over the ranks holding the same experts
            layout, local = _expert_stack_layout(name, param, ep_size, world_size, zero3=zero3)
            begin, end = layout.span(rank)
            if end > begin:
                parts[name] = local[: end - begin].to("cpu").contiguous()
            layouts[name] = layout
            continue
        if zero3:
            sharded: Any = param  # DeepSpeed's attributes of a partitioned parameter
            shape, local = tuple(sharded.ds_shape), sharded.ds_tensor.detach().reshape(-1)
            part = int(sharded.partition_numel())
        else:
            shape, local = tuple(param.shape), param.detach().reshape(-1)
            part = max(1, math.ceil(local.numel() / world_size))
        layout = TensorLayout(dtype=dtype_name(param.dtype), shape=list(shape), part=part)
        begin, end = layout.span(rank)
        if end > begin:
            parts[name] = (local[: end - begin] if zero3 else local[begin:end]).to("cpu").contiguous()
        layouts[name] = layout
    persistent = set(model.state_dict())
    for name, buffer in model.named_buffers():  # the same on every rank: rank 0 holds them whole
        if name in persistent:
            layouts[name] = TensorLayout(dtype=dtype_name(buffer.dtype), shape=list(buffer.shape), part=buffer.numel())
            if rank == 0:
                parts[name] = buffer.detach().to("cpu").contiguous()
    index = PartitionIndex(format=FORMAT, world_size=world_size, tensors=layouts)
    return index, parts


EP_SIZE_ATTR: Final = "oracle_expert_parallel_size"  # set by the trainer on the expert stacks it shards by expert


def _expert_stack_layout(
    name: str, param: torch.nn.Parameter, ep_size: int, world_size: int, *, zero3: bool
) -> tuple[TensorLayout, torch.Tensor]:
    """The layout of an expert-parallel expert stack (its logical shape has ep_size times the local experts) and
    this rank's flat piece of it: its ZeRO partition of the local experts (expert_parallel_spans)."""
    if not zero3:
        raise ValueError(f"{name}: expert-parallel expert stacks are written from ZeRO-3 partitions only")
    sharded: Any = param
    local_shape = tuple(sharded.ds_shape)
    shape = [local_shape[0] * ep_size, *local_shape[1:]]
    numel = math.prod(shape)
    spans = expert_parallel_spans(numel, shape[0], ep_size, world_size)
    part = max(end - begin for begin, end in spans)
    if int(sharded.partition_numel()) != part:
        raise ValueError(
            f"{name}: DeepSpeed partitions it in {sharded.partition_numel()} elements per rank, the expert-parallel "
            f"layout expects {part}; the expert-data-parallel group is not DeepSpeed's expert-and-data topology"
        )
    layout = TensorLayout(dtype=dtype_name(param.dtype), shape=shape, part=part, spans=spans)
    return layout, sharded.ds_tensor.detach().reshape(-1)


def save_partitioned(model: torch.nn.Module, directory: Path, world_size: int) -> PartitionIndex:
    """Write `model` as a training job of `world_size` ranks would (every part file and the index), from one process:
    for tests, benchmarks and tools. The config is not written."""
    from oracle_base.atomic_write import write_atomically

    directory.mkdir(parents=True, exist_ok=True)
    index = None
    for rank in range(world_size):
        index, parts = own_part(model, rank=rank, world_size=world_size, zero3=False)
        write_atomically(directory / part_file(rank, world_size), _writer(parts))
    assert index is not None
    write_atomically(directory / PARTITIONS_FILE, index.to_json())
    return index


def _writer(parts: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    from safetensors.torch import save_file

    return lambda tmp: save_file(parts, str(tmp), metadata={"format": "pt"})
