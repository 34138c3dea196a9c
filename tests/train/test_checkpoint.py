"""Checkpoint folders: sealed whole, verified before resuming, pruned to the last K; metrics cut back on resume."""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oracle.train import checkpoint as ckpt
from oracle_base.digests import sha256_file
from oracle_base.records.training import DataPosition, TrainerState


def _state(step: int) -> str:
    return TrainerState(
        step=step,
        data_position=DataPosition(epoch=0, consumed=8 * step),
        seed=3,
        world_size=1,
        config_sha256="c" * 64,
        data_manifest_sha256="d" * 64,
        train_config={"name": "tiny", "seed": 3},
    ).to_json()


def _checkpoint(
    run: Path, step: int, payload: bytes = b"weights", state: Callable[[dict[str, Any]], object] | None = None
) -> Path:
    """A sealed checkpoint; `state` changes its trainer state before it is sealed."""
    partial = ckpt.partial_dir(run, step)
    (partial / "deepspeed").mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(payload)
    (partial / "deepspeed" / "optim.pt").write_bytes(b"optimizer" * 100)
    (partial / ckpt.TRAINER_STATE).write_text(_state(step))
    if state is not None:
        _rewrite(partial / ckpt.TRAINER_STATE, state)
    return ckpt.seal(partial, run / ckpt.step_dir_name(step))


def test_a_sealed_checkpoint_verifies_and_the_partial_folder_is_gone(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 5)
    assert final.name == "step-00000005"
    assert not ckpt.partial_dir(tmp_path, 5).exists()
    state = ckpt.verify_complete(final)
    assert (state.step, state.data_position, state.seed) == (5, DataPosition(epoch=0, consumed=40), 3)
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "deepspeed/optim.pt", ckpt.TRAINER_STATE}
    assert manifest["schema_version"] == 1


def _rewrite(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2) + "\n")


def assert_one_line_naming(message: str, kind: str, path: Path, key: str, problem: str) -> None:
    """`KIND PATH:LINE: KEY: PROBLEM (fix)` on one line; LINE is the key's own line when the file has the key."""
    match = re.fullmatch(rf"{kind} {re.escape(str(path))}:(\d+): {re.escape(key)}: {problem}.* \(.+\)", message)
    assert match, message
    lines = path.read_text().splitlines()
    holding = [number for number, line in enumerate(lines, 1) if f'"{key.rsplit(".", 1)[-1]}":' in line]
    if len(holding) == 1:  # present once (not a missing key): the message points at it
        assert int(match.group(1)) == holding[0], message


def _candidates_of(run: Path) -> list[str]:
    from oracle.train.trainer import _candidates

    return list(_candidates(run, "auto", 1)["candidates"])


# Each refused with one line naming the file, the line, the key and what is wrong.
DEFECTS = {
    "manifest, unknown key": (ckpt.MANIFEST, lambda d: d.update(signature="x"), "signature", "Extra inputs are"),
    "manifest, missing key": (
        ckpt.MANIFEST,
        lambda d: d["files"]["model.safetensors"].pop("sha256"),
        "files.model.safetensors.sha256",
        "Field required",
    ),
    "manifest, wrong type": (
        ckpt.MANIFEST,
        lambda d: d.update(world_size="1"),
        "world_size",
        "Input should be a valid",
    ),
    "manifest, wrong version": (ckpt.MANIFEST, lambda d: d.update(schema_version=2), "schema_version", "Input should"),
    "state, unknown key": (ckpt.TRAINER_STATE, lambda d: d.update(optimizer="adamw"), "optimizer", "Extra inputs"),
    "state, missing key": (
        ckpt.TRAINER_STATE,
        lambda d: d["data_position"].pop("consumed"),
        "data_position.consumed",
        "Field required",
    ),
    "state, wrong type": (ckpt.TRAINER_STATE, lambda d: d.update(step="5"), "step", "Input should be a valid integer"),
    "state, wrong version": (
        ckpt.TRAINER_STATE,
        lambda d: d.update(schema_version=0),
        "schema_version",
        "Input should",
    ),
}


