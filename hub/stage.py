"""`oracle hub build`: stage exactly the files to publish, validated offline, and the publish gate over them.

A staged folder holds the model card (`README.md`), `config.json`, `generation_config.json`, the default prompts,
the tokenizer files when a tokenizer is given (or committed under oracle/tokenization/assets), the attestation the
publish is gated on (`attestation.json`), and — only when `--checkpoint` names a transformers export whose signed
provenance verifies — the export: its `config.json` (Qwen2MoeForCausalLM), `generation_config.json`, tokenizer,
weights (`model.safetensors`, or shards `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`) and
`provenance.json`. The card then shows the transformers snippet that loads it. It is written into a temporary folder
and renamed into place, so a failed build leaves the previous one whole.

What is published as weights is the folder `oracle export --format hf` wrote, never a training checkpoint (whose
files only Oracle reads; one is refused with the export command to run). The export is taken only under a
configured trust root (never the development default, never keys of the checkout or the current directory): its
provenance verifies against the trust root's provenance keys and records a transformers export; the checkpoint it
names as its source is present and its provenance.json is the one named, signed by the trust root too; the folder
holds exactly the files its record lists (a shard missing or extra is refused by name); the index names exactly the
shards listed; its config is the architecture the card describes. What is staged is verified again as copied, so
the bytes published are the bytes verified. When the export signs a tokenizer, `--tokenizer` may only repeat it.
A `hub build --checkpoint` that is refused is audited (gate `publish`, action `build`); `hub publish` audits its
own decisions.

The staged-file checks (PUB001-PUB005) look at the files themselves, which the tree-wide gates never see:
PUB001 a file outside the allowed set, PUB002 an environment file, PUB003 a secret (tokens, keys), PUB004 a weights
file (every shard) or a file beside it that the staged signed provenance does not cover with the staged bytes'
sha256, a file that record lists but that is not staged, an index that does not name exactly the staged shards,
PUB005 the card's metadata, the cross-file numbers, or a card for transformers over a config transformers cannot
load without remote code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guards.trust import TrustRoot
from oracle.tokenization.tokenizer import TOKENIZER_ASSETS, TOKENIZER_FILES
from oracle_base.digests import sha256_file
from oracle_base.errors import Refused
from oracle_base.secrets import SECRET_BYTES

HUB_DIR = Path(__file__).parent
ASSETS = HUB_DIR / "assets"
DEFAULT_OUT = Path(".oracle") / "hub" / "staged"

CARD = "README.md"
CONFIG = "config.json"
GENERATION = "generation_config.json"
PROMPTS = ("default_system.txt", "default_intro.txt")
ATTESTATION = "attestation.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PROVENANCE = "provenance.json"
ALLOWED_FILES = frozenset(
    {CARD, CONFIG, GENERATION, *PROMPTS, ATTESTATION, *TOKENIZER_FILES, WEIGHTS, WEIGHTS_INDEX, PROVENANCE}
)
# The shards `oracle export --format hf` writes (huggingface_hub's `model{suffix}.safetensors` pattern).
SHARD = re.compile(r"^model-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")
# What an export's signed record may list: everything it contributes (the record itself beside them).
EXPORT_FILES = frozenset({CONFIG, GENERATION, *TOKENIZER_FILES, WEIGHTS, WEIGHTS_INDEX})
EXPORT_FORMAT = "hf"
EXPORT_ARCHITECTURE = "Qwen2MoeForCausalLM"
EXPORT_MODEL_TYPE = "qwen2_moe"


def allowed_file(name: str) -> bool:
    """Whether Oracle publishes a file of this name (PUB001)."""
    return name in ALLOWED_FILES or SHARD.match(name) is not None


def is_weights_name(name: str) -> bool:
    return name == WEIGHTS or SHARD.match(name) is not None


# What must never be published (PUB003): tokens and keys by their documented shapes (the one table, shared with
# the data pipeline's masking).
_SECRETS = SECRET_BYTES


class StageError(Refused):
    """The files cannot be staged, or the staged files fail the publish gate; one line says which and why."""


@dataclass
class Staged:
    directory: Path
    commit: str
    attestation_digest: str
    has_weights: bool
    has_tokenizer: bool
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    def manifest(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "commit": self.commit,
            "attestation_digest": self.attestation_digest,
            "files": self.files,
        }


def _json_bytes(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()


def build(
    root: Path,
    *,
    repo_id: str,
    out: Path | None = None,
    checkpoint: Path | None = None,
    tokenizer: Path | None = None,
    config_name: str = "oracle850b",
    private: bool = False,
    secret_values: tuple[str, ...] = (),
) -> Staged:
    """Stage the files to publish into `out` (default .oracle/hub/staged), validate them, and return what was
    staged. Raises StageError (and AttestationError when HEAD has no valid attestation). `private`: stage into a
    fresh folder only this process uses (what publish uploads from) and leave `out` alone. `secret_values`: secrets
    in use (the Hub token) that no staged file may contain."""
    from guards.attestation import verify_attestation
    from oracle.moe850b.config import available_presets
    from policies.settings import load_settings

    root = root.resolve()
    _require_own_code(root)
    if config_name not in available_presets():
        raise StageError(f"--config {config_name!r}: publish one of the presets ({', '.join(available_presets())})")
    settings = load_settings(root)
    attestation = verify_attestation(root, require_signature=settings.attestation.require_signature)
    out = (out if out is not None else root / DEFAULT_OUT).resolve()
    if not private:
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staged = _stage(root, staging, repo_id, checkpoint, tokenizer, config_name, attestation)
        problems = check_staged(root, staging, config_name, secret_values=secret_values)
        if problems:
            raise StageError(f"the staged files fail the publish gate: {problems[0]}")
        if not private:
            _replace(staging, out)
            staged.directory = out
    except StageError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if checkpoint is not None and not private:  # `hub build`; a publish audits its own refusal
            _audit_build_refusal(root, checkpoint, exc)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staged.files = {p.name: sha256_file(p) for p in sorted(staged.directory.iterdir()) if p.is_file()}
    return staged


def _stage(
    root: Path,
    staging: Path,
    repo_id: str,
    checkpoint: Path | None,
    tokenizer: Path | None,
    config_name: str,
    attestation: Any,
) -> Staged:
    from hub.card import generation_config_json, model_config_json, render_card
    from hub.metadata import CardError
    from policies.settings import load_settings

    settings = load_settings(root)
    # the export first: when its record signs a tokenizer, that tokenizer is the one published
    signed = _stage_export(root, checkpoint, staging, config_name) if checkpoint is not None else []
    tokenizer_dir = tokenizer if tokenizer is not None else root / TOKENIZER_ASSETS
    has_tokenizer = all((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES)
    if tokenizer is not None and not has_tokenizer:
        missing = [name for name in TOKENIZER_FILES if not (tokenizer / name).is_file()]
        raise StageError(
            f"--tokenizer {tokenizer}: missing {', '.join(missing)}; save it with `oracle tokenizer train`"
        )
    signed_tokenizer = TOKENIZER_FILES[0] in signed
    if signed_tokenizer:
        if tokenizer is not None:
            differing = [n for n in TOKENIZER_FILES if sha256_file(tokenizer / n) != sha256_file(staging / n)]
            if differing:
                raise StageError(
                    f"--tokenizer {tokenizer}: {', '.join(differing)} differ from the tokenizer the checkpoint's "
                    "signed provenance covers; drop --tokenizer (the checkpoint's own is published)"
                )
        has_tokenizer = True
    if checkpoint is not None and not has_tokenizer:
        raise StageError(
            f"--checkpoint {checkpoint}: the export signs no tokenizer and none is committed, so the card's snippet "
            "(AutoTokenizer) could not run; export a checkpoint trained with a tokenizer, or pass --tokenizer"
        )
    commit = _head(root)  # the attestation verified for HEAD
    try:
        card = render_card(
            config_name=config_name,
            repo_id=repo_id,
            has_weights=checkpoint is not None,
            has_tokenizer=has_tokenizer,
            commit=commit,
            attestation_digest=attestation.digest,
        )
    except CardError as exc:
        raise StageError(str(exc)) from exc
    (staging / CARD).write_text(card, encoding="utf-8")
    if CONFIG not in signed:
        (staging / CONFIG).write_bytes(_json_bytes(model_config_json(config_name)))
    generation = generation_config_json(config_name)
    committed = json.loads((ASSETS / GENERATION).read_text(encoding="utf-8"))
    if config_name == settings.architecture.flagship and committed != generation:  # the asset is the flagship's
        raise StageError(
            f"hub/assets/{GENERATION} differs from the generation config built from {config_name}; "
            "regenerate it (hub.card.generation_config_json) and commit it"
        )
    if GENERATION not in signed:  # an export's own (signed) generation config is the one published
        (staging / GENERATION).write_bytes(_json_bytes(generation))
    for name in PROMPTS:
        shutil.copyfile(ASSETS / name, staging / name)
    if has_tokenizer and not signed_tokenizer:
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, staging / name)
    shutil.copyfile(attestation.path, staging / ATTESTATION)
    return Staged(staging, commit, attestation.digest, checkpoint is not None, has_tokenizer)


def _require_own_code(root: Path) -> None:
    """The card, configs and assets come from the running code: it must be this checkout's (attested) code."""
    if not HUB_DIR.resolve().is_relative_to(root):
        raise StageError(
            f"the running oracle code ({HUB_DIR.parent}) is not the checkout's ({root}); run the checkout's own "
            "`oracle` (its .venv, or PYTHONPATH set to the checkout)"
        )


