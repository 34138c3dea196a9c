"""Byte-level builders for the corpus: weight files in the formats real tools write them, archives, pointers,
notebooks and compiled bytecode. Each builder is deterministic (seeded), so a case's bytes are the same every run."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import marshal
import pickle
import random
import struct
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64}


def _rng(seed: str) -> random.Random:
    return random.Random(seed)


def tensor_bytes(shape: tuple[int, ...], dtype: str = "F16", seed: str = "w") -> bytes:
    count = 1
    for dim in shape:
        count *= dim
    values = np.random.default_rng(zlib.crc32(seed.encode())).standard_normal(count).astype(np.float32) * 0.02
    if dtype == "BF16":
        return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return values.astype(_DTYPES[dtype]).tobytes()


def safetensors(
    tensors: Mapping[str, tuple[int, ...]],
    dtype: str = "F16",
    metadata: Mapping[str, str] | None = None,
    header_prefix: bytes = b"",
) -> bytes:
    """A safetensors file: little-endian u64 header length, JSON header (optionally led by whitespace, which the
    format allows), then the tensor bytes in header order; the header is padded with spaces to 8 bytes."""
    header: dict[str, object] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, shape in tensors.items():
        blob = tensor_bytes(shape, dtype, name)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = header_prefix + json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def llama_shapes(layers: int = 2, hidden: int = 32, inter: int = 64, vocab: int = 128) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a (tiny) Llama-layout checkpoint."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def torch_checkpoint(shapes: Mapping[str, tuple[int, ...]], wrap: str | None = None) -> bytes:
    """What `torch.save(state_dict, f)` writes (the zip container with data.pkl and the tensor storages)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = OrderedDict((name, torch.randn(*shape, generator=generator) * 0.02) for name, shape in shapes.items())
    buffer = io.BytesIO()
    torch.save({wrap: state} if wrap else state, buffer)
    return buffer.getvalue()


