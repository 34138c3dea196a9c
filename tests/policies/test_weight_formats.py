"""Weight formats by structure (policies.weight_formats): each format, inside archives and behind pointers, with a
near miss beside each that must stay clean."""

from __future__ import annotations

import bz2
import collections
import gzip
import io
import json
import lzma
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from policies.weight_formats import (
    MODEL_SIZED_BYTES,
    executes_code,
    lfs_weight_patterns,
    pointer_kind,
    sniff_weights,
    weights_kind,
    weights_kind_at,
    zip_weights,
)


def kind_of(tmp_path: Path, data: bytes, name: str = "blob.dat") -> str | None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return weights_kind_at(path)


def safetensors_bytes(header: dict[str, object] | None = None, leading: bytes = b"") -> bytes:
    table = header or {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "__metadata__": {"a": "b"}}
    raw = leading + json.dumps(table).encode()
    return len(raw).to_bytes(8, "little") + raw + b"\0" * 16


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def token_shard(dtype: str, seed: int, first: bytes = b"\x80\x02") -> bytes:
    """Our packed token format: raw little-endian ids, no header; here starting with bytes that read as PROTO 2."""
    ids = np.random.default_rng(seed).integers(0, 50_000, 20_000).astype(dtype)
    data = bytearray(ids.tobytes())
    data[: len(first)] = first
    return bytes(data)


def length_delimited(field: int, payload: bytes) -> bytes:
    length, encoded = len(payload), b""
    while True:
        encoded += bytes([(length & 0x7F) | (0x80 if length >> 7 else 0)])
        length >>= 7
        if not length:
            return bytes([field << 3 | 2]) + encoded + payload


STATE = {"layer.weight": [0.5, 1.5, 2.5], "layer.bias": [0.0]}
TORCH_LEGACY = b"".join(
    [
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}, protocol=2),
        pickle.dumps(collections.OrderedDict(STATE), protocol=2),
        pickle.dumps(["0", "1"], protocol=2),
        bytes(range(256)) * 8,  # raw tensor bytes after the pickles
    ]
)


# --- safetensors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("leading", [b"", b"   ", b"\n\t "])
def test_safetensors_is_recognised_by_its_tensor_table_whatever_the_whitespace(tmp_path: Path, leading: bytes) -> None:
    assert kind_of(tmp_path, safetensors_bytes(leading=leading), "notes.txt") == "safetensors"


@pytest.mark.parametrize(
    "data",
    [
        safetensors_bytes({"learning_rate": 0.1, "steps": [1, 2]}),  # length-prefixed JSON, not a tensor table
        safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}),  # offsets malformed
        (40).to_bytes(8, "little") + b'{"w": {"dtype": "F32"' + b"\0" * 64,  # a header that does not parse
    ],
)
def test_length_prefixed_json_that_is_not_a_tensor_table_is_clean(tmp_path: Path, data: bytes) -> None:
    assert kind_of(tmp_path, data) is None


# --- pickle of every protocol, and our token shards --------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(6))
def test_pickle_of_every_protocol_is_recognised_by_its_opcodes(tmp_path: Path, protocol: int) -> None:
    kind = kind_of(tmp_path, pickle.dumps(collections.OrderedDict(STATE), protocol=protocol), "vocab.txt")
    assert kind is not None
    assert kind.startswith("pickle")
    assert executes_code(kind)


def test_text_looking_protocol_0_pickle_is_recognised(tmp_path: Path) -> None:
    data = pickle.dumps(collections.OrderedDict(STATE), protocol=0)
    assert data.startswith(b"ccollections\nOrderedDict\n")
    assert kind_of(tmp_path, data, "README") == "pickle (protocol 0/1)"
    assert kind_of(tmp_path, pickle.dumps({"w": [1.0]}, protocol=0)) == "pickle (protocol 0/1)"  # `(dp0`


def test_legacy_torch_save_is_pickles_then_raw_bytes(tmp_path: Path) -> None:
    assert kind_of(tmp_path, TORCH_LEGACY, "model.bin") == "pickle (protocol 2)"