@pytest.mark.parametrize(("name", "change", "key", "problem"), DEFECTS.values(), ids=DEFECTS)
def test_a_manifest_or_trainer_state_off_its_schema_is_refused_naming_file_line_and_key(
    tmp_path: Path, name: str, change: Callable[[dict[str, Any]], object], key: str, problem: str
) -> None:
    if name == ckpt.MANIFEST:
        final = _checkpoint(tmp_path, 2)
        _rewrite(final / name, change)
    else:  # sealed with it: the manifest is satisfied
        final = _checkpoint(tmp_path, 2, state=change)
    with pytest.raises(ckpt.CheckpointCorruptError) as refused:
        ckpt.verify_complete(final)
    kind = "checkpoint manifest" if name == ckpt.MANIFEST else "trainer state"
    assert_one_line_naming(str(refused.value), kind, final / name, key, problem)
    if name == ckpt.MANIFEST:
        assert _candidates_of(tmp_path) == []  # resume auto sets it aside


def test_a_manifest_and_trainer_state_from_before_their_schema_version_still_read(tmp_path: Path) -> None:
    """Checkpoints written before the records carried `schema_version` are version 1: a run resumes across the
    upgrade."""
    final = _checkpoint(tmp_path, 2, state=lambda d: d.pop("schema_version"))
    _rewrite(final / ckpt.MANIFEST, lambda d: d.pop("schema_version"))
    assert ckpt.read_manifest(final).schema_version == 1
    assert ckpt.read_trainer_state(final).schema_version == 1


def test_resume_auto_never_picks_a_corrupt_or_half_written_checkpoint(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2)
    flipped = _checkpoint(tmp_path, 4)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[0] ^= 1
    (flipped / "model.safetensors").write_bytes(bytes(data))
    truncated = _checkpoint(tmp_path, 6)
    (truncated / "deepspeed" / "optim.pt").write_bytes(b"optimizer")
    unsealed = tmp_path / ckpt.step_dir_name(8)  # a folder with the final name but no manifest
    unsealed.mkdir()
    (unsealed / ckpt.TRAINER_STATE).write_text(json.dumps({"step": 8}))
    ckpt.partial_dir(tmp_path, 10).mkdir()  # a save that died half-way
    found = ckpt.newest_complete(tmp_path)
    assert found is not None
    assert found.directory.name == "step-00000002"
    reasons = [reason for _, reason in found.skipped]
    assert len(reasons) == 3
    assert "MANIFEST.json is missing" in reasons[0]
    assert "optim.pt has 9 bytes" in reasons[1]
    assert "model.safetensors: sha256 differs" in reasons[2]


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert ckpt.newest_complete(tmp_path / "missing") is None
    ckpt.partial_dir(tmp_path, 3).mkdir()
    assert ckpt.newest_complete(tmp_path) is None


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 1)
    (final / "deepspeed" / "optim.pt").unlink()
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"optim\.pt is missing"):
        ckpt.verify_complete(final)


def test_prune_keeps_the_newest_k_complete_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _checkpoint(tmp_path, step)
    broken = tmp_path / ckpt.step_dir_name(5)
    broken.mkdir()
    ckpt.prune(tmp_path, 2, current=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]


def test_resaving_a_step_replaces_the_folder_whole(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 3, b"old")
    final = _checkpoint(tmp_path, 3, b"new")
    assert (final / "model.safetensors").read_bytes() == b"new"
    ckpt.verify_complete(final)


