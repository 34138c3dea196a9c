"""Loading with verified digests (oracle/moe850b/weights.py): one pass over each file, the sha256 computed over the
very bytes the tensors hold, about one copy of the weights in memory, and sharded folders held to their index."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import oracle.moe850b.weights as weights
from oracle.moe850b.config import load_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from tests.conftest import micro_config
from tests.guards.test_process_policy import refused
from tests.guards.test_process_policy import run as run_under_policy


def _digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in directory.iterdir()}


def _checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(OracleMoE(micro_config()), directory)


def _shard(single: Path, directory: Path, n_shards: int = 3) -> Path:
    """`single`'s weights as `n_shards` shards and their index (huggingface_hub's layout), beside its config."""
    directory.mkdir()
    tensors = load_file(single / WEIGHTS_FILE)
    names = sorted(tensors)
    weight_map = {}
    for k in range(n_shards):
        shard = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[k::n_shards]}
        save_file(part, directory / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (directory / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2))
    (directory / CONFIG_FILE).write_bytes((single / CONFIG_FILE).read_bytes())
    return directory


def _assert_same_weights(left: OracleMoE, right: OracleMoE) -> None:
    a, b = left.state_dict(), right.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def _header_end(path: Path) -> int:
    return 8 + int(struct.unpack("<Q", path.read_bytes()[:8])[0])


def _rewrite(path: Path, edit: Callable[[bytearray], bytearray]) -> None:
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))


def _flip(offset: Callable[[Path], int]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        at = offset(path)

        def flip(data: bytearray) -> bytearray:
            data[at] ^= 0x01
            return data

        _rewrite(path, flip)

    return change


# --- a verified load is the unverified one, read once ---------------------------------------------------------------
def test_a_verified_load_equals_the_unverified_load_tensor_for_tensor(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt")
    _assert_same_weights(load_checkpoint(checkpoint, expected_sha256=_digests(checkpoint)), load_checkpoint(checkpoint))


def test_a_sharded_folder_loads_equal_to_the_single_file(tmp_path: Path) -> None:
    single = _checkpoint(tmp_path / "single")
    sharded = _shard(single, tmp_path / "sharded")
    reference = load_checkpoint(single)
    _assert_same_weights(load_checkpoint(sharded, expected_sha256=_digests(sharded)), reference)
    _assert_same_weights(load_checkpoint(sharded), reference)


# --- any byte that differs from the verified file refuses it --------------------------------------------------------
CHANGED = "its sha256 is not the verified one \\(the file changed after the check\\)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_flip(lambda path: (_header_end(path) + path.stat().st_size) // 2), CHANGED),  # inside a tensor
        (_flip(lambda path: path.read_bytes().index(b'"pt"') + 1), CHANGED),  # "pt" -> "qt": the header still parses
        (_flip(lambda path: 8), "its header is not JSON"),
        (
            lambda path: _rewrite(path, lambda data: data[:-10]),
            r"the tensors end at byte \d+ of a data region of \d+",
        ),
        (
            lambda path: _rewrite(path, lambda data: data + bytes(16)),
            r"the tensors end at byte \d+ of a data region of \d+",
        ),
    ],
    ids=["tensor-byte", "header-byte", "header-syntax", "truncated", "appended"],
)
def test_a_weights_file_that_differs_from_the_verified_one_is_refused(
    tmp_path: Path, change: Callable[[Path], None], message: str
) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt")
    digests = _digests(checkpoint)
    change(checkpoint / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=rf"^{checkpoint / WEIGHTS_FILE}: .*{message}"):
        load_checkpoint(checkpoint, expected_sha256=digests)


def test_a_weights_file_without_a_verified_digest_is_not_read(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "ckpt")
    digests = {CONFIG_FILE: _digests(checkpoint)[CONFIG_FILE]}
    with pytest.raises(CheckpointError, match="no verified sha256 was given for it; list it in the provenance"):
        load_checkpoint(checkpoint, expected_sha256=digests)


def _append(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(bytes(16))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_flip(lambda path: path.stat().st_size - 1), "its sha256 is not the verified one"),
        (_append, "it grew while being read"),
    ],
    ids=["rewritten-in-place", "appended"],
)
def test_the_digest_covers_the_bytes_the_tensors_hold_not_an_earlier_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None], message: str
) -> None:
    """The file changes after its header was read, before its tensors are: the bytes the tensors would hold are
    not the verified ones, and nothing is loaded."""
    checkpoint = _checkpoint(tmp_path / "ckpt")
    digests = _digests(checkpoint)
    parse = weights._parse_header

    def parse_then_change(header: bytes, path: Path, *, data_size: int) -> list[object]:
        change(path)
        return list(parse(header, path, data_size=data_size))

    monkeypatch.setattr(weights, "_parse_header", parse_then_change)
    with pytest.raises(CheckpointError, match=rf"{message} \(the file changed after the check\)"):
        load_checkpoint(checkpoint, expected_sha256=digests)


def test_a_file_renamed_over_the_weights_while_they_load_is_not_what_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another valid file swapped in once the weights are open: the load reads the open file, the verified one."""
    checkpoint = _checkpoint(tmp_path / "ckpt")
    digests = _digests(checkpoint)
    torch.manual_seed(1)
    other = save_checkpoint(OracleMoE(micro_config()), tmp_path / "other")
    parse = weights._parse_header

    def parse_then_swap(header: bytes, path: Path, *, data_size: int) -> list[object]:
        os.replace(other / WEIGHTS_FILE, path)
        return list(parse(header, path, data_size=data_size))

    expected = load_checkpoint(checkpoint)
    monkeypatch.setattr(weights, "_parse_header", parse_then_swap)
    _assert_same_weights(load_checkpoint(checkpoint, expected_sha256=digests), expected)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="changed after the check"):  # and the next load sees the swap
        load_checkpoint(checkpoint, expected_sha256=digests)