def test_large_pickle_payloads_are_skipped_not_read(tmp_path: Path) -> None:
    data = pickle.dumps({"w": bytearray(3 * 2**20)}, protocol=5)  # few opcodes, then megabytes of payload
    assert kind_of(tmp_path, data) == "pickle (protocol 5)"
    array = pickle.dumps(np.zeros(300_000, np.float32), protocol=2)
    assert kind_of(tmp_path, array) == "pickle (protocol 2)"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", ["<u2", "<u4"])
def test_token_shard_that_starts_like_a_pickle_header_is_clean(tmp_path: Path, seed: int, dtype: str) -> None:
    assert kind_of(tmp_path, token_shard(dtype, seed), "tokens/tokens-000000.bin") is None


def test_token_shard_whose_first_ids_read_as_a_tiny_pickle_is_clean(tmp_path: Path) -> None:
    # PROTO 2, NONE, STOP: a complete pickle of None, then token ids that are no pickle
    assert kind_of(tmp_path, token_shard("<u2", 1, b"\x80\x02N."), "tokens/tokens-000001.bin") is None


@pytest.mark.parametrize(
    "text",
    [
        b"(a) the first point\n(b) the second\n",
        b"cat data.txt | sort\nexit\n",
        b"Version 1.0 of the tool\nNotes follow.\n",
        b"]" + b"x" * 100,
        b"N.",
    ],
)
def test_text_that_starts_with_a_pickle_opcode_is_clean(tmp_path: Path, text: bytes) -> None:
    assert kind_of(tmp_path, text) is None


# --- PyTorch zip, GGUF/GGML, HDF5, TFLite ------------------------------------------------------------------------
def test_pytorch_zip_is_recognised_by_its_members(tmp_path: Path) -> None:
    members = {"archive/data.pkl": pickle.dumps({"w": 1}), "archive/version": b"3\n", "archive/data/0": b"\0" * 8}
    assert kind_of(tmp_path, zip_bytes(members), "encoder.txt") == "PyTorch zip archive"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"GGUF\x03\x00\x00\x00" + (5).to_bytes(8, "little") * 2 + b"\0" * 32, "GGUF"),
        (b"tjgg\x03\x00\x00\x00" + b"\0" * 32, "GGML"),  # ggjt written as a little-endian integer
        (b"lmgg" + (51_865).to_bytes(4, "little") + b"\0" * 32, "GGML"),  # unversioned: the vocabulary size
    ],
)
def test_gguf_and_ggml(tmp_path: Path, data: bytes, kind: str) -> None:
    assert kind_of(tmp_path, data) == kind


@pytest.mark.parametrize("text", [b"GGUF is the format llama.cpp reads\n", b"ggml-org/llama.cpp builds it\n"])
def test_text_naming_gguf_is_clean(tmp_path: Path, text: bytes) -> None:
    assert kind_of(tmp_path, text) is None


def test_hdf5_at_the_start_or_after_a_user_block(tmp_path: Path) -> None:
    signature = b"\x89HDF\r\n\x1a\n"
    keras = signature + b"\0" * 100 + b"keras_version" + b"\0" * 100
    assert kind_of(tmp_path, keras) == "HDF5 (Keras weights)"
    assert kind_of(tmp_path, b"\0" * 512 + signature + b"\0" * 600) == "HDF5"


def test_hdf5_signature_where_hdf5_never_puts_it_is_clean(tmp_path: Path) -> None:
    assert kind_of(tmp_path, b"x" * 100 + b"\x89HDF\r\n\x1a\n" + b"x" * 100) is None


def test_tflite_and_its_near_miss(tmp_path: Path) -> None:
    assert kind_of(tmp_path, (16).to_bytes(4, "little") + b"TFL3" + b"\0" * 64) == "TFLite"
    assert kind_of(tmp_path, (10**6).to_bytes(4, "little") + b"TFL3" + b"\0" * 64) is None  # root beyond the file


# --- ONNX by its protobuf fields ---------------------------------------------------------------------------------
GRAPH = length_delimited(7, length_delimited(2, b"main") + length_delimited(5, b"\x08\x01\x10\x01"))
OPSET = length_delimited(8, b"\x10\x11")


def test_onnx_without_a_producer_is_recognised(tmp_path: Path) -> None:
    assert kind_of(tmp_path, b"\x08\x08" + GRAPH + OPSET, "graph.bin") == "ONNX"
    with_producer = b"\x08\x07" + length_delimited(2, b"pytorch") + length_delimited(3, b"2.1") + GRAPH + OPSET
    assert kind_of(tmp_path, with_producer) == "ONNX"