def _check_replaceable(out: Path) -> None:
    """`--out` is replaced whole: only an empty folder or an earlier staging (allowed files only) may be."""
    if not out.exists():
        return
    if not out.is_dir() or out.is_symlink():
        raise StageError(f"--out {out} exists and is not a folder; choose another --out")
    strangers = [p.name for p in out.iterdir() if not allowed_file(p.name) or not p.is_file()]
    if strangers:
        raise StageError(
            f"--out {out} holds {', '.join(sorted(strangers)[:3])}, which a staging never writes; it is not replaced "
            "(choose an empty or new folder)"
        )


def _replace(staging: Path, out: Path) -> None:
    """Put `staging` at `out`; the previous staging stays whole until the new one is in place."""
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def reviewed(root: Path, directory: Path, *, repo_id: str, secret_values: tuple[str, ...] = ()) -> Staged:
    """A folder staged earlier by `oracle hub build` (and reviewed), re-checked as if new. It is copied into a folder
    only this process uses (links refused), the copy passes the staged-file checks, and every file equals what a
    fresh build from HEAD writes (weights: the export its signed provenance covers, checked as in a build). Returns
    the copy."""
    from guards.attestation import verify_attestation
    from policies.settings import load_settings

    root = root.resolve()
    directory = directory.resolve()
    _require_own_code(root)
    attestation = verify_attestation(root, require_signature=load_settings(root).attestation.require_signature)
    if not directory.is_dir():
        raise StageError(f"--staged {directory}: no such folder; stage with `oracle hub build --out DIR`")
    private = Path(tempfile.mkdtemp(prefix=".reviewed-", dir=_private_parent(root)))
    try:
        for path in sorted(directory.iterdir()):
            if path.is_symlink() or not path.is_file():
                raise StageError(f"--staged {directory}: {path.name} is not a regular file; stage the file itself")
            shutil.copyfile(path, private / path.name, follow_symlinks=False)
        staged_attestation = private / ATTESTATION
        if not staged_attestation.is_file() or sha256_file(staged_attestation) != attestation.digest:
            raise StageError(
                f"--staged {directory}: its {ATTESTATION} is not HEAD's attestation "
                f"(sha256:{attestation.digest[:16]}); stage again with `oracle hub build`"
            )
        config_name = staged_config_name(private)
        problems = check_staged(root, private, config_name, secret_values=secret_values)
        if problems:
            raise StageError(f"the staged files fail the publish gate: {problems[0]}")
        part = _signed_part(root, private) if (private / PROVENANCE).is_file() else None
        try:
            fresh = build(
                root,
                repo_id=repo_id,
                out=private.parent / (private.name + "-fresh"),
                checkpoint=part,
                tokenizer=private if (private / TOKENIZER_FILES[0]).is_file() else None,
                config_name=config_name or "oracle850b",
                private=True,
            )
        finally:
            if part is not None:
                shutil.rmtree(part, ignore_errors=True)
        try:
            expected = {p.name: sha256_file(p) for p in fresh.directory.iterdir() if p.is_file()}
        finally:
            shutil.rmtree(fresh.directory, ignore_errors=True)
        actual = {p.name: sha256_file(p) for p in sorted(private.iterdir()) if p.is_file()}
        differing = sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
        if differing:
            raise StageError(
                f"--staged {directory}: {', '.join(differing[:3])} differ from what HEAD builds; publish what "
                "`oracle hub build` staged, unedited"
            )
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    has_weights = any(is_weights_name(name) for name in actual)
    return Staged(private, _head(root), attestation.digest, has_weights, TOKENIZER_FILES[0] in actual, actual)