def pickle_protocol0(shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """An old-style checkpoint: a dict of numpy arrays pickled with protocol 0 (text opcodes, no PROTO header)."""
    rng = np.random.default_rng(7)
    state = OrderedDict(
        (name, (rng.standard_normal(shape) * 0.02).astype(np.float32)) for name, shape in shapes.items()
    )
    return pickle.dumps({"epoch": 12, "model": state}, protocol=0)


def flax_msgpack(shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """What `flax.serialization.to_bytes(params)` writes: nested msgpack maps whose leaves are ExtType(1) ndarrays
    (each a msgpack triple of shape, dtype name and raw bytes)."""
    import msgpack  # type: ignore[import-untyped]

    tree: dict[str, object] = {}
    for name, shape in shapes.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        array = np.frombuffer(tensor_bytes(shape, "F32", name), dtype=np.float32).reshape(shape)
        payload = msgpack.packb((list(shape), "float32", array.tobytes()))
        node[leaf] = msgpack.ExtType(1, payload)
    packed = msgpack.packb({"params": tree})
    assert isinstance(packed, bytes)
    return packed


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return key + _varint(payload)
    assert isinstance(payload, bytes)
    return key + _varint(len(payload)) + payload


def onnx_without_producer(shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """An ONNX ModelProto as an exporter that fills in no producer_name writes it: ir_version, a graph of MatMul
    nodes whose initializers carry float32 raw_data, and an opset import."""
    graph = b""
    previous = "input"
    for index, name in enumerate(shapes):
        out = f"h{index}"
        node = (
            _field(1, 2, previous.encode())
            + _field(1, 2, name.encode())
            + _field(2, 2, out.encode())
            + _field(4, 2, b"MatMul")
        )
        graph += _field(1, 2, node)
        previous = out
    graph += _field(2, 2, b"main_graph")
    for name, shape in shapes.items():
        tensor = b"".join(_field(1, 0, dim) for dim in shape) + _field(2, 0, 1)  # dims, data_type FLOAT
        tensor += _field(8, 2, name.encode()) + _field(9, 2, tensor_bytes(shape, "F32", name))
        graph += _field(5, 2, tensor)
    opset = _field(2, 0, 17)
    return _field(1, 0, 8) + _field(7, 2, graph) + _field(8, 2, opset)


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf(architecture: str, name: str, shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """A GGUF v3 file (llama.cpp's format): magic, counts, string metadata, tensor infos, aligned F32 data."""
    kvs = [("general.architecture", architecture), ("general.name", name)]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(kvs))
    for key, value in kvs:
        out += _gguf_string(key) + struct.pack("<I", 8) + _gguf_string(value)
    offset = 0
    blobs = []
    for tensor, shape in shapes.items():
        blob = tensor_bytes(shape, "F32", tensor)
        out += _gguf_string(tensor) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", 0, offset)
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        offset += len(blob)
    out += b"\0" * (-len(out) % 32)
    return out + b"".join(blobs)


def npz(arrays: Mapping[str, tuple[int, ...]] | Mapping[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    values = {
        key: value if isinstance(value, np.ndarray) else np.frombuffer(tensor_bytes(value, "F32", key), np.float32)
        for key, value in arrays.items()
    }
    if compressed:
        np.savez_compressed(buffer, allow_pickle=False, **values)
    else:
        np.savez(buffer, allow_pickle=False, **values)
    return buffer.getvalue()


def zip_archive(members: Mapping[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 5, 17, 9, 30, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_gz(members: Mapping[str, bytes | str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, data in members.items():
            blob = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            info.mtime = 1_715_000_000
            archive.addfile(info, io.BytesIO(blob))
    return gzip.compress(raw.getvalue(), mtime=0)


def lfs_pointer(seed: str, size: int) -> str:
    oid = _rng(seed).randbytes(32).hex()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def dvc_pointer(path: str, seed: str, size: int) -> str:
    md5 = _rng(seed).randbytes(16).hex()
    return f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: {path}\n"


def pyc(source: str, filename: str) -> bytes:
    """The bytes CPython writes to __pycache__ for `source` (magic, flags, mtime, size, marshalled code)."""
    code = compile(source, filename, "exec")
    header = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, 1_714_521_600, len(source))
    return header + marshal.dumps(code)


def notebook(cells: Iterable[tuple[str, str]], outputs: Mapping[int, list[dict[str, object]]] | None = None) -> str:
    """An nbformat 4.5 notebook; each cell is (kind, source) with kind "code" or "markdown"."""
    built = []
    for index, (kind, source) in enumerate(cells):
        lines = source.splitlines(keepends=True)
        cell: dict[str, object] = {"cell_type": kind, "id": f"c{index:04x}", "metadata": {}, "source": lines}
        if kind == "code":
            cell["execution_count"] = index + 1
            cell["outputs"] = (outputs or {}).get(index, [])
        built.append(cell)
    document = {
        "cells": built,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": "3.11.9"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(document, indent=1) + "\n"


def notebook_v3(cells: Iterable[tuple[str, str]]) -> str:
    """An nbformat 3 notebook: cells live in worksheets, code is under `input`, markdown under `source`."""
    built = []
    for index, (kind, source) in enumerate(cells):
        lines = source.splitlines(keepends=True)
        if kind == "code":
            built.append(
                {
                    "cell_type": "code",
                    "collapsed": False,
                    "input": lines,
                    "language": "python",
                    "metadata": {},
                    "outputs": [],
                    "prompt_number": index + 1,
                }
            )
        else:
            built.append({"cell_type": "markdown", "metadata": {}, "source": lines})
    document = {
        "metadata": {"name": "", "signature": "sha256:" + _rng("nb3").randbytes(32).hex()},
        "nbformat": 3,
        "nbformat_minor": 0,
        "worksheets": [{"cells": built, "metadata": {}}],
    }
    return json.dumps(document, indent=1) + "\n"


def png_output(seed: str, size: int) -> dict[str, object]:
    """A display_data output carrying a base64 'image/png' of about `size` bytes (a plotted figure)."""
    import base64

    data = b"\x89PNG\r\n\x1a\n" + _rng(seed).randbytes(size)
    return {
        "data": {"image/png": base64.b64encode(data).decode(), "text/plain": ["<Figure size 1200x800 with 4 Axes>"]},
        "metadata": {},
        "output_type": "display_data",
    }


def tiktoken_vocabulary(count: int) -> str:
    """A .tiktoken BPE rank file: one base64 token and its rank per line."""
    import base64

    rng = _rng("bpe")
    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    for rank in range(256, count):
        token = bytes(rng.randrange(97, 123) for _ in range(rng.randrange(2, 9)))
        lines.append(f"{base64.b64encode(token).decode()} {rank}")
    return "\n".join(lines) + "\n"


def token_shard(first: int, count: int, vocab: int, seed: str) -> bytes:
    """A packed uint16 token file whose first token is `first` (little-endian), then random token ids."""
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    tokens = rng.integers(3, vocab, size=count, dtype=np.uint16)
    tokens[0] = first
    return tokens.tobytes()