@pytest.mark.parametrize(
    "data",
    [
        b"\x08\x08" + length_delimited(2, b"pytorch") + OPSET,  # a ModelProto-like message without a graph
        length_delimited(1, b"\x0a\x03<s>") + length_delimited(2, b"\x08\x01"),  # a sentencepiece model
        b"\x08\x08" + GRAPH + OPSET + b"trailing bytes that are no field",
    ],
)
def test_protobuf_that_is_not_an_onnx_model_is_clean(tmp_path: Path, data: bytes) -> None:
    assert kind_of(tmp_path, data) is None


# --- msgpack (Flax), numpy ---------------------------------------------------------------------------------------
class Ext:
    def __init__(self, code: int, data: bytes) -> None:
        self.code, self.data = code, data


def packb(value: object) -> bytes:
    """A small msgpack encoder (the subset state dicts use), so the test needs no msgpack package."""
    if value is None or isinstance(value, bool):
        return {None: b"\xc0", False: b"\xc2", True: b"\xc3"}[value]
    if isinstance(value, int):
        return bytes([value]) if 0 <= value < 128 else b"\xd3" + value.to_bytes(8, "big", signed=True)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])) + raw
    if isinstance(value, bytes):
        return b"\xc6" + len(value).to_bytes(4, "big") + value
    if isinstance(value, Ext):
        return b"\xc9" + len(value.data).to_bytes(4, "big") + bytes([value.code]) + value.data
    if isinstance(value, (list, tuple)):
        header = bytes([0x90 | len(value)]) if len(value) < 16 else b"\xdd" + len(value).to_bytes(4, "big")
        return header + b"".join(packb(item) for item in value)
    assert isinstance(value, dict)
    items = b"".join(packb(key) + packb(item) for key, item in value.items())
    return b"\xde" + len(value).to_bytes(2, "big") + items


def flax_array(array: np.ndarray) -> Ext:
    """Flax's `to_bytes`: an array is ext type 1 holding msgpack of (shape, dtype name, buffer)."""
    return Ext(1, packb((list(array.shape), array.dtype.name, array.tobytes())))


def test_flax_msgpack_state_dict(tmp_path: Path) -> None:
    params = {"Dense_0": {"kernel": flax_array(np.ones((4, 4), np.float32)), "bias": flax_array(np.ones(4))}}
    assert kind_of(tmp_path, packb({"params": params}), "state.bin") == "Flax msgpack state dict"


def test_msgpack_of_binary_arrays(tmp_path: Path) -> None:
    state = {"w": {"nd": True, "type": "<f4", "shape": [512], "data": np.ones(512, np.float32).tobytes()}}
    assert kind_of(tmp_path, packb(state)) == "msgpack state dict of binary arrays"


def test_msgpack_config_is_clean(tmp_path: Path) -> None:
    config = {"learning_rate": 0.1, "name": "run", "layers": [1, 2, 3], "blob": b"abc"}
    assert kind_of(tmp_path, packb(config)) is None


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """What `np.savez_compressed` writes: a zip of one `.npy` per array."""
    return zip_bytes({f"{name}.npy": npy_bytes(array) for name, array in arrays.items()})


def test_npy_with_object_dtype_is_a_pickle(tmp_path: Path) -> None:
    kind = kind_of(tmp_path, npy_bytes(np.array([{"a": 1}, None], dtype=object)))
    assert kind == "numpy .npy with object dtype (a pickle)"
    assert executes_code(kind)


def test_npz_of_parameters_is_weights(tmp_path: Path) -> None:
    kind = kind_of(tmp_path, npz_bytes(**{"encoder.layers.0.weight": np.ones((8, 8), np.float32)}), "a.npz")
    assert kind is not None
    assert "model weights" in kind


def test_small_numeric_arrays_with_other_names_are_clean(tmp_path: Path) -> None:
    assert kind_of(tmp_path, npz_bytes(mel_80=np.ones((80, 201), np.float32)), "assets/mel_filters.npz") is None
    test_data = npz_bytes(beta_exp_data=np.ones(10), gamma_inv_data=np.ones(10))  # words, not parameter paths
    assert kind_of(tmp_path, test_data, "tests/data/boost.npz") is None
    assert kind_of(tmp_path, npy_bytes(np.arange(100)), "fixtures/expected.npy") is None


