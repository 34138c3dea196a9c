"""Training checkpoints: written whole or not at all, verified before resuming, the last K kept.

A run directory `runs/<run name>/` holds `metrics.jsonl` and one folder per checkpoint, `step-NNNNNNNN/`:

- `model-rank-RRRRR-of-NNNNN.safetensors` + `model.partitions.json` + `config.json`: the weights as each rank's own
  part (oracle.moe850b.partitioned; loadable with `oracle.moe850b.weights.load_checkpoint`, exported with `oracle
  export`), and `provenance.json` beside them (guards/provenance.py);
- `deepspeed/`: DeepSpeed's own checkpoint (each rank's module and optimizer partitions);
- `rng/rank-NNNNN.safetensors`: each rank's random-number generator states;
- `trainer_state.json`: step, data position, seed, world size, the recipe and data manifest hashes;
- `MANIFEST.json`, written last: the size, sha256 and writing rank of every other file.

Both are read and written through their schemas (oracle_base.records.training: `TrainerState`, `CheckpointManifest`).

Every rank writes into `.partial-step-NNNNNNNN/` and hashes what it wrote; rank 0 gathers those digests, hashes its
own files, writes the manifest and renames the folder into place. No rank reads another rank's files, while saving
or resuming: before a resume each rank checks the files it wrote against the manifest (`verify_own`), and rank 0 the
rest. A folder is complete only under its final name with a manifest that matches every file, so a crash mid-save, a
truncated file or a flipped byte is never resumed from: the resume skips it and says why. The manifest guards
against accidents, not people: what is trusted is the signed provenance of the weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from oracle_base.atomic_write import write_atomically
from oracle_base.digests import sha256_file
from oracle_base.errors import ConfigurationError
from oracle_base.records import RecordError
from oracle_base.records.training import CheckpointManifest, TrainerState
from oracle_base.weight_files import MANIFEST as MANIFEST  # re-exported: the layout names live in the base
from oracle_base.weight_files import STATE_DIRS as STATE_DIRS
from oracle_base.weight_files import TRAINER_STATE as TRAINER_STATE

METRICS = "metrics.jsonl"
_NAME = re.compile(r"^step-(\d{8})$")
_WRITTEN_BY_TRAIN = "it is written by `oracle train`: use another checkpoint"


class CheckpointCorruptError(ConfigurationError):
    """A checkpoint folder that is incomplete or altered; the message names the file."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def partial_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f".partial-{step_dir_name(step)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe(root: Path, paths: list[Path], rank: int) -> dict[str, dict[str, Any]]:
    """Manifest entries for files a rank wrote under `root`: {relative path: size, sha256, rank}."""
    return {
        path.relative_to(root).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path), "rank": rank}
        for path in paths
    }


def seal(partial: Path, final: Path, *, written: dict[str, dict[str, Any]] | None = None, world_size: int = 1) -> Path:
    """Write the manifest of everything in `partial` (last), then rename it to `final` (rank 0 only). `written`: the
    entries other ranks reported for the files they wrote (describe); every other file is hashed here, as rank 0's."""
    written = dict(written or {})
    present = {p.relative_to(partial).as_posix(): p for p in sorted(partial.rglob("*")) if p.is_file()}
    reported_missing = sorted(set(written) - set(present))
    if reported_missing:
        raise CheckpointCorruptError(f"{partial}: {reported_missing[0]} was reported written but is not there")
    files = {name: written[name] for name in written}
    files |= describe(partial, [path for name, path in present.items() if name not in written], 0)
    try:  # what other ranks reported is held to the schema before it is sealed
        manifest = CheckpointManifest.model_validate({"files": dict(sorted(files.items())), "world_size": world_size})
    except ValidationError as exc:
        raise CheckpointCorruptError(f"{partial / MANIFEST}: {exc.errors()[0]['msg']} (the save is refused)") from exc
    write_atomically(partial / MANIFEST, manifest.to_json())
    for directory in {partial, *(p for p in partial.rglob("*") if p.is_dir())}:
        _fsync_dir(directory)
    if final.exists():  # a re-save of the same step (a resumed run reaching it again): replace it whole
        shutil.rmtree(final)
    partial.rename(final)
    _fsync_dir(final.parent)
    return final


def read_manifest(directory: Path) -> CheckpointManifest:
    """The manifest of a checkpoint folder (its schema: paths inside the folder, ranks of its world, the trainer
    state listed), once every listed file is there with its size (nothing is hashed)."""
    if not _NAME.match(directory.name):
        raise CheckpointCorruptError(f"{directory}: not a checkpoint folder name (step-NNNNNNNN)")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointCorruptError(f"{manifest_path} is missing: the save did not finish")
    try:
        manifest = CheckpointManifest.read(manifest_path, fix=_WRITTEN_BY_TRAIN)
    except RecordError as exc:
        raise CheckpointCorruptError(str(exc)) from exc
    for relative, entry in manifest.files.items():
        path = directory / relative
        parts = Path(relative).parts
        if any((directory / Path(*parts[: i + 1])).is_symlink() for i in range(len(parts))):
            raise CheckpointCorruptError(f"{path} is (under) a symbolic link; a checkpoint holds its own files")
        if not path.is_file():
            raise CheckpointCorruptError(f"{path} is missing")
        if path.stat().st_size != entry.size:
            raise CheckpointCorruptError(f"{path} has {path.stat().st_size} bytes, the manifest says {entry.size}")
    return manifest