def _signed_part(root: Path, staged: Path) -> Path:
    """The export inside a staged folder: its record and the files the record lists, in a folder of their own
    (beside them a staging holds the card and prompts, which no export contributes)."""
    from guards.provenance import ProvenanceError, verify_provenance

    try:
        files = verify_provenance(staged, root, only=[], trust=_publishing_trust(root, "--staged"))["files"]
    except ProvenanceError as exc:
        raise StageError(f"--staged: {exc}; stage again with `oracle hub build --checkpoint`") from exc
    part = Path(tempfile.mkdtemp(prefix=f"{staged.name}-export-", dir=staged.parent))
    for name in (PROVENANCE, *(n for n in files if n in EXPORT_FILES or SHARD.match(n))):
        if (staged / name).is_file():
            shutil.copyfile(staged / name, part / name)
    return part


def _private_parent(root: Path) -> Path:
    parent = root / DEFAULT_OUT.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def staged_config_name(directory: Path) -> str | None:
    """The preset a staged config.json describes (its `name`, or for an export the `name` of its `oracle` block),
    when it is one of ours."""
    from oracle.moe850b.config import available_presets

    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        name = (config.get("oracle") if isinstance(config.get("oracle"), dict) else config).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name in available_presets() else None


def _head(root: Path) -> str:
    from guards import git

    return git.head_commit(root)