# --- archives ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_members_are_sniffed_by_content(tmp_path: Path, mode: str) -> None:
    data = tar_bytes({"release/readme.txt": b"hello\n", "release/blob": safetensors_bytes()}, mode)
    kind = kind_of(tmp_path, data, "release.tar")
    assert kind == "archive containing release/blob (safetensors)"


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz"])
def test_tar_of_text_is_clean(tmp_path: Path, mode: str) -> None:
    data = tar_bytes({"eval/set.jsonl": b'{"q": "2+2", "a": "4"}\n' * 200, "eval/README.md": b"# eval\n"}, mode)
    assert kind_of(tmp_path, data, "eval.tar") is None


def test_zip_member_that_is_weights_by_content_or_by_name(tmp_path: Path) -> None:
    by_content = zip_bytes({"docs/a.txt": b"hello", "docs/b.dat": pickle.dumps(STATE, protocol=4)})
    assert kind_of(tmp_path, by_content) == "archive containing docs/b.dat (pickle (protocol 4))"
    by_name = zip_bytes({"ckpt/model.safetensors": b"\x07\x00\xff binary, in no format recognised here"})
    assert kind_of(tmp_path, by_name) == "archive containing ckpt/model.safetensors"


def test_zip_member_named_like_weights_but_text_is_clean(tmp_path: Path) -> None:
    wheel = zip_bytes({"pkg/__init__.py": b"X = 1\n", "distutils-precedence.pth": b"import os; X = 1\n"})
    assert kind_of(tmp_path, wheel, "pkg-1.0-py3-none-any.whl") is None


def test_zipped_eval_set_snapshot_is_clean(tmp_path: Path) -> None:
    snapshot = zip_bytes({"eval/questions.jsonl": b'{"q": "x", "a": "y"}\n' * 500, "eval/LICENSE": b"CC-BY\n"})
    assert kind_of(tmp_path, snapshot, "eval-snapshot.zip") is None


def test_archive_nested_one_level_is_opened(tmp_path: Path) -> None:
    inner = zip_bytes({"w.bin": pickle.dumps(STATE, protocol=2)})
    outer = tar_bytes({"bundle/inner.zip": inner}, "w:gz")
    kind = kind_of(tmp_path, outer)
    assert kind is not None
    assert "bundle/inner.zip" in kind
    assert "pickle" in kind


def test_zip_appended_to_another_file_is_found_by_its_directory(tmp_path: Path) -> None:
    members = {"archive/data.pkl": pickle.dumps({"w": 1}), "archive/version": b"3\n"}
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(8192) + zip_bytes(members, zipfile.ZIP_STORED)
    assert kind_of(tmp_path, image, "logo.png") == "PyTorch zip archive"


def test_compressed_single_file(tmp_path: Path) -> None:
    assert kind_of(tmp_path, gzip.compress(TORCH_LEGACY), "m.gz") == "gzip-compressed pickle (protocol 2)"
    assert kind_of(tmp_path, bz2.compress(b"plain text\n" * 100), "notes.bz2") is None
    assert kind_of(tmp_path, lzma.compress(b'{"a": 1}\n' * 100), "rows.xz") is None


def test_archive_that_cannot_be_read_fails_closed(tmp_path: Path) -> None:
    damaged = zip_bytes({"a.txt": b"hello" * 100})[:60]
    kind = kind_of(tmp_path, damaged, "a.zip")
    assert kind is not None
    assert "cannot be read" in kind
    assert kind_of(tmp_path, b"7z\xbc\xaf\x27\x1c" + b"\0" * 64, "w.7z") is not None


# --- size and readability ----------------------------------------------------------------------------------------
def test_size_never_skips_a_file(tmp_path: Path) -> None:
    big = safetensors_bytes() + b"\0" * (MODEL_SIZED_BYTES + 1)
    assert kind_of(tmp_path, big, "huge.txt") == "safetensors"


def test_a_fifo_raises_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="Illegal seek"):
        weights_kind_at(fifo)


