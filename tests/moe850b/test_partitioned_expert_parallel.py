"""Expert-parallel layouts in the per-rank weight parts (oracle.moe850b.partitioned): an expert stack whose ranks
hold explicit ranges (their experts, ZeRO-partitioned over the ranks holding the same experts) reassembles into
exactly the model for serving and export, and an index whose ranges do not tile a tensor once is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from oracle.moe850b.config import MoEConfig, load_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.partitioned import (
    FORMAT,
    PartitionedReader,
    PartitionIndex,
    TensorLayout,
    expert_parallel_spans,
    own_part,
    read_index,
)
from oracle.moe850b.weights import CheckpointError, load_checkpoint
from oracle_base.weight_files import CONFIG_FILE, PARTITIONS_FILE, part_file

MINI = load_config("oracle-mini")


def small() -> MoEConfig:
    return MoEConfig.model_validate({**MINI.model_dump(), "param_total": None, "param_active": None, "n_layers": 2})


def test_spans_follow_deepspeeds_expert_and_data_topology() -> None:
    # 8 experts of 6 elements over 4 ranks, expert parallelism 2: ranks 0 and 2 hold experts 0-3, ranks 1 and 3
    # experts 4-7, each pair splitting its 24 elements in two ZeRO parts of 12
    assert expert_parallel_spans(48, 8, 2, 4) == [(0, 12), (24, 36), (12, 24), (36, 48)]
    assert expert_parallel_spans(48, 8, 2, 2) == [(0, 24), (24, 48)]
    assert expert_parallel_spans(48, 8, 8, 8) == [(6 * r, 6 * r + 6) for r in range(8)]
    # a part that does not divide evenly: ceil-sized parts, the last one short (as DeepSpeed pads its partitions)
    assert expert_parallel_spans(2 * 7, 2, 1, 3) == [(0, 5), (5, 10), (10, 14)]
    with pytest.raises(ValueError, match="do not divide"):
        expert_parallel_spans(48, 8, 3, 6)


def write_expert_parallel(model: OracleMoE, directory: Path, world: int, ep_size: int) -> PartitionIndex:
    """Write `model` as `world` ranks with expert parallelism `ep_size` would: expert stacks by expert_parallel_spans,
    every other tensor as ZeRO-3 partitions over all ranks."""
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    experts = {name for name in state if ".experts." in name}
    index, _ = own_part(model, rank=0, world_size=world, zero3=False)
    layouts = dict(index.tensors)
    for name in experts:
        spans = expert_parallel_spans(state[name].numel(), state[name].shape[0], ep_size, world)
        part = max(end - begin for begin, end in spans)
        layouts[name] = TensorLayout(dtype=layouts[name].dtype, shape=layouts[name].shape, part=part, spans=spans)
    index = PartitionIndex(format=FORMAT, world_size=world, tensors=layouts)
    for rank in range(world):
        parts = {}
        for name, (begin, end) in index.held_by(rank).items():
            parts[name] = state[name].reshape(-1)[begin:end].contiguous()
        save_file(parts, str(directory / part_file(rank, world)), metadata={"format": "pt"})
    (directory / PARTITIONS_FILE).write_text(index.to_json())
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.model_dump(mode="json")))
    return index


@pytest.mark.parametrize(("world", "ep_size"), [(2, 2), (4, 2), (6, 2), (8, 8)])
def test_expert_parallel_parts_load_back_into_exactly_the_model(tmp_path: Path, world: int, ep_size: int) -> None:
    torch.manual_seed(0)
    model = OracleMoE(small()).eval()
    write_expert_parallel(model, tmp_path, world, ep_size)
    index = read_index(tmp_path, None)
    assert index.tensors["layers.0.moe.experts.w13"].spans is not None
    assert index.tensors["norm.weight"].spans is None
    loaded = load_checkpoint(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    flat = model.state_dict()["layers.1.moe.experts.w2"].reshape(-1)
    with PartitionedReader(tmp_path, index) as reader:
        reader.check_headers()
        for begin, end in [(0, flat.numel()), (5, flat.numel() // 2 + 7), (flat.numel() // 3, flat.numel() - 1)]:
            assert torch.equal(reader.read("layers.1.moe.experts.w2", begin, end), flat[begin:end])


def test_a_layout_without_spans_is_written_as_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    index, _ = own_part(OracleMoE(small()), rank=0, world_size=2, zero3=False)
    assert "spans" not in index.to_json()


@pytest.mark.parametrize(
    "spans",
    [
        [(0, 12), (12, 24)],  # too few ranges
        [(0, 12), (10, 24), (24, 48), (36, 48)],  # overlapping
        [(0, 12), (13, 24), (24, 36), (36, 48)],  # a gap
        [(0, 12), (12, 24), (24, 36), (36, 47)],  # short of the end
    ],
)
def test_ranges_that_do_not_tile_the_tensor_once_are_refused(tmp_path: Path, spans: list[tuple[int, int]]) -> None:
    layout = {"dtype": "F32", "shape": [8, 6], "part": 12, "spans": [list(s) for s in spans]}
    document = {"format": FORMAT, "world_size": 4, "tensors": {"w": layout}}
    (tmp_path / PARTITIONS_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"tensors\.w|ranges"):
        read_index(tmp_path, None)


def test_empty_ranges_outside_the_tensor_are_refused(tmp_path: Path) -> None:
    """Empty ranges hold nothing, but one that lies outside the tensor is no range of it (red team helper-39)."""
    layout = {"dtype": "F32", "shape": [8, 6], "part": 24, "spans": [[0, 24], [24, 48], [-5, -5], [99, 99]]}
    document = {"format": FORMAT, "world_size": 4, "tensors": {"w": layout}}
    (tmp_path / PARTITIONS_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"leave \[0, 48\]"):
        read_index(tmp_path, None)
    layout["spans"] = [[0, 24], [24, 48], [0, 0], [48, 48]]
    (tmp_path / PARTITIONS_FILE).write_text(json.dumps(document))
    assert read_index(tmp_path, None).tensors["w"].spans == [(0, 24), (24, 48), (0, 0), (48, 48)]