def _stage_export(root: Path, export: Path, staging: Path, config_name: str) -> list[str]:
    """Stage the transformers export `oracle export --format hf` wrote into `export` (module docstring: what is
    checked before a byte is copied); the copies are verified again, so what is published is what was verified.
    Returns the names taken from the export (every file its record lists)."""
    from guards.checkpoint_files import UncoveredFileError, read_verified
    from guards.provenance import ProvenanceError, verify_provenance

    what = f"--checkpoint {export}"
    trust = _publishing_trust(root, what)
    try:
        record = verify_provenance(export, root, trust=trust)
    except ProvenanceError as exc:
        raise StageError(
            f"{what}: {exc}; only weights with verifying provenance are published: publish the export as `oracle "
            "export --format hf` wrote it, signed (ORACLE_SIGNING_KEY)"
        ) from exc
    described = record.get("export")
    if not isinstance(described, dict) or described.get("format") != EXPORT_FORMAT:
        raise StageError(
            f"{what} is not a transformers export (its provenance records none); publish what `oracle export "
            f"--format hf --checkpoint {export} --out DIR` writes, with --checkpoint DIR"
        )
    _check_source(root, export, record, trust)
    files: dict[str, Any] = record["files"]
    foreign = sorted(name for name in files if name not in EXPORT_FILES and not SHARD.match(name))
    if foreign:
        raise StageError(
            f"{what}: its provenance lists {', '.join(foreign[:3])}, which an export never holds; publish the "
            "folder `oracle export --format hf` wrote"
        )
    uncovered = sorted(p.name for p in export.iterdir() if p.name != PROVENANCE and p.name not in files)
    if uncovered:
        raise StageError(
            f"{what} holds {', '.join(uncovered[:3])}, which its signed {PROVENANCE} does not cover; remove it, or "
            "export again into an empty folder"
        )
    try:
        config = json.loads(read_verified(export / CONFIG, files[CONFIG])) if CONFIG in files else None
        index = (
            json.loads(read_verified(export / WEIGHTS_INDEX, files[WEIGHTS_INDEX])) if WEIGHTS_INDEX in files else None
        )
    except (UncoveredFileError, ValueError) as exc:
        raise StageError(f"{what}: {exc}; export it again") from exc
    problem = _shard_problem(sorted(name for name in files if is_weights_name(name)), index)
    if problem:
        raise StageError(f"{what}: {problem}; publish the export as `oracle export --format hf` wrote it")
    _check_export_config(what, config, config_name)
    taken = sorted(files)
    for name in (PROVENANCE, *taken):
        shutil.copyfile(export / name, staging / name)
    try:
        verify_provenance(staging, root, only=taken, trust=trust)
    except ProvenanceError as exc:
        raise StageError(f"{what} changed while it was staged ({exc}); stage it again") from exc
    return taken


