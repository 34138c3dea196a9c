"""The per-rank layout of the weights (oracle.moe850b.partitioned): what N ranks write reassembles into exactly the
model, loads lazily and verified, and anything that does not fit the index is refused by name."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oracle.moe850b.config import MoEConfig, load_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.partitioned import PartitionedReader, read_index, save_partitioned
from oracle.moe850b.weights import CheckpointError, load_checkpoint, save_checkpoint
from oracle_base.weight_files import CONFIG_FILE, PARTITIONS_FILE, WEIGHTS_FILE, part_file

MINI = load_config("oracle-mini")


def small(**changes: object) -> MoEConfig:
    fields = {**MINI.model_dump(), "param_total": None, "param_active": None, "n_layers": 2, **changes}
    return MoEConfig.model_validate(fields)


def partitioned(directory: Path, world: int, config: MoEConfig | None = None, seed: int = 0) -> OracleMoE:
    torch.manual_seed(seed)
    model = OracleMoE(config or small()).eval()
    save_partitioned(model, directory, world)
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.model_dump(mode="json")))
    return model


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def assert_same_state(a: OracleMoE, b: OracleMoE) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert set(left) == set(right)
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_the_ranks_parts_load_back_into_exactly_the_model(tmp_path: Path, world: int) -> None:
    model = partitioned(tmp_path, world)
    index = read_index(tmp_path, None)
    assert index.world_size == world
    assert sorted(p.name for p in tmp_path.glob("model-rank-*")) == [part_file(r, world) for r in range(world)]
    # each rank holds about 1/world of every large tensor, never the whole
    w13 = index.tensors["layers.0.moe.experts.w13"]
    assert w13.part == -(-w13.numel // world)
    if world > 1:
        assert load_file(tmp_path / part_file(1, world))["layers.0.moe.experts.w13"].numel() == w13.part
    assert_same_state(load_checkpoint(tmp_path), model)
    assert_same_state(load_checkpoint(tmp_path, expected_sha256=digests(tmp_path)), model)


def test_tied_embeddings_and_bf16_keep_their_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = OracleMoE(small(tie_embeddings=True)).to(torch.bfloat16).eval()
    save_partitioned(model, tmp_path, 2)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(model.config.model_dump(mode="json")))
    index = read_index(tmp_path, None)
    assert "lm_head.weight" not in index.tensors
    assert index.tensors["embed_tokens.weight"].dtype == "BF16"
    bias = index.tensors["layers.0.moe.router.expert_bias"]  # a buffer: the same on every rank, kept whole by rank 0
    assert bias.part == bias.numel
    loaded = load_checkpoint(tmp_path, expected_sha256=digests(tmp_path))
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    assert_same_state(loaded, model)


def test_ranges_are_read_across_part_boundaries(tmp_path: Path) -> None:
    model = partitioned(tmp_path, 3)
    flat = model.state_dict()["layers.1.moe.experts.w2"].reshape(-1)
    index = read_index(tmp_path, None)
    part = index.tensors["layers.1.moe.experts.w2"].part
    with PartitionedReader(tmp_path, index) as reader:
        reader.check_headers()
        for begin, end in [(0, 1), (part - 3, part + 5), (part - 1, 2 * part + 1), (0, flat.numel()), (7, 7)]:
            assert torch.equal(reader.read("layers.1.moe.experts.w2", begin, end), flat[begin:end])
        with pytest.raises(CheckpointError, match="outside its"):
            reader.read("layers.1.moe.experts.w2", 0, flat.numel() + 1)


def test_a_changed_part_file_is_refused_and_nothing_of_it_is_kept(tmp_path: Path) -> None:
    partitioned(tmp_path, 2)
    signed = digests(tmp_path)
    path = tmp_path / part_file(1, 2)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{path}: its sha256 is not the verified one"):
        load_checkpoint(tmp_path, expected_sha256=signed)


def test_a_part_file_without_a_verified_digest_is_refused(tmp_path: Path) -> None:
    partitioned(tmp_path, 2)
    signed = digests(tmp_path)
    del signed[part_file(1, 2)]
    with pytest.raises(CheckpointError, match=r"model-rank-00001-of-00002\.safetensors: no verified sha256"):
        load_checkpoint(tmp_path, expected_sha256=signed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda t: t.pop("norm.weight"), "lacks ones it does", id="a tensor missing"),
        pytest.param(lambda t: t.update(extra=torch.zeros(3)), "holds tensors its rank does not", id="a stray tensor"),
        pytest.param(lambda t: t.update({"norm.weight": torch.zeros(1)}), "says F32", id="a wrong length"),
        pytest.param(lambda t: t.update({"norm.weight": t["norm.weight"].double()}), "is F64", id="another dtype"),
    ],
)
def test_a_part_file_that_does_not_fit_the_index_is_refused(tmp_path: Path, change: object, message: str) -> None:
    partitioned(tmp_path, 2)
    path = tmp_path / part_file(1, 2)
    tensors = load_file(path)
    change(tensors)  # type: ignore[operator]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path, expected_sha256=digests(tmp_path))


def test_off_the_host_a_part_file_is_checked_against_the_index_before_its_data_is_read(tmp_path: Path) -> None:
    """For a device load (meta here: the branch a GPU server takes) the header is checked first too (red team
    helper-33, F4): a part file with a stray tensor is refused without reading its data."""
    partitioned(tmp_path, 2)
    path = tmp_path / part_file(1, 2)
    tensors = load_file(path)
    tensors["stray"] = torch.zeros(10_000)
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="holds tensors its rank does not"):
        load_checkpoint(tmp_path, device="meta", expected_sha256=digests(tmp_path))
    model = partitioned(tmp_path / "good", 2)
    loaded = load_checkpoint(tmp_path / "good", device="meta", expected_sha256=digests(tmp_path / "good"))
    assert loaded.embed_tokens.weight.shape == model.embed_tokens.weight.shape


def test_a_missing_part_file_is_named(tmp_path: Path) -> None:
    partitioned(tmp_path, 3)
    (tmp_path / part_file(2, 3)).unlink()
    with pytest.raises(CheckpointError, match=r"model-rank-00002-of-00003\.safetensors"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param(lambda d: d.update(world_size=0), "world_size: Input should be greater", id="no ranks"),
        pytest.param(lambda d: d.update(extra=1), "extra: Extra inputs are not permitted", id="an unknown key"),
        pytest.param(lambda d: d.pop("tensors"), "tensors: Field required", id="a missing key"),
        pytest.param(lambda d: d.update(world_size="2"), "world_size: Input should be a valid integer", id="a type"),
        pytest.param(lambda d: d["tensors"]["norm.weight"].update(part=1), "do not cover", id="parts too small"),
        pytest.param(lambda d: d["tensors"]["norm.weight"].update(dtype="F33"), "unknown dtype", id="a dtype"),
        pytest.param(lambda d: d.update(format="other"), "format: Input should be 'oracle", id="another format"),
    ],
)
def test_an_index_that_does_not_describe_a_layout_is_refused_naming_the_field(
    tmp_path: Path, edit: object, field: str
) -> None:
    partitioned(tmp_path, 2)
    document = json.loads((tmp_path / PARTITIONS_FILE).read_text())
    edit(document)  # type: ignore[operator]
    (tmp_path / PARTITIONS_FILE).write_text(json.dumps(document, indent=2))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path)
    message = str(refused.value)  # one line: the file, the key's line when it has one, the key, what is wrong
    assert re.match(rf"partition index {re.escape(str(tmp_path / PARTITIONS_FILE))}(:\d+)?: .*{field}", message)
    assert "\n" not in message
    key = field.split(":")[0]
    if ":" in field and key != "tensors":  # a key the file holds: its line is named
        lines = (tmp_path / PARTITIONS_FILE).read_text().splitlines()
        line = next(n for n, text in enumerate(lines, 1) if f'"{key}"' in text)
        assert f":{line}: {key}:" in message


def test_an_index_of_another_model_is_refused(tmp_path: Path) -> None:
    partitioned(tmp_path, 2)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(small(n_layers=3).model_dump(mode="json")))
    with pytest.raises(CheckpointError, match=r"missing: \['layers\.2"):
        load_checkpoint(tmp_path)


def test_a_folder_with_two_layouts_is_refused(tmp_path: Path) -> None:
    model = partitioned(tmp_path, 2)
    save_checkpoint(model, tmp_path)
    with pytest.raises(CheckpointError, match=rf"holds {WEIGHTS_FILE} and {PARTITIONS_FILE}"):
        load_checkpoint(tmp_path)