def test_a_file_that_cannot_be_read_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        weights_kind_at(tmp_path / "missing.bin")
    path = tmp_path / "locked.bin"
    path.write_bytes(b"x")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who reads everything")
        with pytest.raises(PermissionError):
            weights_kind_at(path)
    finally:
        path.chmod(0o600)


# --- pointers ----------------------------------------------------------------------------------------------------
def lfs(size: int) -> str:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\nsize {size}\n"


def test_lfs_pointer_to_weights_or_model_sized_object() -> None:
    assert pointer_kind("model.safetensors", lfs(1234)) is not None
    assert pointer_kind("checkpoints/step-10/shard", lfs(1234)) is not None
    assert pointer_kind("assets/blob", lfs(MODEL_SIZED_BYTES)) is not None
    assert pointer_kind("assets/blob-001", lfs(10), lfs_patterns=["assets/blob-*"]) is not None


def test_lfs_pointer_to_a_small_asset_is_clean() -> None:
    assert pointer_kind("docs/logo.png", lfs(20_000)) is None
    assert pointer_kind("model.safetensors", "version 1 of the model notes\nsize 10\n") is None


def test_gitattributes_patterns_that_route_weights_to_lfs() -> None:
    text = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs\ncheckpoints/** filter=lfs\n"
    assert lfs_weight_patterns(text) == ["*.safetensors", "checkpoints/**"]


def test_dvc_files_naming_weights() -> None:
    tracked = "outs:\n- md5: 0123\n  size: 1000\n  hash: md5\n  path: model.pt\n"
    assert pointer_kind("model.pt.dvc", tracked) is not None
    assert pointer_kind("blob.dvc", "outs:\n- md5: 0123\n  size: 1000\n  path: ckpt/model.pt\n") is not None
    stages = "stages:\n  train:\n    cmd: python train.py\n    deps:\n    - data\n    outs:\n    - models\n"
    assert pointer_kind("dvc.yaml", stages) is not None
    lock = f"stages:\n  train:\n    outs:\n    - path: out/blob\n      size: {MODEL_SIZED_BYTES * 2}\n"
    assert pointer_kind("dvc.lock", lock) is not None


def test_dvc_files_of_data_are_clean() -> None:
    assert pointer_kind("data/eval.jsonl.dvc", "outs:\n- md5: 0123\n  size: 1000\n  path: eval.jsonl\n") is None
    stages = "stages:\n  prep:\n    cmd: python prep.py\n    deps:\n    - models/tok.py\n    outs:\n    - data/clean\n"
    assert pointer_kind("dvc.yaml", stages) is None


def test_pointers_are_found_by_the_one_entry_point(tmp_path: Path) -> None:
    assert kind_of(tmp_path, lfs(1234).encode(), "weights/model.safetensors") is not None
    assert kind_of(tmp_path, b"outs:\n- md5: 0123\n  size: 10\n  path: model.pt\n", "model.pt.dvc") is not None
    assert kind_of(tmp_path, lfs(1234).encode(), "docs/logo.png") is None
    assert kind_of(tmp_path, pickle.dumps(STATE, protocol=4), "disguised.dvc") is not None  # content still sniffed


# --- the names other modules import ------------------------------------------------------------------------------
def test_backward_compatible_names(tmp_path: Path) -> None:
    torch_zip = tmp_path / "m.pt"
    torch_zip.write_bytes(zip_bytes({"a/data.pkl": pickle.dumps(1), "a/version": b"3"}))
    assert zip_weights(torch_zip) == weights_kind(torch_zip) == "PyTorch zip archive"
    text = tmp_path / "t.txt"
    text.write_bytes(b"hello")
    assert zip_weights(text) is None
    assert sniff_weights(safetensors_bytes(), len(safetensors_bytes())) == "safetensors"
    assert not executes_code("safetensors")


def test_an_npz_whose_arrays_form_a_module_tree_is_weights(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "params.npz"
    np.savez(path, **{"model/wte": np.zeros((4, 2)), "model/h0/attn/c_attn/w": np.zeros((1, 2, 6))})
    assert weights_kind_at(path) is not None
    data = tmp_path / "eval.npz"
    np.savez(data, x_test=np.zeros((4, 2)), y_test=np.zeros(4), split_test_ids=np.arange(4))
    assert weights_kind_at(data) is None
