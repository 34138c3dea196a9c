"""What a server loads: the checkpoint (after its provenance verifies), the tokenizer, the default system prompt and
the generation defaults, put together into a running `Engine`.

`--checkpoint` is a checkpoint folder (`runs/<run>/step-NNNNNNNN`, or any folder with model.safetensors, config.json
and provenance.json) or a run folder, whose newest complete checkpoint is taken (oracle.train.checkpoint).

Trust: the provenance verifies against the trust root only (guards.runtime.require_serving_allowed), never against
keys in the current directory, and every file taken from the checkpoint is one its signed record covers, read once
from the bytes checked against the signed sha256 (guards.checkpoint_files); a file in the folder the record does not
cover refuses the checkpoint. The tokenizer is the checkpoint's own signed one (`--tokenizer`, if given, must be the
same file). The default system prompt and the generation defaults are the checkpoint's when its record signs them,
else those shipped with the running code (hub/assets beside the `oracle` package, the files the model card
publishes): never the current directory's, which whoever starts the server controls.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from guards.checkpoint_files import (
    CONFIG,
    GENERATION_CONFIG,
    SYSTEM_PROMPT,
    TOKENIZER,
    UncoveredFileError,
    read_verified,
    signed_contributions,
)
from oracle.moe850b.config import ConfigError, parse_config
from oracle.moe850b.weights import CheckpointError, load_checkpoint
from oracle.serve.engine import Engine
from oracle.tokenization.special_tokens import (
    END_OF_TEXT,
    END_OF_TURN,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    is_reserved,
    never_generated,
)
from oracle.tokenization.tokenizer import TokenizerError, load_tokenizer
from oracle_base.errors import ConfigurationError

log = logging.getLogger("oracle.serve")

# The running code's own assets (hub.stage.ASSETS: the hub package installed beside this one), anchored to this
# file rather than to the import path or the current directory.
CODE_ASSETS = Path(__file__).resolve().parents[2] / "hub" / "assets"


class ServeLoadError(ConfigurationError):
    """The checkpoint, tokenizer or settings cannot be served; the message names the file and the fix."""


@dataclass(frozen=True)
class ServeOptions:
    checkpoint: Path
    root: Path  # where the audit log is kept (the current directory); never a source of keys, prompts or settings
    tokenizer: Path | None = None
    name: str | None = None  # the model id clients ask for; default: the config's name
    max_batch: int = 16
    max_queue: int = 64
    device: str = "cpu"


@dataclass
class ServedModel:
    name: str
    checkpoint: Path
    engine: Engine
    tokenizer: Tokenizer
    vocab_size: int
    max_length: int  # prompt + completion tokens a request may use
    default_system: str | None
    temperature: float  # used when a request does not say
    top_p: float
    special_ids: frozenset[int]  # special and reserved token ids

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def special_in(self, text: str) -> str | None:
        """The first special token `text` would be read as (chat content may not contain control tokens)."""
        for token_id in self.encode(text):
            if token_id in self.special_ids:
                return str(self.tokenizer.id_to_token(token_id))
        return None


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder as given, or the newest sealed checkpoint of a run folder: one under its final name with
    its manifest (written last, read by its schema), so the save finished. Its files are not hashed here, the
    optimizer state least of all: what the server reads is checked against the signed provenance, once before
    listening and again on the bytes loaded."""
    from guards.provenance import PROVENANCE_FILE
    from oracle.train.checkpoint import MANIFEST, checkpoint_dirs
    from oracle_base.records import RecordError
    from oracle_base.records.training import CheckpointManifest

    if not path.is_dir():
        raise ServeLoadError(f"--checkpoint {path}: no such folder")
    steps = checkpoint_dirs(path)
    if (path / PROVENANCE_FILE).is_file() or not steps:
        return path
    for directory in steps:
        if not (directory / MANIFEST).is_file():
            log.warning("skipping %s: no %s, the save did not finish", directory, MANIFEST)
            continue
        try:
            CheckpointManifest.read(directory / MANIFEST)
        except RecordError as exc:
            log.warning("skipping %s: %s", directory, exc)
            continue
        return directory
    raise ServeLoadError(f"--checkpoint {path}: the run folder has no finished checkpoint (no step-*/{MANIFEST})")


def _setting(servable: Servable, name: str) -> tuple[Path, str] | None:
    """A prompt or settings file and its text: the checkpoint's when its record signs it (the verified bytes), else
    the running code's own; None when neither has it."""
    if name in servable.sha256:
        path = servable.checkpoint / name
        data = _verified(path, servable.sha256[name])
    else:
        path = CODE_ASSETS / name
        if not path.is_file():
            return None
        data = path.read_bytes()
    try:
        return path, data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServeLoadError(f"{path}: not UTF-8 text (byte {exc.start}); write it as UTF-8") from exc