# --- the header is checked strictly, whatever its digest ------------------------------------------------------------
def _write_safetensors(path: Path, header: dict[str, object], data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


F32_2 = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        ({"a": {**F32_2, "data_offsets": [0, 8]}, "b": {**F32_2, "data_offsets": [4, 12]}}, 12, "starts at byte 4"),
        ({"a": {**F32_2, "data_offsets": [0, 8]}, "b": {**F32_2, "data_offsets": [12, 20]}}, 20, "starts at byte 12"),
        ({"a": {**F32_2, "data_offsets": [0, 8]}}, 16, "end at byte 8 of a data region of 16"),
        ({"a": {**F32_2, "data_offsets": [0, 8]}}, 4, "end at byte 8 of a data region of 4"),
        ({"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype 'F128'"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "not a list of sizes"),
        ({"a": {**F32_2, "data_offsets": [0, 8], "extra": 1}}, 8, "needs exactly"),
        ({"__metadata__": {"format": 1}}, 0, "mapping of strings"),
    ],
    ids=["overlap", "gap", "trailing-bytes", "out-of-bounds", "dtype", "size", "shape", "key", "metadata"],
)
def test_a_malformed_header_is_refused_naming_the_file(
    tmp_path: Path, header: dict[str, object], data: int, reason: str
) -> None:
    path = tmp_path / WEIGHTS_FILE
    _write_safetensors(path, header, bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{path}: not a readable safetensors file \(.*{reason}"):
        weights.stream_verified(path, hashlib.sha256(path.read_bytes()).hexdigest(), torch.device("cpu"))


def test_a_header_longer_than_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match=r"a header of 1099511627776 bytes in a file of 10"):
        weights.stream_verified(path, hashlib.sha256(path.read_bytes()).hexdigest(), torch.device("cpu"))


def test_a_tensor_named_twice_in_a_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / WEIGHTS_FILE
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    encoded = f'{{"a": {entry}, "a": {entry}}}'.encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(4))
    with pytest.raises(CheckpointError, match="'a' appears twice"):
        weights.stream_verified(path, hashlib.sha256(path.read_bytes()).hexdigest(), torch.device("cpu"))


# --- shards: every one verified, every tensor exactly once ----------------------------------------------------------
def _sharded(tmp_path: Path) -> Path:
    return _shard(_checkpoint(tmp_path / "single"), tmp_path / "sharded")


def _edit_index(sharded: Path, edit: Callable[[dict[str, str]], object]) -> None:
    index = json.loads((sharded / WEIGHTS_INDEX_FILE).read_text())
    edit(index["weight_map"])
    (sharded / WEIGHTS_INDEX_FILE).write_text(json.dumps(index))


def _extra_shard(sharded: Path) -> None:
    """A fourth shard the index names, holding one tensor moved out of the first."""
    first = sharded / "model-00001-of-00003.safetensors"
    tensors = load_file(first)
    moved = sorted(tensors)[0]
    save_file({moved: tensors.pop(moved)}, sharded / "extra.safetensors")
    save_file(tensors, first)
    _edit_index(sharded, lambda weight_map: weight_map.update({moved: "extra.safetensors"}))


def _tensor_dropped(sharded: Path) -> None:
    shard = sharded / "model-00002-of-00003.safetensors"
    tensors = load_file(shard)
    del tensors[sorted(tensors)[0]]
    save_file(tensors, shard)


def _tensor_twice(sharded: Path) -> None:
    first, second = sharded / "model-00001-of-00003.safetensors", sharded / "model-00002-of-00003.safetensors"
    tensors = load_file(second)
    name, tensor = next(iter(load_file(first).items()))
    save_file({**tensors, name: tensor}, second)


def _shards_swapped(sharded: Path) -> None:
    first, second = sharded / "model-00001-of-00003.safetensors", sharded / "model-00002-of-00003.safetensors"
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)


