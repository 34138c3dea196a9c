"""Model weights on disk: `model.safetensors` with `config.json` beside it. Pickle is never written or read.

Writes go to temporary files that are renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from oracle.atomic_write import write_atomically
from oracle.core.rope import RotaryEmbedding
from oracle.moe850b.config import ConfigError, load_config, parse_config
from oracle.moe850b.model import OracleMoE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
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
    """The model saved in `directory`. With `expected_sha256` ({file name: sha256}, e.g. from a verified provenance
    record), config.json and the weights are read once, checked against those digests and loaded from the very
    bytes that were checked, so a file swapped after an earlier check is refused, never loaded. The price: while
    loading, host memory holds the file's bytes and the tensors built from them (about twice the weights)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        if expected_sha256 is None:
            config = load_config(config_path)
        else:
            config = parse_config(_checked_bytes(config_path, expected_sha256).decode("utf-8"), config_path)
    except (ConfigError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{exc}; a checkpoint needs a valid config.json beside its weights") from exc
    with torch.device("meta"):
        model = OracleMoE(config)
    try:
        if expected_sha256 is None:
            tensors = load_file(weights_path, device=str(device))
        else:
            data = _checked_bytes(weights_path, expected_sha256)
            tensors = {name: t.to(device) for name, t in load(data).items()}
            del data
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    expected = {name: tuple(t.shape) for name, t in _stored_state(model).items()}
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


def _checked_bytes(path: Path, expected_sha256: Mapping[str, str]) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from exc
    if path.name not in expected_sha256:
        raise CheckpointError(f"{path}: no verified sha256 was given for it; list it in the provenance record")
    if hashlib.sha256(data).hexdigest() != expected_sha256[path.name]:
        raise CheckpointError(f"{path}: its sha256 is not the verified one (the file changed after the check)")
    return data