def _verified(path: Path, sha256: str) -> bytes:
    try:
        return read_verified(path, sha256)
    except UncoveredFileError as exc:
        raise ServeLoadError(str(exc)) from exc


def _generation_defaults(setting: tuple[Path, str] | None) -> tuple[float, float, list[int]]:
    if setting is None:
        return 1.0, 1.0, []
    path, text = setting
    try:
        data = json.loads(text)
        eos = data.get("eos_token_id", [])
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        temperature, top_p = float(data.get("temperature", 1.0)), float(data.get("top_p", 1.0))
        eos_ids = [int(i) for i in eos_ids]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ServeLoadError(f"{path}: not a readable generation config ({exc}); fix or remove it") from exc
    if not 0.0 <= temperature <= 2.0 or not 0.0 < top_p <= 1.0:
        raise ServeLoadError(
            f"{path}: temperature {temperature} must be in [0, 2] and top_p {top_p} in (0, 1]; fix the file"
        )
    return temperature, top_p, eos_ids


@dataclass(frozen=True)
class Servable:
    checkpoint: Path
    sha256: dict[str, str]  # the signed digests of the checkpoint's files the server uses: checked on the bytes used


def check_servable(options: ServeOptions) -> Servable:
    """Everything that can be refused before the weights are read: the trust root and the provenance, every file of
    the folder covered (guards.runtime, audited), the config, the tokenizer and the settings it carries."""
    from guards.runtime import require_serving_allowed

    checkpoint = resolve_checkpoint(options.checkpoint)
    record = require_serving_allowed(checkpoint, options.root, tokenizer=options.tokenizer)
    files = record["files"]
    if not isinstance(files, dict):  # verify_provenance has checked it; kept for the type
        raise ServeLoadError(f"{checkpoint}: the provenance record's `files` is not a mapping")
    servable = Servable(checkpoint, signed_contributions(files))
    config_path = checkpoint / CONFIG
    try:
        config = parse_config(_verified(config_path, servable.sha256[CONFIG]).decode("utf-8"), config_path)
    except (ConfigError, UnicodeDecodeError) as exc:
        raise ServeLoadError(f"{config_path}: not a readable model config ({exc})") from exc
    _tokenizer(servable, config.vocab_size)
    _generation_defaults(_setting(servable, GENERATION_CONFIG))
    _setting(servable, SYSTEM_PROMPT)
    return servable


def _tokenizer(servable: Servable, vocab_size: int) -> Tokenizer:
    path = servable.checkpoint / TOKENIZER
    try:
        return load_tokenizer(
            servable.checkpoint, expected_vocab_size=vocab_size, data=_verified(path, servable.sha256[TOKENIZER])
        )
    except (TokenizerError, UnicodeDecodeError) as exc:
        raise ServeLoadError(f"{path}: {exc}") from exc


def load_served_model(options: ServeOptions, servable: Servable) -> ServedModel:
    """Load what `check_servable` accepted (the very bytes whose digests the signed record lists) and start its
    engine."""
    checkpoint = servable.checkpoint
    try:
        model = load_checkpoint(checkpoint, device=options.device, expected_sha256=servable.sha256)
    except CheckpointError as exc:
        raise ServeLoadError(str(exc)) from exc
    tokenizer = _tokenizer(servable, model.config.vocab_size)
    temperature, top_p, eos_ids = _generation_defaults(_setting(servable, GENERATION_CONFIG))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    # the end of the text or of the turn, or the start of another turn (the model may not speak for the user)
    stop_ids = sorted({vocab[token] for token in (END_OF_TEXT, END_OF_TURN, *ROLE_TOKENS.values())} | set(eos_ids))
    suppress = [i for token, i in vocab.items() if never_generated(token)]
    system = _setting(servable, SYSTEM_PROMPT)
    default_system = system[1].strip() if system else None
    engine = Engine(
        model,
        lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
        stop_token_ids=stop_ids,
        suppress_token_ids=suppress,
        max_batch=options.max_batch,
        max_queue=options.max_queue,
    )
    served = ServedModel(
        name=options.name or model.config.name,
        checkpoint=checkpoint,
        engine=engine,
        tokenizer=tokenizer,
        vocab_size=model.config.vocab_size,
        max_length=engine.max_length,
        default_system=default_system,
        temperature=temperature,
        top_p=top_p,
        special_ids=frozenset(i for token, i in vocab.items() if token in SPECIAL_TOKENS or is_reserved(token)),
    )
    served.engine.start()
    log.info("loaded %s (%s, %d parameters) on %s", served.name, checkpoint, _n_params(model), options.device)
    return served


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