@pytest.mark.parametrize(
    ("change", "digests_after", "message"),
    [
        (_extra_shard, True, r"names extra\.safetensors, for which no verified sha256 was given"),
        (_tensor_dropped, True, r"model-00002-of-00003\.safetensors: holds tensors .* or lacks ones it does \(\['"),
        (_tensor_twice, True, r"model-00002-of-00003\.safetensors: holds tensors .* does not assign to it \(\['"),
        (_shards_swapped, False, r"model-00001-of-00003\.safetensors: its sha256 is not the verified one"),
        (lambda d: _edit_index(d, lambda m: m.update(x="../model.safetensors")), True, r"not a \.safetensors file"),
    ],
    ids=["shard-not-in-digests", "tensor-missing", "tensor-twice", "shard-swapped", "shard-outside"],
)
def test_a_sharded_checkpoint_that_does_not_match_its_index_or_digests_is_refused(
    tmp_path: Path, change: Callable[[Path], None], digests_after: bool, message: str
) -> None:
    sharded = _sharded(tmp_path)
    signed = _digests(sharded)
    change(sharded)
    digests = _digests(sharded) if digests_after else signed  # each shard's own digest: the index is what is judged
    if "extra.safetensors" in digests:
        del digests["extra.safetensors"]
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(sharded, expected_sha256=digests)


def test_a_changed_index_is_refused(tmp_path: Path) -> None:
    sharded = _sharded(tmp_path)
    digests = _digests(sharded)
    _edit_index(sharded, lambda weight_map: weight_map.pop(sorted(weight_map)[0]))
    with pytest.raises(CheckpointError, match=rf"^{sharded / WEIGHTS_INDEX_FILE}: its sha256 is not the verified one"):
        load_checkpoint(sharded, expected_sha256=digests)


def test_shards_that_do_not_match_their_index_are_refused_unverified_too(tmp_path: Path) -> None:
    sharded = _sharded(tmp_path)
    _shards_swapped(sharded)
    with pytest.raises(CheckpointError, match=r"model-00001-of-00003\.safetensors: holds tensors"):
        load_checkpoint(sharded)


# --- memory: no second copy of the weights --------------------------------------------------------------------------
def test_a_verified_load_makes_no_copy_of_the_files_bytes(tmp_path: Path) -> None:
    """The old path held the whole file as one bytes object beside the tensors; tracemalloc sees Python's
    allocations (bytes, bytearrays), not torch's storages, so a streaming load peaks far below the file's size."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(OracleMoE(load_config("oracle-mini")), tmp_path / "mini")
    digests = _digests(checkpoint)
    size = (checkpoint / WEIGHTS_FILE).stat().st_size
    tracemalloc.start()
    try:
        load_checkpoint(checkpoint, expected_sha256=digests)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 10_000_000
    assert peak < size / 20, f"{peak} bytes allocated by Python while loading {size} bytes of weights"


# --- the process policy of `oracle serve` sees and allows these reads -----------------------------------------------
def test_the_process_policy_allows_the_streaming_read_of_listed_weights_and_refuses_others(tmp_path: Path) -> None:
    listed, unlisted = _checkpoint(tmp_path / "listed"), _checkpoint(tmp_path / "unlisted")
    code = f"""
    from oracle.moe850b.weights import load_checkpoint
    load_checkpoint(Path({str(listed)!r}), expected_sha256={_digests(listed)!r})
    print("loaded the listed checkpoint", flush=True)
    load_checkpoint(Path({str(unlisted)!r}), expected_sha256={_digests(unlisted)!r})
    """
    done = run_under_policy(tmp_path, code, files=[str(listed / name) for name in _digests(listed)])
    assert "loaded the listed checkpoint" in done.stdout
    details = refused(done, tmp_path, f"opening {unlisted / WEIGHTS_FILE}: safetensors")
    assert details["file"] == str(unlisted / WEIGHTS_FILE)


# --- peak resident memory, measured ---------------------------------------------------------------------------------
PEAK_RSS = """
import resource, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import json
import torch
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.weights import load_checkpoint
from tests.conftest import micro_config

def high_water_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

with torch.device("meta"):  # torch's one-time set-up for the first model (~80 MB, whatever its size) is not loading
    OracleMoE(micro_config())
before = high_water_kb()
model = load_checkpoint(Path({checkpoint!r}), expected_sha256=json.loads({digests!r}))
print(high_water_kb() - before)
"""


def test_peak_resident_memory_grows_by_about_one_copy_of_the_weights(tmp_path: Path) -> None:
    config = micro_config(hidden_size=512, n_heads=8, n_kv_heads=4, n_experts=8, expert_hidden_size=1024)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in OracleMoE(config).state_dict().items()}
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    save_file({name: torch.rand(shape) for name, shape in shapes.items()}, checkpoint / WEIGHTS_FILE)
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json")))
    size = (checkpoint / WEIGHTS_FILE).stat().st_size
    script = PEAK_RSS.format(
        repo=str(Path(__file__).resolve().parents[2]),
        checkpoint=str(checkpoint),
        digests=json.dumps(_digests(checkpoint)),
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.split()[-1]) * 1024
    assert size > 90_000_000
    assert growth < 1.5 * size, f"peak RSS grew by {growth} bytes loading {size} bytes of weights"
