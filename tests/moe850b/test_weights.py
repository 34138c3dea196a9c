import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oracle.moe850b.model import OracleMoE
from oracle.moe850b.weights import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint, save_checkpoint
from tests.conftest import micro_config


def _model(**overrides: object) -> OracleMoE:
    torch.manual_seed(0)
    return OracleMoE(micro_config(**overrides)).eval()


def test_round_trip_reproduces_the_logits(tmp_path: Path) -> None:
    model = _model(bias_balancing=True)
    model.blocks()[1].moe.router.expert_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path).eval()
    ids = torch.randint(0, 32, (2, 10))
    torch.testing.assert_close(loaded(ids).logits_BSV, model(ids).logits_BSV, rtol=0, atol=0)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["name"] == "micro"


def test_tied_checkpoint_stores_the_shared_tensor_once(tmp_path: Path) -> None:
    save_checkpoint(_model(tie_embeddings=True), tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / WEIGHTS_FILE)
    loaded = load_checkpoint(tmp_path)
    assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_weights_are_safetensors_not_pickle(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path)
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    assert json.loads(raw[8 : 8 + header_length])["__metadata__"] == {"format": "pt"}
    assert not raw.startswith(b"\x80")
    assert not raw.startswith(b"PK")
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are renamed into place"


def test_a_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    tensors["layers.1.moe.experts.w2"] = torch.zeros(4, 16, 24)
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=r"'layers\.1\.moe\.experts\.w2' has shape \(4, 16, 24\)"):
        load_checkpoint(tmp_path)


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    del tensors["norm.weight"]
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=r"norm\.weight"):
        load_checkpoint(tmp_path)


def test_a_pickle_file_is_refused(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path)


def test_a_missing_config_is_explained(tmp_path: Path) -> None:
    save_checkpoint(_model(), tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tmp_path)
