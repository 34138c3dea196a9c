"""Model weights on disk: `model.safetensors` with `config.json` beside it; or, for a large model, shards
`model-0000k-of-0000n.safetensors` listed by `model.safetensors.index.json` (huggingface_hub's layout: `weight_map`
tensor -> shard file); or the per-rank parts a training job writes, `model-rank-RRRRR-of-NNNNN.safetensors` listed by
`model.partitions.json` (oracle.moe850b.partitioned). Pickle is never written or read.

Writes go to temporary files that are renamed into place, so a crash never leaves half a checkpoint.

A load with verified digests streams: each file is opened once, its safetensors header parsed and validated here,
and every tensor read straight from that open file into its own buffer while the bytes are hashed, so host memory
holds about one copy of the weights and the digest is computed over the very bytes the tensors hold (a file changed
or swapped after an earlier check is refused; everything read from it is dropped).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from oracle.core.rope import RotaryEmbedding
from oracle.moe850b.config import ConfigError, load_config, parse_config
from oracle.moe850b.model import OracleMoE
from oracle_base.atomic_write import write_atomically
from oracle_base.bounded_read import read_regular_file
from oracle_base.errors import ConfigurationError
from oracle_base.weight_files import CONFIG_FILE as CONFIG_FILE  # re-exported: the names weights live under
from oracle_base.weight_files import PARTITIONS_FILE
from oracle_base.weight_files import WEIGHTS_FILE as WEIGHTS_FILE
from oracle_base.weight_files import WEIGHTS_INDEX_FILE as WEIGHTS_INDEX_FILE

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
READ_CHUNK_BYTES = 16 << 20  # hashed while still in cache
# safetensors' dtype names (its format specification) and the torch dtypes they load as
DTYPES: Mapping[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


class CheckpointError(ConfigurationError, ValueError):
    """A checkpoint that cannot be loaded into the model; the message names the file and tensor."""


def _stored_state(model: OracleMoE) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds: the state dict without the LM head when it is tied to the embeddings."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # the same storage as embed_tokens.weight
    return state


def save_checkpoint(model: OracleMoE, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in _stored_state(model).items()}
    write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_atomically(directory / CONFIG_FILE, json.dumps(model.config.model_dump(mode="json"), indent=2) + "\n")
    return directory


def load_checkpoint(
    directory: str | Path, *, device: str | torch.device = "cpu", expected_sha256: Mapping[str, str] | None = None
) -> OracleMoE:
    """The model saved in `directory`: `model.safetensors`, or when there is none, the shards its
    `model.safetensors.index.json` lists, loaded one after another. With `expected_sha256` ({file name: sha256},
    e.g. from a verified provenance record), config.json, the index and every weights file must be listed; each
    weights file is read once, straight into the tensors, and hashed on the bytes they hold, so a file changed after
    an earlier check is refused, never loaded. Host memory holds about one copy of the weights while loading."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    try:
        if expected_sha256 is None:
            config = load_config(config_path)
        else:
            config = parse_config(checked_bytes(config_path, expected_sha256).decode("utf-8"), config_path)
    except (ConfigError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{exc}; a checkpoint needs a valid config.json beside its weights") from exc
    with torch.device("meta"):
        model = OracleMoE(config)
    expected = {name: tuple(t.shape) for name, t in _stored_state(model).items()}
    weights_path, tensors = _load_weights(directory, torch.device(device), expected_sha256, expected)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: tensors do not match {config_path.name} (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}); save the checkpoint again with the matching config"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)}, the config expects "
                f"{expected[name]}; the weights and config.json come from different models"
            )
    model.load_state_dict(tensors, strict=not config.tie_embeddings, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # The rotary tables are not stored (non-persistent buffers): rebuild them on the target device.
    model.rope = RotaryEmbedding(config.resolved_head_dim, config.context_length, config.rope_theta).to(device)
    return model


def _load_weights(
    directory: Path,
    device: torch.device,
    expected_sha256: Mapping[str, str] | None,
    expected: Mapping[str, tuple[int, ...]],
) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the file that names the weights, the tensors): the single file when there is one, else the shards of a
    Hub-style index, else the training job's per-rank parts (oracle.moe850b.partitioned). A folder with more than
    one of these is refused: which weights it means would be a guess."""
    from oracle.moe850b.partitioned import load_partitioned

    single = directory / WEIGHTS_FILE
    index_path = directory / WEIGHTS_INDEX_FILE
    partitions = directory / PARTITIONS_FILE
    present = [path.name for path in (single, index_path, partitions) if path.exists()]
    if len(present) > 1:
        raise CheckpointError(
            f"{directory}: holds {' and '.join(present)}; a checkpoint has one layout of weights, remove the others"
        )
    if partitions.exists():
        return partitions, load_partitioned(directory, expected, device, expected_sha256)
    if single.exists() or not index_path.exists():
        return single, _load_file(single, device, expected_sha256)
    shards = _shard_assignment(index_path, expected_sha256)
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in shards.items():
        shard_path = directory / shard
        found = _load_file(shard_path, device, expected_sha256)
        unassigned = sorted(set(found) - names)
        absent = sorted(names - set(found))
        if unassigned or absent:
            raise CheckpointError(
                f"{shard_path}: holds tensors {index_path.name} does not assign to it ({unassigned[:5]}) or lacks "
                f"ones it does ({absent[:5]}); write the shards and their index again together"
            )
        tensors.update(found)
    return index_path, tensors


def _shard_assignment(index_path: Path, expected_sha256: Mapping[str, str] | None) -> dict[str, set[str]]:
    """{shard file: the tensors the index assigns to it}, in file order; every shard a plain file name beside the
    index and, for a verified load, one whose digest is given."""
    data = small_file(index_path, expected_sha256)
    try:
        index = json.loads(data, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{index_path}: not a readable shard index ({exc}); write it again") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{index_path}: no `weight_map` of tensor name -> shard file; write it again")
    shards: dict[str, set[str]] = {}
    for name, shard in sorted(weight_map.items(), key=lambda item: item[1]):
        shards.setdefault(shard, set()).add(name)
    for shard in shards:
        if Path(shard).name != shard or shard in (".", "..") or not shard.endswith(".safetensors"):
            raise CheckpointError(
                f"{index_path}: names {shard!r}, not a .safetensors file beside it; shards sit next to their index"
            )
        if expected_sha256 is not None and shard not in expected_sha256:
            raise CheckpointError(
                f"{index_path}: names {shard}, for which no verified sha256 was given; list it in the provenance record"
            )
    return shards


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def _load_file(path: Path, device: torch.device, expected_sha256: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    if expected_sha256 is None:
        try:
            return load_file(path, device=str(device))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if path.name not in expected_sha256:
        raise CheckpointError(f"{path}: no verified sha256 was given for it; list it in the provenance record")
    return stream_verified(path, expected_sha256[path.name], device)


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data region, after the header
    end: int


# Where a streamed tensor goes: given the header's (name, dtype, shape) of every tensor (to check before any data is
# read), a function that returns, per tensor, the CPU tensor of that dtype and shape to read its bytes into.
Destinations = Callable[[list[tuple[str, torch.dtype, tuple[int, ...]]]], Callable[[str], torch.Tensor]]


def stream_verified(
    path: Path, sha256: str, device: torch.device, *, into: Destinations | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path`, read once from one open file into their own buffers (or, with
    `into`, straight into the caller's tensors: no second copy); the sha256 is computed over the header and those
    very bytes, and any difference from `sha256` discards them all (a caller reading `into` its own tensors must
    drop them on a CheckpointError)."""
    if sys.byteorder != "little":
        raise CheckpointError(f"{path}: safetensors stores little-endian bytes; load it on a little-endian host")
    digest = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb", buffering=0) as handle:  # one open: every byte hashed comes from this file object
            size = os.fstat(handle.fileno()).st_size
            prefix = _read_exactly(handle, 8, path, digest)
            header_length = int.from_bytes(prefix, "little")
            if header_length > min(size - 8, MAX_HEADER_BYTES):
                raise _malformed(path, f"a header of {header_length} bytes in a file of {size}")
            header = _read_exactly(handle, header_length, path, digest)
            entries = _parse_header(header, path, data_size=size - 8 - header_length)
            target = into([(e.name, e.dtype, e.shape) for e in entries]) if into is not None else None
            for entry in entries:
                if target is not None:
                    tensor = target(entry.name)
                    if not tensor.is_contiguous() or tensor.device.type != "cpu":
                        raise ValueError(f"{entry.name}: a destination must be a contiguous CPU tensor")
                    buffer = tensor.view(-1).view(torch.uint8)
                else:
                    buffer = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
                view = memoryview(buffer.numpy())  # type: ignore[arg-type]  # an ndarray is a buffer; its stubs omit it
                _read_into(handle, view, path, digest)
                tensors[entry.name] = buffer.view(entry.dtype).reshape(entry.shape).to(device)
            if handle.read(1):
                raise CheckpointError(f"{path}: it grew while being read (the file changed after the check)")
        if digest.hexdigest() != sha256:
            raise CheckpointError(f"{path}: its sha256 is not the verified one (the file changed after the check)")
    except BaseException as exc:
        tensors.clear()  # nothing read from a refused file outlives the refusal (its traceback keeps this frame)
        if isinstance(exc, OSError):
            raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from exc
        raise
    return tensors


