"""What `oracle serve` loads: the verified bytes only, the stop and suppressed ids, the defaults and prompts."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guards.keys import load_signing_key
from guards.provenance import write_provenance
from guards.runtime import ServingRefusedError
from oracle.serve.loading import ServeLoadError, ServeOptions, check_servable, load_served_model, resolve_checkpoint
from oracle.tokenization.special_tokens import ASSISTANT, END_OF_TEXT, END_OF_TURN, PAD, SYSTEM, USER
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle_base.records.training import CheckpointManifest, ManifestEntry
from oracle_base.weight_files import MANIFEST, PARTITIONS_FILE, TRAINER_STATE, part_file
from tests.serve.fixtures import ServedCheckpoint, flip_last_byte


def options(served: ServedCheckpoint, checkpoint: Path) -> ServeOptions:
    return ServeOptions(checkpoint=checkpoint, root=served.root, max_batch=2)


def test_weights_swapped_after_the_check_are_refused_at_load(served: ServedCheckpoint, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(served.checkpoint, tmp_path / "step-00000001"))
    opts = options(served, checkpoint)
    servable = check_servable(opts)  # provenance verified here
    flip_last_byte(checkpoint / part_file(1, 2))  # ... and one rank's part changes before the load
    with pytest.raises(ServeLoadError, match="changed after the check"):
        load_served_model(opts, servable)


def test_an_altered_tokenizer_in_the_checkpoint_is_refused(served: ServedCheckpoint, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(served.checkpoint, tmp_path / "step-00000001"))
    flip_last_byte(checkpoint / "tokenizer_config.json")  # covered by the signed record like the weights
    with pytest.raises(ServingRefusedError, match=r"tokenizer_config\.json is missing or its sha256 differs"):
        check_servable(options(served, checkpoint))


def test_a_checkpoint_whose_record_signs_no_tokenizer_is_refused_even_with_one_given(
    served: ServedCheckpoint, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copytree(served.checkpoint, tmp_path / "step-00000001"))
    for name in TOKENIZER_FILES:
        (checkpoint / name).unlink()
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(served.signing_key)})
    weights = [PARTITIONS_FILE, part_file(0, 2), part_file(1, 2)]
    write_provenance(checkpoint, [*weights, "config.json"], {"run": "older"}, key)  # no tokenizer signed
    with pytest.raises(ServingRefusedError, match=r"does not list tokenizer\.json"):
        check_servable(options(served, checkpoint))
    tokenizer_given = ServeOptions(checkpoint=checkpoint, root=served.root, tokenizer=served.tokenizer)
    with pytest.raises(ServingRefusedError, match=r"does not list tokenizer\.json"):
        check_servable(tokenizer_given)


def test_a_tokenizer_given_beside_the_checkpoint_must_be_the_one_it_signs(
    served: ServedCheckpoint, tmp_path: Path
) -> None:
    same = ServeOptions(checkpoint=served.checkpoint, root=served.root, tokenizer=served.tokenizer)
    assert check_servable(same).sha256["tokenizer.json"]  # the same bytes: accepted, and the signed file is used
    other = Path(shutil.copytree(served.tokenizer, tmp_path / "other-tokenizer"))
    flip_last_byte(other / "tokenizer.json")
    with pytest.raises(ServingRefusedError, match=r"--tokenizer .* is not the one .* signs; drop --tokenizer"):
        check_servable(ServeOptions(checkpoint=served.checkpoint, root=served.root, tokenizer=other))


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


def test_an_older_checkpoint_renamed_as_a_newer_step_is_refused(served: ServedCheckpoint, tmp_path: Path) -> None:
    """A rollback (red team helper-33): the signed record of step 1 in a folder named step 9 — resolve_checkpoint
    would pick it as the newest — is refused; the step a record signs is the step its folder names."""
    checkpoint = Path(shutil.copytree(served.checkpoint, tmp_path / "step-00000009"))
    with pytest.raises(ServingRefusedError, match="named for step 9 but its signed record is of step 1"):
        check_servable(options(served, checkpoint))


MANIFEST_DEFECTS = {  # the change, the key named, the problem, the text of the line named
    "unknown key": (lambda d: d.update(signed=True), "signed", "Extra inputs are not permitted", '"signed"'),
    "missing key": (
        lambda d: d["files"][TRAINER_STATE].pop("size"),
        f"files.{TRAINER_STATE}.size",
        "Field required",
        f'"{TRAINER_STATE}"',  # the entry that lacks it
    ),
    "wrong type": (lambda d: d.update(world_size="1"), "world_size", "Input should be a valid integer", '"world_size"'),
    "wrong version": (lambda d: d.update(schema_version=7), "schema_version", "Input should be 1", '"schema_version"'),
}


@pytest.mark.parametrize(("change", "key", "problem", "named"), MANIFEST_DEFECTS.values(), ids=MANIFEST_DEFECTS)
def test_a_run_folder_skips_a_checkpoint_whose_manifest_is_off_its_schema(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[dict[str, Any]], object],
    key: str,
    problem: str,
    named: str,
) -> None:
    """The newest checkpoint of a run is one whose manifest (written last) reads by its schema; a newer one that
    does not is skipped, with one line naming the file, the line and the key."""
    manifest = CheckpointManifest(files={TRAINER_STATE: ManifestEntry(rank=0, sha256="0" * 64, size=2)})
    for step in (1, 2):
        (tmp_path / f"step-0000000{step}").mkdir()
        (tmp_path / f"step-0000000{step}" / MANIFEST).write_text(manifest.to_json())
    newer = tmp_path / "step-00000002" / MANIFEST
    document = json.loads(newer.read_text())
    change(document)
    newer.write_text(json.dumps(document, indent=2))
    with caplog.at_level("WARNING", logger="oracle.serve"):
        assert resolve_checkpoint(tmp_path) == tmp_path / "step-00000001"
    (warning,) = [record.getMessage() for record in caplog.records]
    line = next(n for n, text in enumerate(newer.read_text().splitlines(), 1) if named in text)
    assert warning == f"skipping {newer.parent}: checkpoint manifest {newer}:{line}: {key}: {problem}"
