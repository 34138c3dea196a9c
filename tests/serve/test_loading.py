"""What `oracle serve` loads: the verified bytes only, the stop and suppressed ids, the defaults and prompts."""

import shutil
from pathlib import Path

import pytest

from oracle.serve.loading import ServeLoadError, ServeOptions, check_servable, load_served_model
from oracle.tokenization.special_tokens import ASSISTANT, END_OF_TEXT, END_OF_TURN, PAD, SYSTEM, USER
from tests.serve.fixtures import ServedCheckpoint


def options(served: ServedCheckpoint, checkpoint: Path) -> ServeOptions:
    return ServeOptions(checkpoint=checkpoint, root=served.root, tokenizer=served.tokenizer, max_batch=2)


def test_weights_swapped_after_the_check_are_refused_at_load(served: ServedCheckpoint, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(served.checkpoint, tmp_path / "step-00000001"))
    opts = options(served, checkpoint)
    servable = check_servable(opts)  # provenance verified here
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))  # ... and the file changes before the load
    with pytest.raises(ServeLoadError, match="changed after the check"):
        load_served_model(opts, servable)


def test_the_loaded_model_stops_on_turn_markers_and_never_samples_reserved_ids(served: ServedCheckpoint) -> None:
    opts = options(served, served.checkpoint.parent)  # a run folder: its newest complete checkpoint
    servable = check_servable(opts)
    assert servable.checkpoint == served.checkpoint
    model = load_served_model(opts, servable)
    try:
        vocab = model.tokenizer.get_vocab(with_added_tokens=True)
        assert {vocab[t] for t in (END_OF_TEXT, END_OF_TURN, SYSTEM, USER, ASSISTANT)} <= model.engine.stop_token_ids
        suppressed = set(model.engine.suppress_V.nonzero().flatten().tolist())
        reserved = {i for token, i in vocab.items() if token.startswith("<|reserved_")}
        assert reserved
        assert suppressed == reserved | {vocab[PAD]}
        system = (served.root / "hub" / "assets" / "default_system.txt").read_text(encoding="utf-8").strip()
        assert model.default_system == system
        assert (model.temperature, model.top_p) == (0.7, 0.9)  # hub/assets/generation_config.json
        assert all(block.moe.capacity_factor is None for block in model.engine.model.blocks())
    finally:
        model.engine.stop(timeout=60)
