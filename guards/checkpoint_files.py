"""What a checkpoint folder may contribute to serving and publishing, in one place, and the scan that holds a folder
to it.

A checkpoint is what its signed provenance says it is. Every file the server or the publisher takes from the folder
(`CONTRIBUTED`: weights, config, tokenizer, default system prompt, generation config) must be listed in the signed
record, and is read from bytes checked against the signed sha256 (`read_verified`), so a file swapped after the
check is never used. Beside them a folder `oracle train` wrote holds only the trainer's own state for resuming
(`TRAINING_STATE`), which neither serving nor publishing reads. Anything else in the folder — an unsigned
`default_system.txt` dropped in, a second `*.safetensors` shard, a `*.bin`, a `tokenizer.model`, a `*.jinja` chat
template, any `*.json` — is refused by name unless the record covers it: an allowlist, not a list of patterns, so a
file a future loader would pick up is refused before anyone thinks of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from guards.provenance import PROVENANCE_FILE
from oracle.tokenization.tokenizer import TOKENIZER_FILE, TOKENIZER_FILES
from oracle_base.bounded_read import read_regular_file
from oracle_base.errors import Refused
from oracle_base.weight_files import MANIFEST, PARTITIONS_FILE, STATE_DIRS, TRAINER_STATE, WEIGHTS_FILE, is_part_file

WEIGHTS = WEIGHTS_FILE
PARTITIONS = PARTITIONS_FILE  # the index of the per-rank parts `oracle train` writes (oracle.moe850b.partitioned)
CONFIG = "config.json"
TOKENIZER = TOKENIZER_FILE  # what the server encodes with
PROVENANCE = PROVENANCE_FILE  # the signed record itself
SYSTEM_PROMPT = "default_system.txt"
GENERATION_CONFIG = "generation_config.json"

# Served and published only when the signed record lists them; serving needs the weights (one file, or the parts a
# training job's ranks wrote with their index: `weights_files`), the config they are built with and the tokenizer
# the server encodes with.
REQUIRED = (CONFIG, TOKENIZER)
CONTRIBUTED = (WEIGHTS, PARTITIONS, CONFIG, *TOKENIZER_FILES, SYSTEM_PROMPT, GENERATION_CONFIG)

# Written by `oracle train` for resuming (oracle.train.checkpoint, oracle.train.trainer), read by neither serving
# nor publishing.
TRAINING_STATE_FILES = frozenset({PROVENANCE, MANIFEST, TRAINER_STATE})
TRAINING_STATE_DIRS = frozenset(STATE_DIRS)


class UncoveredFileError(Refused, ValueError):
    """A checkpoint file is used but its bytes are not the ones the signed record lists."""


def uncovered_files(directory: Path, signed: Mapping[str, object]) -> list[str]:
    """The names in `directory` that its signed record (`signed`: name -> sha256) does not cover and that are not
    the trainer's own state: each could be picked up by a loader, so each refuses the folder."""
    found: list[str] = []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if name in signed and entry.is_file():
            continue
        if name in TRAINING_STATE_FILES and entry.is_file() and not entry.is_symlink():
            continue
        if name in TRAINING_STATE_DIRS and entry.is_dir() and not entry.is_symlink():
            continue
        found.append(name + ("/" if entry.is_dir() else ""))
    return found


def uncovered_message(directory: Path, names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"{directory} holds {shown}, which its signed {PROVENANCE} does not cover; a checkpoint contributes only "
        "the files its provenance signs (guards/checkpoint_files.py): remove them, or serve and publish the folder "
        "`oracle train` wrote"
    )


def is_contributed(name: str) -> bool:
    return name in CONTRIBUTED or is_part_file(name)


def signed_contributions(signed: Mapping[str, object]) -> dict[str, str]:
    """The contributed files the record lists: name -> signed sha256."""
    return {name: str(signed[name]) for name in sorted(signed) if is_contributed(name)}


def missing_required(signed: Mapping[str, object]) -> list[str]:
    """What a record must list for its folder to be served, and does not: the config, the tokenizer, and the weights
    as one file or as an index of parts with every part it names (checked against the index when loading)."""
    missing = [name for name in REQUIRED if name not in signed]
    if WEIGHTS not in signed and PARTITIONS not in signed:
        missing.insert(0, f"{WEIGHTS} (or {PARTITIONS} and its parts)")
    elif PARTITIONS in signed and not any(is_part_file(name) for name in signed):
        missing.insert(0, "the part files of " + PARTITIONS)
    return missing


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of `path`, once, if they are the signed ones; what callers parse is then exactly what was checked."""
    try:
        data = read_regular_file(path)
    except OSError as exc:
        raise UncoveredFileError(f"{path}: cannot read it ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UncoveredFileError(
            f"{path}: its sha256 is not the one its signed provenance lists (the file changed after the check)"
        )
    return data