def test_metrics_of_steps_after_the_checkpoint_are_dropped_on_resume(tmp_path: Path) -> None:
    (tmp_path / ckpt.METRICS).write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in range(1, 8)))
    ckpt.truncate_metrics(tmp_path, 4)
    steps = [json.loads(line)["step"] for line in (tmp_path / ckpt.METRICS).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_fresh_start_in_a_run_folder_with_checkpoints_is_refused(tmp_path: Path) -> None:
    from oracle.train.trainer import _candidates

    assert _candidates(tmp_path, None, 1) == {"candidates": [], "explicit": False, "error": None}
    _checkpoint(tmp_path, 4)
    assert "already holds checkpoints; continue it with --resume auto" in _candidates(tmp_path, None, 1)["error"]
    assert _candidates(tmp_path, "auto", 1)["candidates"] == [str(tmp_path / "step-00000004")]


def test_rank_0_lists_candidates_by_size_alone_and_sets_torn_ones_aside(tmp_path: Path) -> None:
    """Rank 0 reads no other rank's file: it checks sizes; the hashes are each rank's own (Trainer.choose_checkpoint,
    and the 2-process resume test in test_trainer.py)."""
    from oracle.train.trainer import _candidates

    _checkpoint(tmp_path, 2)
    torn = _checkpoint(tmp_path, 4)
    flipped = _checkpoint(tmp_path, 6)
    (torn / "model.safetensors").write_bytes(b"weigh")  # truncated: seen without reading it
    (flipped / "model.safetensors").write_bytes(b"weightz")  # same size: left to the rank that wrote it
    plan = _candidates(tmp_path, "auto", 1)
    assert plan["candidates"] == [str(flipped), str(tmp_path / "step-00000002")]
    assert (tmp_path / ".corrupt-step-00000004").is_dir()
    assert not torn.exists()
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"model\.safetensors: sha256 differs from the manifest"):
        ckpt.verify_own(flipped, ckpt.read_manifest(flipped), 0)
    ckpt.verify_own(flipped, ckpt.read_manifest(flipped), 1)  # rank 1 wrote nothing here: nothing to hash
    (tmp_path / "step-00000002" / "model.safetensors").write_bytes(b"")
    (flipped / ckpt.MANIFEST).unlink()  # the save of step 6 never finished
    assert "no checkpoint verifies" in _candidates(tmp_path, "auto", 1)["error"]
    missing = _candidates(tmp_path, str(tmp_path / "step-00000009"), 1)["error"]
    assert "MANIFEST.json is missing" in missing


def test_a_checkpoint_of_another_world_size_is_refused_not_skipped(tmp_path: Path) -> None:
    from oracle.train.trainer import _candidates

    partial = ckpt.partial_dir(tmp_path, 3)
    partial.mkdir(parents=True)
    (partial / ckpt.TRAINER_STATE).write_text("{}")
    (partial / "part-1").write_bytes(b"rank 1's")
    written = ckpt.describe(partial, [partial / "part-1"], 1)
    final = ckpt.seal(partial, tmp_path / ckpt.step_dir_name(3), written=written, world_size=2)
    manifest = ckpt.read_manifest(final)
    assert manifest.files["part-1"].rank == 1
    assert manifest.files[ckpt.TRAINER_STATE].rank == 0
    error = _candidates(tmp_path, "auto", 4)["error"]
    assert "was written by 2 processes and this job has 4" in error
    assert final.is_dir()


def test_a_manifest_naming_a_path_outside_the_folder_or_a_rank_beyond_the_job_is_refused(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 2)
    document = json.loads((final / ckpt.MANIFEST).read_text())
    document["files"]["../escape"] = {"size": 1, "sha256": "0" * 64}
    (final / ckpt.MANIFEST).write_text(json.dumps(document))
    (tmp_path / "escape").write_bytes(b"x")
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"files: '\.\./escape' is not a path inside the checkpoint"):
        ckpt.read_manifest(final)
    del document["files"]["../escape"]
    document["files"][ckpt.TRAINER_STATE]["rank"] = 5
    (final / ckpt.MANIFEST).write_text(json.dumps(document))
    with pytest.raises(ckpt.CheckpointCorruptError, match="names rank 5, not a rank of world_size 1"):
        ckpt.read_manifest(final)