def verify_own(directory: Path, manifest: CheckpointManifest, rank: int | None) -> None:
    """Hash the files rank `rank` wrote (all of them when None) against `manifest`; CheckpointCorruptError names the
    first that differs."""
    for relative, entry in manifest.files.items():
        if rank is None or entry.rank == rank:
            path = directory / relative
            try:
                digest = sha256_file(path)
            except OSError as exc:
                raise CheckpointCorruptError(f"{path} cannot be read ({exc.strerror})") from exc
            if digest != entry.sha256:
                raise CheckpointCorruptError(f"{path}: sha256 differs from the manifest (the file was altered)")


def is_training_state(relative: str) -> bool:
    """Whether a checkpoint file is one a resume loads besides the trainer state."""
    return Path(relative).parts[0] in STATE_DIRS


def require_signed_state(directory: Path, manifest: CheckpointManifest, root: Path) -> None:
    """The checkpoint's provenance verifies against `root`'s trust root and its `training_state` lists exactly the
    DeepSpeed, RNG and trainer-state files of `manifest` with the same sha256 (the ranks then hash their own files
    against the manifest); CheckpointCorruptError naming what differs otherwise. Only the signature is checked
    here: no weights file is read."""
    from guards.provenance import ProvenanceError, verify_provenance

    try:
        record = verify_provenance(directory, root, only=[])
    except ProvenanceError as exc:
        message = f"{exc} (this run signs its checkpoints, so it resumes only signed state)"
        raise CheckpointCorruptError(message) from exc
    signed = record.get("training_state")
    listed = {
        name: entry.sha256 for name, entry in manifest.files.items() if is_training_state(name) or name == TRAINER_STATE
    }
    signed = signed if isinstance(signed, dict) else {}
    if signed != listed:
        differing = sorted(n for n in set(listed) | set(signed) if signed.get(n) != listed.get(n))
        raise CheckpointCorruptError(
            f"{directory}: its signed provenance does not sign the training state the manifest lists "
            f"({', '.join(differing[:3]) or 'none signed'}); resume only from a checkpoint `oracle train` signed"
        )


def read_trainer_state(directory: Path) -> TrainerState:
    """The checkpoint's trainer state, by its schema; CheckpointCorruptError names file, line and key."""
    try:
        return TrainerState.read(directory / TRAINER_STATE, fix=_WRITTEN_BY_TRAIN)
    except RecordError as exc:
        raise CheckpointCorruptError(str(exc)) from exc


def verify_complete(directory: Path) -> TrainerState:
    """The checkpoint's trainer state once every file matches the manifest (hashed here, in one process: for tools
    and tests; a training job splits the work by rank); CheckpointCorruptError otherwise."""
    manifest = read_manifest(directory)
    verify_own(directory, manifest, None)
    return read_trainer_state(directory)


@dataclass(frozen=True)
class Found:
    directory: Path
    state: TrainerState
    skipped: list[tuple[Path, str]]  # newer folders that were not taken, and why


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Folders named like checkpoints, newest step first (complete or not)."""
    if not run_dir.is_dir():
        return []
    named = [p for p in run_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(named, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]


def newest_complete(run_dir: Path) -> Found | None:
    """The newest checkpoint that verifies; older ones are tried when a newer one is corrupt or half-written."""
    skipped: list[tuple[Path, str]] = []
    for directory in checkpoint_dirs(run_dir):
        try:
            return Found(directory, verify_complete(directory), skipped)
        except CheckpointCorruptError as exc:
            skipped.append((directory, str(exc)))
    return None


def set_aside(directory: Path) -> Path:
    """Rename a checkpoint that failed verification to `.corrupt-…`: never resumed from or counted again, kept for a
    post-mortem (delete it by hand)."""
    target = directory.with_name(f".corrupt-{directory.name}")
    if target.exists():
        shutil.rmtree(target)
    return directory.rename(target)


def prune(run_dir: Path, keep_last: int, *, current: int) -> list[Path]:
    """After saving step `current`: keep it and the newest `keep_last - 1` complete checkpoints before it; delete
    the rest, checkpoints of later steps (an abandoned history this run went back from), and partial saves."""
    removed = []
    kept = 0
    for directory in checkpoint_dirs(run_dir):
        step = int(directory.name.removeprefix("step-"))
        if step == current or (step < current and kept < keep_last and (directory / MANIFEST).is_file()):
            kept += 1
            continue
        shutil.rmtree(directory)
        removed.append(directory)
    for partial in run_dir.glob(".partial-step-*"):
        shutil.rmtree(partial)
        removed.append(partial)
    return removed


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines of steps after `step` (written by a run that died after its last checkpoint)."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by the kill

    write_atomically(path, "".join(line + "\n" for line in kept))