def _read_exactly(handle: io.FileIO, count: int, path: Path, digest: hashlib._Hash) -> bytes:
    data = bytearray(count)
    _read_into(handle, memoryview(data), path, digest)
    return bytes(data)


def _read_into(handle: io.FileIO, view: memoryview, path: Path, digest: hashlib._Hash) -> None:
    """Fill `view` from `handle`, hashing each chunk once it holds the bytes read (the bytes kept, not a copy)."""
    view = view.cast("B")
    filled = 0
    while filled < len(view):
        chunk = view[filled : filled + READ_CHUNK_BYTES]
        count = handle.readinto(chunk)
        if not count:
            raise CheckpointError(f"{path}: it ends early (truncated, or changed after the check)")
        digest.update(chunk[:count])
        filled += count


def _malformed(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file ({reason}); save the checkpoint again")


def _parse_header(header: bytes, path: Path, *, data_size: int) -> list[_Entry]:
    """The header's tensors in offset order, checked strictly: known dtypes, byte lengths that match the shapes,
    offsets that tile the data region exactly (no gap, overlap or byte outside it)."""
    try:
        table = json.loads(header, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise _malformed(path, f"its header is not JSON: {exc}") from exc
    if not isinstance(table, dict):
        raise _malformed(path, "its header is not a JSON object")
    metadata = table.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _malformed(path, "`__metadata__` is not a mapping of strings")
    entries = [_entry(name, spec, path) for name, spec in table.items()]
    entries.sort(key=lambda entry: (entry.begin, entry.end))
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise _malformed(path, f"tensor {entry.name!r} starts at byte {entry.begin}, not {position}")
        position = entry.end
    if position != data_size:
        raise _malformed(path, f"the tensors end at byte {position} of a data region of {data_size} bytes")
    return entries


def _entry(name: str, spec: object, path: Path) -> _Entry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise _malformed(path, f"tensor {name!r} needs exactly `dtype`, `shape` and `data_offsets`")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _malformed(path, f"tensor {name!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _malformed(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets):
        raise _malformed(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if not 0 <= begin <= end or end - begin != expected:
        raise _malformed(path, f"tensor {name!r} spans bytes {begin}..{end}, its {dtype} {shape} needs {expected}")
    return _Entry(name, DTYPES[dtype], tuple(shape), begin, end)


def small_file(path: Path, expected_sha256: Mapping[str, str] | None) -> bytes:
    """A small file (config, index) read once, and checked whole when digests are given."""
    if expected_sha256 is not None:
        return checked_bytes(path, expected_sha256)
    try:
        return read_regular_file(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from exc


def checked_bytes(path: Path, expected_sha256: Mapping[str, str]) -> bytes:
    """A small file (config, index) read once and checked whole: what is parsed is what was hashed."""
    if path.name not in expected_sha256:
        raise CheckpointError(f"{path}: no verified sha256 was given for it; list it in the provenance record")
    try:
        data = read_regular_file(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != expected_sha256[path.name]:
        raise CheckpointError(f"{path}: its sha256 is not the verified one (the file changed after the check)")
    return data
