"""`oracle hub build`: stage exactly the files to publish, validated offline, and the publish gate over them.

A staged folder holds the model card (`README.md`), `config.json`, `generation_config.json`, the default prompts,
the tokenizer files when a tokenizer is given (or committed under oracle/tokenization/assets), the attestation the
publish is gated on (`attestation.json`), and — only when a checkpoint's signed provenance verifies — its weights
(`model.safetensors` with `model.safetensors.index.json`, and `provenance.json`). It is written into a temporary
folder and renamed into place, so a failed build leaves the previous one whole.

Weights are taken only under a configured trust root (never the development default, never keys of the checkout
or the current directory): the checkpoint's provenance verifies against the trust root's provenance keys, its
folder holds nothing the record does not cover (guards.checkpoint_files), and what is staged — the weights, their
config and, when the record signs one, the tokenizer (which `--tokenizer` may then only repeat) — is verified again
as copied, so the bytes published are the bytes verified. A `hub build --checkpoint` that is refused is audited
(gate `publish`, action `build`); `hub publish` audits its own decisions.

The staged-file checks (PUB001-PUB005) look at the files themselves, which the tree-wide gates never see:
PUB001 a file outside the allowed set, PUB002 an environment file, PUB003 a secret (tokens, keys), PUB004 a weights
file without verifying provenance, PUB005 the card's metadata or the cross-file numbers.
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

from guards.attestation import file_digest
from guards.trust import TrustRoot
from oracle.tokenization.tokenizer import TOKENIZER_ASSETS, TOKENIZER_FILES

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

# What must never be published (PUB003): tokens and keys by their documented shapes.
_SECRETS = (
    ("a Hugging Face token", re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b")),
    ("an AWS access key id", re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("a GitHub token", re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("an OpenAI-style API key", re.compile(rb"\bsk-[A-Za-z0-9_-]{32,}\b")),
    ("a Slack token", re.compile(rb"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),
)


class StageError(RuntimeError):
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
    staged.files = {p.name: file_digest(p) for p in sorted(staged.directory.iterdir()) if p.is_file()}
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
    # the checkpoint first: when its record signs a tokenizer, that tokenizer is the one published
    signed = _stage_weights(root, checkpoint, staging, config_name) if checkpoint is not None else []
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
            differing = [n for n in TOKENIZER_FILES if file_digest(tokenizer / n) != file_digest(staging / n)]
            if differing:
                raise StageError(
                    f"--tokenizer {tokenizer}: {', '.join(differing)} differ from the tokenizer the checkpoint's "
                    "signed provenance covers; drop --tokenizer (the checkpoint's own is published)"
                )
        has_tokenizer = True
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
    strangers = [p.name for p in out.iterdir() if p.name not in ALLOWED_FILES or not p.is_file()]
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
    fresh build from HEAD writes (weights: their signed provenance and config, as in a build). Returns the copy."""
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
        if not staged_attestation.is_file() or file_digest(staged_attestation) != attestation.digest:
            raise StageError(
                f"--staged {directory}: its {ATTESTATION} is not HEAD's attestation "
                f"(sha256:{attestation.digest[:16]}); stage again with `oracle hub build`"
            )
        config_name = staged_config_name(private)
        problems = check_staged(root, private, config_name, secret_values=secret_values)
        if problems:
            raise StageError(f"the staged files fail the publish gate: {problems[0]}")
        part = _signed_part(root, private) if (private / WEIGHTS).is_file() else None
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
            expected = {p.name: file_digest(p) for p in fresh.directory.iterdir() if p.is_file()}
        finally:
            shutil.rmtree(fresh.directory, ignore_errors=True)
        actual = {p.name: file_digest(p) for p in sorted(private.iterdir()) if p.is_file()}
        differing = sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
        if differing:
            raise StageError(
                f"--staged {directory}: {', '.join(differing[:3])} differ from what HEAD builds; publish what "
                "`oracle hub build` staged, unedited"
            )
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return Staged(private, _head(root), attestation.digest, WEIGHTS in actual, TOKENIZER_FILES[0] in actual, actual)


def _signed_part(root: Path, staged: Path) -> Path:
    """The checkpoint inside a staged folder: its record and the files the record lists, in a folder of their own
    (beside them a staging holds the card and prompts, which no checkpoint contributes)."""
    from guards.checkpoint_files import CONTRIBUTED
    from guards.provenance import ProvenanceError, verify_provenance

    try:
        files = verify_provenance(staged, root, only=[], trust=_publishing_trust(root, "--staged"))["files"]
    except ProvenanceError as exc:
        raise StageError(f"--staged: {exc}; stage again with `oracle hub build --checkpoint`") from exc
    part = Path(tempfile.mkdtemp(prefix=f"{staged.name}-checkpoint-", dir=staged.parent))
    for name in (PROVENANCE, *(n for n in CONTRIBUTED if n in files and (staged / n).is_file())):
        shutil.copyfile(staged / name, part / name)
    return part