def _check_source(root: Path, export: Path, record: dict[str, Any], trust: TrustRoot) -> None:
    """The checkpoint the export names as its source is here, its provenance.json is the one named, and that record
    verifies against the same trust root (its signature: its files were verified when the export was made)."""
    from guards.provenance import ProvenanceError, verify_provenance

    source = record.get("source")
    checkpoint = source.get("checkpoint") if isinstance(source, dict) else None
    if not isinstance(checkpoint, str) or not isinstance(source, dict):
        raise StageError(f"--checkpoint {export}: its provenance names no source checkpoint; export it again")
    named = Path(checkpoint)
    if not (named / PROVENANCE).is_file():
        raise StageError(
            f"--checkpoint {export}: the checkpoint it was exported from, {named}, has no {PROVENANCE} here; publish "
            "where that checkpoint is, or export it again from where it is"
        )
    if sha256_file(named / PROVENANCE) != source.get("provenance_sha256"):
        raise StageError(
            f"--checkpoint {export}: {named / PROVENANCE} is not the record the export was made from (its sha256 "
            "differs); export the checkpoint again"
        )
    try:
        verify_provenance(named, root, only=[], trust=trust)
    except ProvenanceError as exc:
        raise StageError(f"--checkpoint {export}: the checkpoint it was exported from: {exc}") from exc


def _shard_problem(weights: list[str], index: object) -> str | None:
    """Why the weights an export's record lists are not one loadable set with `index` (its index, None if none)."""
    if not weights:
        return "its provenance lists no weights (model.safetensors or model-0000k-of-0000n.safetensors)"
    if index is None:
        return (
            None if weights == [WEIGHTS] else f"{WEIGHTS_INDEX} is missing beside the shards {', '.join(weights[:3])}"
        )
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return f"{WEIGHTS_INDEX} has no weight_map of tensor -> file"
    named = set(weight_map.values())
    if WEIGHTS in weights:
        return f"{WEIGHTS} and shards are listed together"
    count = {int(m["count"]) for name in weights if (m := SHARD.match(name))}
    expected = {f"model-{i:05d}-of-{n:05d}.safetensors" for n in count for i in range(1, n + 1)}
    missing = sorted((named | expected) - set(weights))
    if missing:
        return f"{missing[0]} is named by {WEIGHTS_INDEX} or the shard count but not listed in its provenance"
    extra = sorted(set(weights) - named)
    if extra or len(count) != 1:
        return f"{(extra or weights)[0]} is not one of the shards {WEIGHTS_INDEX} names"
    return None


def _check_export_config(what: str, config: object, config_name: str) -> None:
    """The export's config.json: Qwen2MoeForCausalLM without remote code, whose `oracle` block is `config_name`."""
    from oracle.moe850b.config import ConfigError, MoEConfig, load_config

    if not isinstance(config, dict):
        raise StageError(f"{what}: its provenance lists no {CONFIG}; export it again")
    if config.get("architectures") != [EXPORT_ARCHITECTURE] or config.get("model_type") != EXPORT_MODEL_TYPE:
        raise StageError(f"{what}: {CONFIG} is not {EXPORT_ARCHITECTURE} ({EXPORT_MODEL_TYPE}); export it again")
    if "auto_map" in config:
        raise StageError(f"{what}: {CONFIG} asks for remote code (auto_map); export it again")
    try:
        same = MoEConfig.model_validate(config.get("oracle")) == load_config(config_name)
    except (ValueError, ConfigError) as exc:
        raise StageError(f"{what}: {CONFIG} has no valid `oracle` block ({str(exc).splitlines()[0]})") from exc
    if not same:
        raise StageError(
            f"{what}: its config.json is not the {config_name} architecture the card describes; pass the matching "
            "--config"
        )