def test_a_manifest_path_under_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    """A checkpoint holds its own files: `deepspeed/` linked to a folder elsewhere would let a resume load (and a
    rank hash) files outside it (red team helper-33, F3)."""
    final = _checkpoint(tmp_path / "run", 2)
    elsewhere = tmp_path / "elsewhere"
    (final / "deepspeed").rename(elsewhere)
    (final / "deepspeed").symlink_to(elsewhere)
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"optim\.pt is \(under\) a symbolic link"):
        ckpt.read_manifest(final)


def _signed(run: Path, step: int, state: dict[str, str] | None = None) -> Path:
    """A checkpoint whose provenance (signed by the session trust root's key) binds its training state."""
    from guards.keys import load_signing_key
    from guards.provenance import write_provenance
    from tests.trust import session_key

    partial = ckpt.partial_dir(run, step)
    (partial / "deepspeed").mkdir(parents=True)
    (partial / "rng").mkdir()
    (partial / "model.safetensors").write_bytes(b"weights")
    (partial / "deepspeed" / "optim.pt").write_bytes(b"optimizer" * 100)
    (partial / "rng" / "rank-00000.safetensors").write_bytes(b"rng")
    (partial / ckpt.TRAINER_STATE).write_text(_state(step))
    if state is None:
        state = {
            name: sha256_file(partial / name)
            for name in ("deepspeed/optim.pt", "rng/rank-00000.safetensors", ckpt.TRAINER_STATE)
        }
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(session_key())})
    write_provenance(partial, ["model.safetensors"], {"training_state": state}, key)
    return ckpt.seal(partial, run / ckpt.step_dir_name(step))


def test_a_run_that_signs_resumes_only_state_its_signed_provenance_binds(tmp_path: Path) -> None:
    """Laundering (red team helper-33, F3): the manifest is a plain list of digests, so whoever can write the run
    folder could change DeepSpeed's master weights and rewrite it; a run that signs its checkpoints then signed
    weights derived from unsigned state. Now the signed record binds that state, and rank 0 checks it."""
    from oracle.train.trainer import _candidates

    good = _signed(tmp_path, 2)
    ckpt.require_signed_state(good, ckpt.read_manifest(good), tmp_path)
    assert _candidates(tmp_path, "auto", 1, signed_by=tmp_path)["candidates"] == [str(good)]

    laundered = _signed(tmp_path, 4)
    (laundered / "deepspeed" / "optim.pt").write_bytes(b"OPTIMIZER" * 100)  # same size, other master weights
    manifest = json.loads((laundered / ckpt.MANIFEST).read_text())
    manifest["files"]["deepspeed/optim.pt"]["sha256"] = sha256_file(laundered / "deepspeed" / "optim.pt")
    (laundered / ckpt.MANIFEST).write_text(json.dumps(manifest))
    ckpt.verify_complete(laundered)  # the manifest alone is satisfied
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"does not sign the training state.*deepspeed/optim\.pt"):
        ckpt.require_signed_state(laundered, ckpt.read_manifest(laundered), tmp_path)
    plan = _candidates(tmp_path, "auto", 1, signed_by=tmp_path)
    assert plan["candidates"] == [str(good)]  # the laundered one set aside, said so
    assert (tmp_path / ".corrupt-step-00000004").is_dir()
    # a run without a signing key resumes unsigned state: its own checkpoints are unsigned anyway
    unsigned = _checkpoint(tmp_path / "other", 2)
    assert _candidates(tmp_path / "other", "auto", 1)["candidates"] == [str(unsigned)]
    with pytest.raises(ckpt.CheckpointCorruptError, match="resumes only signed state"):
        ckpt.require_signed_state(unsigned, ckpt.read_manifest(unsigned), tmp_path)
