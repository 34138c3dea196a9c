"""The names of the files that hold a model's weights, in one place and free of heavy imports (the guards that hold a
checkpoint folder to its signed record import them without loading torch).

- `model.safetensors`: the whole model in one file;
- `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`: huggingface_hub's shards of whole tensors;
- `model-rank-RRRRR-of-NNNNN.safetensors` + `model.partitions.json`: each training rank's own part of every tensor
  (oracle.moe850b.partitioned).

And the layout of a training checkpoint folder around them (oracle.train.checkpoint writes it; the guards and the
server read it): `MANIFEST.json` last, `trainer_state.json`, and the folders only a resume loads.
"""

from __future__ import annotations

import re

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
PARTITIONS_FILE = "model.partitions.json"
MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
STATE_DIRS = ("deepspeed", "rng")  # DeepSpeed's partitions and the RNG states: what a resume loads
_PART_FILE = re.compile(r"^model-rank-(\d{5})-of-(\d{5})\.safetensors$")


def part_file(rank: int, world_size: int) -> str:
    return f"model-rank-{rank:05d}-of-{world_size:05d}.safetensors"


def is_part_file(name: str) -> bool:
    return _PART_FILE.match(name) is not None