def _publishing_trust(root: Path, what: str) -> TrustRoot:
    """The trust root weights are published under; never the development default (keys of the tree)."""
    from guards.trust import TrustError, load_trust_root, require_trusted

    try:
        trust = load_trust_root(root)
        require_trusted(trust, f"publishing weights ({what})")
    except TrustError as exc:
        raise StageError(str(exc)) from exc
    return trust


def _audit_build_refusal(root: Path, checkpoint: Path, exc: StageError) -> None:
    from guards import git
    from guards.audit import append_entry

    details: dict[str, object] = {"action": "build", "checkpoint": str(checkpoint), "reason": str(exc)}
    append_entry(root, gate="publish", result="refused", commit=git.head_commit_or_none(root), details=details)


def check_staged(
    root: Path, directory: Path, config_name: str | None = None, *, secret_values: tuple[str, ...] = ()
) -> list[str]:
    """PUB001-PUB005 over a staged folder: problems, one line each, naming the file and the fix. `secret_values`:
    secrets in use (the Hub token) that no file may contain."""
    from hub.metadata import CardError, split_front_matter, validate_card_metadata
    from policies.settings import load_settings
    from policies.weight_formats import weights_kind

    settings = load_settings(root)
    problems: list[str] = []
    record, unverified = _staged_record(root, directory)
    entries = sorted(directory.rglob("*"))
    for path in entries:
        name = path.relative_to(directory).as_posix()
        if path.is_dir():
            continue
        if path.is_symlink() or not path.is_file():
            problems.append(f"PUB001 {name} is not a regular file; stage the file itself")
            continue
        if re.search(r"(^|/)\.env(\.|$)", name) or name.endswith(".env"):
            problems.append(f"PUB002 {name} is an environment file; never publish one (remove it)")
            continue
        if not allowed_file(name):
            allowed = ", ".join(sorted(ALLOWED_FILES | {"model-0000k-of-0000n.safetensors"}))
            problems.append(f"PUB001 {name} is not one of the files Oracle publishes ({allowed}); remove it")
            continue
        data = _read_head(path, 50_000_000)
        for what, pattern in _SECRETS:
            if pattern.search(data):
                problems.append(f"PUB003 {name} contains {what}; remove it and rotate the secret")
                break
        for value in secret_values:
            if value.encode() in data:
                problems.append(f"PUB003 {name} contains the Hub token in use; remove it and rotate the token")
                break
        kind = weights_kind(path)
        if is_weights_name(name) and kind is None:
            kind = "weights"  # by its name: whatever its bytes look like, it is published as weights
        if kind is not None:
            problem = _uncovered(path, name, kind, record, unverified)
            if problem:
                problems.append(f"PUB004 {problem}")
        else:
            problem = _malformed(name, data)
            if problem:
                problems.append(f"PUB005 {name}: {problem}")
            elif record is not None and name in record["files"]:  # the export's config, index, tokenizer
                problem = _uncovered(path, name, None, record, unverified)
                if problem:
                    problems.append(f"PUB004 {problem}")
    if record is not None:
        problems.extend(f"PUB004 {problem}" for problem in _export_set_problems(directory, record))
    card = directory / CARD
    if card.is_file():
        try:
            metadata, _ = split_front_matter(card.read_text(encoding="utf-8"))
        except (CardError, UnicodeDecodeError) as exc:
            problems.append(f"PUB005 {CARD}: {exc}")
        else:
            namespaces = settings.external_weights.allowed_namespaces
            for problem in validate_card_metadata(metadata, allowed_namespaces=namespaces):
                problems.append(f"PUB005 {CARD}: {problem}")
            if metadata.get("library_name") == "transformers" and not _transformers_config(directory / CONFIG):
                problems.append(
                    f"PUB005 {CARD}: library_name is transformers, but {CONFIG} is not {EXPORT_ARCHITECTURE} without "
                    "remote code, so the card's snippet cannot load it; rebuild with `oracle hub build`"
                )
    else:
        problems.append(f"PUB005 {CARD} (the model card) is missing; run `oracle hub build`")
    if not any(problem.startswith("PUB005") for problem in problems):  # the numbers of files that parse
        problems.extend(f"PUB005 {problem}" for problem in cross_file_problems(root, directory, config_name))
    return problems