def _private_parent(root: Path) -> Path:
    parent = root / DEFAULT_OUT.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def staged_config_name(directory: Path) -> str | None:
    """The preset a staged config.json describes (its `name`), when it is one of ours."""
    from oracle.moe850b.config import available_presets

    try:
        name = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name in available_presets() else None


def _head(root: Path) -> str:
    from guards import git

    return git.head_commit(root)


def _stage_weights(root: Path, checkpoint: Path, staging: Path, config_name: str) -> list[str]:
    """Stage the checkpoint's signed files (the weights, their config, the tokenizer when signed, the record) only
    when a trust root is configured, its provenance verifies against it, the folder holds nothing the record does
    not cover, and its config is the architecture the card describes. The copies are verified again: what is
    published is what was verified. Returns the names taken from the checkpoint."""
    from guards.checkpoint_files import uncovered_files, uncovered_message
    from guards.provenance import ProvenanceError, verify_provenance
    from oracle.moe850b.config import ConfigError, load_config

    trust = _publishing_trust(root, f"--checkpoint {checkpoint}")
    try:
        files: dict[str, Any] = verify_provenance(checkpoint, root, trust=trust)["files"]
    except ProvenanceError as exc:
        raise StageError(
            f"--checkpoint {checkpoint}: {exc}; only weights with verifying provenance are published"
        ) from exc
    unlisted = [name for name in (WEIGHTS, CONFIG) if name not in files]
    if unlisted:
        raise StageError(f"--checkpoint {checkpoint}: its provenance lists no {', '.join(unlisted)}")
    uncovered = uncovered_files(checkpoint, files)
    if uncovered:
        raise StageError(uncovered_message(checkpoint, uncovered))
    signed_tokenizer = [name for name in TOKENIZER_FILES if name in files]
    if signed_tokenizer and len(signed_tokenizer) != len(TOKENIZER_FILES):
        raise StageError(
            f"--checkpoint {checkpoint}: its provenance signs only {', '.join(signed_tokenizer)} of the tokenizer "
            f"({', '.join(TOKENIZER_FILES)}); publish a checkpoint `oracle train` wrote"
        )
    taken = [WEIGHTS, CONFIG, *signed_tokenizer]
    for name in (PROVENANCE, *taken):
        shutil.copyfile(checkpoint / name, staging / name)
    try:
        verify_provenance(staging, root, only=taken, trust=trust)
    except ProvenanceError as exc:
        raise StageError(f"--checkpoint {checkpoint} changed while it was staged ({exc}); stage it again") from exc
    try:
        same = load_config(staging / CONFIG) == load_config(config_name)
    except ConfigError as exc:
        raise StageError(f"--checkpoint {checkpoint}: {exc}") from exc
    if not same:
        raise StageError(
            f"--checkpoint {checkpoint}: its config.json is not the {config_name} architecture the card describes; "
            "pass the matching --config"
        )
    (staging / WEIGHTS_INDEX).write_bytes(_json_bytes(_weights_index(staging / WEIGHTS)))
    return taken


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


def _weights_index(path: Path) -> dict[str, Any]:
    """The sharded-checkpoint index loaders read (`weight_map`), for a single file."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    names = sorted(key for key in header if key != "__metadata__")
    return {"metadata": {"total_size": path.stat().st_size}, "weight_map": dict.fromkeys(names, WEIGHTS)}


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
        if name not in ALLOWED_FILES:
            allowed = ", ".join(sorted(ALLOWED_FILES))
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
        if name == WEIGHTS and kind is None:
            kind = "weights"  # by its name: whatever its bytes look like, it is published as weights
        if kind is not None and not _provenance_covers(root, directory, name):
            problems.append(
                f"PUB004 {name} is a {kind} weights file without verifying provenance; publish only "
                "checkpoints from `oracle train` with a signed provenance.json"
            )
        elif name != WEIGHTS:
            problem = _malformed(name, data)
            if problem:
                problems.append(f"PUB005 {name}: {problem}")
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
    else:
        problems.append(f"PUB005 {CARD} (the model card) is missing; run `oracle hub build`")
    if not any(problem.startswith("PUB005") for problem in problems):  # the numbers of files that parse
        problems.extend(f"PUB005 {problem}" for problem in cross_file_problems(root, directory, config_name))
    return problems


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


def _provenance_covers(root: Path, directory: Path, name: str) -> bool:
    """Whether a staged weights file is covered by the staged record under a configured trust root (the
    development default vouches for nothing published)."""
    from guards.provenance import ProvenanceError, verify_provenance
    from guards.trust import TrustError, load_trust_root

    if not (directory / PROVENANCE).is_file():
        return False
    try:
        trust = load_trust_root(root)
        if trust.development:
            return False
        verify_provenance(directory, root, only=[name], trust=trust)  # only: the card and prompts are not the run's
    except (TrustError, ProvenanceError):
        return False
    return True


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