def _transformers_config(path: Path) -> bool:
    """Whether `path` is a config transformers loads as the export's architecture without remote code."""
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and config.get("architectures") == [EXPORT_ARCHITECTURE]
        and config.get("model_type") == EXPORT_MODEL_TYPE
        and "auto_map" not in config
    )


def _malformed(name: str, data: bytes) -> str | None:
    """Why a text file that is published cannot be read as what its name says, or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start}); write it as UTF-8"
    if name.endswith(".json"):
        try:
            json.loads(text)
        except ValueError as exc:
            return f"not valid JSON ({exc}); rebuild it with `oracle hub build`"
    return None


def _read_head(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(limit)


def _staged_record(root: Path, directory: Path) -> tuple[dict[str, Any] | None, str]:
    """The staged provenance record once its signature verifies under a configured trust root (the development
    default vouches for nothing published), else None and why. Its files are checked one by one (`_uncovered`)."""
    from guards.provenance import ProvenanceError, verify_provenance
    from guards.trust import TrustError, load_trust_root

    if not (directory / PROVENANCE).is_file():
        return None, f"no {PROVENANCE} is staged"
    try:
        trust = load_trust_root(root)
        if trust.development:
            return None, "the development trust root vouches for nothing published"
        return verify_provenance(directory, root, only=[], trust=trust), ""  # only: the card is not the export's
    except (TrustError, ProvenanceError) as exc:
        return None, str(exc)


def _uncovered(path: Path, name: str, kind: str | None, record: dict[str, Any] | None, why: str) -> str | None:
    """Why the staged file `name` (a weights file of `kind`, or a file the record lists) is not covered by the
    staged record with the sha256 of its staged bytes, or None."""
    what = f"{name} is a {kind} weights file" if kind else name
    if record is None:
        return (
            f"{what} without verifying provenance ({why}); publish only an export from `oracle export --format hf` "
            f"with its signed {PROVENANCE}"
        )
    signed = record["files"].get(name)
    if signed is None:
        return f"{what} that {PROVENANCE} does not list; remove it (publish the export as it was written)"
    if sha256_file(path) != signed:
        return (
            f"{name}: its sha256 is not the one {PROVENANCE} signs (altered after the export); stage the export "
            "again with `oracle hub build --checkpoint EXPORT`"
        )
    return None


def _export_set_problems(directory: Path, record: dict[str, Any]) -> list[str]:
    """Every file the staged record lists is staged, and the staged weights are one set with their index."""
    files: dict[str, Any] = record["files"]
    fix = "stage the whole export again (`oracle hub build --checkpoint EXPORT`)"
    missing = [f"{name} is listed in {PROVENANCE} but not staged; {fix}" for name in sorted(files)
               if not (directory / name).is_file()]  # fmt: skip
    if missing:
        return missing
    index: object = None
    if (directory / WEIGHTS_INDEX).is_file():
        try:
            index = json.loads((directory / WEIGHTS_INDEX).read_bytes())
        except ValueError:
            return []  # PUB005 reports it
    staged_weights = sorted(p.name for p in directory.iterdir() if is_weights_name(p.name))
    problem = _shard_problem(staged_weights, index)
    return [f"{problem}; stage the export again with `oracle hub build --checkpoint EXPORT`"] if problem else []


def cross_file_problems(root: Path, directory: Path, config_name: str | None = None) -> list[str]:
    """The architecture policy's consistency rule (ARCH004) over the staged card, config, generation and tokenizer
    configs: vocabulary, context, experts and top-k must equal those of the published architecture (the flagship
    unless a preset is named)."""
    from oracle.moe850b.config import load_config
    from policies.architecture import cross_file_mismatches, flagship_numbers

    if config_name is None:
        numbers = flagship_numbers(root)
    else:
        config = load_config(config_name)
        numbers = {key: getattr(config, key) for key in ("vocab_size", "context_length", "n_experts", "top_k")}
    problems: list[str] = []
    for name in (CARD, CONFIG, GENERATION, "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            problems.extend(f"{name}: {message}" for _, message in cross_file_mismatches(path, numbers))
    return problems
