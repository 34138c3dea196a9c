"""What a server loads: the checkpoint (after its provenance verifies), the tokenizer, the default system prompt and
the generation defaults, put together into a running `Engine`.

`--checkpoint` is a checkpoint folder (`runs/<run>/step-NNNNNNNN`, or any folder with model.safetensors, config.json
and provenance.json) or a run folder, whose newest complete checkpoint is taken (oracle.train.checkpoint). The
tokenizer is `--tokenizer`, else the checkpoint's own tokenizer files, else the committed one
(oracle/tokenization/assets). Prompts and generation defaults come from the checkpoint folder (a published repo
holds them) or else from the repository's hub/assets, the same files the model card publishes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from oracle.moe850b.config import ConfigError, load_config
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
from oracle.tokenization.tokenizer import TOKENIZER_ASSETS, TOKENIZER_FILE, TokenizerError, load_tokenizer

log = logging.getLogger("oracle.serve")

SYSTEM_PROMPT_FILE = "default_system.txt"
GENERATION_CONFIG_FILE = "generation_config.json"
HUB_ASSETS = Path("hub") / "assets"


class ServeLoadError(RuntimeError):
    """The checkpoint, tokenizer or settings cannot be served; the message names the file and the fix."""


@dataclass(frozen=True)
class ServeOptions:
    checkpoint: Path
    root: Path  # the checkout whose policies/keys verify the provenance
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
    its manifest (written last), so the save finished. Its files are not hashed here, the optimizer state least of
    all: what the server reads is checked against the signed provenance, once before listening and again on the
    bytes loaded."""
    from guards.provenance import PROVENANCE_FILE
    from oracle.train.checkpoint import MANIFEST, checkpoint_dirs

    if not path.is_dir():
        raise ServeLoadError(f"--checkpoint {path}: no such folder")
    steps = checkpoint_dirs(path)
    if (path / PROVENANCE_FILE).is_file() or not steps:
        return path
    for directory in steps:
        if (directory / MANIFEST).is_file():
            return directory
        log.warning("skipping %s: no %s, the save did not finish", directory, MANIFEST)
    raise ServeLoadError(f"--checkpoint {path}: the run folder has no finished checkpoint (no step-*/{MANIFEST})")


def resolve_tokenizer(options: ServeOptions, checkpoint: Path) -> Path:
    if options.tokenizer is not None:
        return options.tokenizer
    for candidate in (checkpoint, options.root / TOKENIZER_ASSETS):
        if (candidate / TOKENIZER_FILE).is_file():
            return candidate
    raise ServeLoadError(
        f"--checkpoint {checkpoint} holds no {TOKENIZER_FILE} and none is committed under {TOKENIZER_ASSETS}; "
        "pass --tokenizer DIR (a folder written by `oracle tokenizer train`)"
    )


def _asset(checkpoint: Path, root: Path, name: str) -> Path | None:
    for candidate in (checkpoint / name, root / HUB_ASSETS / name):
        if candidate.is_file():
            return candidate
    return None


def _generation_defaults(path: Path | None) -> tuple[float, float, list[int]]:
    if path is None:
        return 1.0, 1.0, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
    tokenizer: Path
    sha256: dict[str, str]  # the signed digests of the files the server loads: checked again on the bytes loaded


def check_servable(options: ServeOptions) -> Servable:
    """Everything that can be refused before the weights are read: the provenance (guards.runtime, audited), the
    config and the tokenizer."""
    from guards.runtime import SERVED_FILES, require_serving_allowed

    checkpoint = resolve_checkpoint(options.checkpoint)
    record = require_serving_allowed(checkpoint, options.root)
    files = record["files"]
    if not isinstance(files, dict):  # verify_provenance has checked it; kept for the type
        raise ServeLoadError(f"{checkpoint}: the provenance record's `files` is not a mapping")
    sha256 = {name: str(files[name]) for name in SERVED_FILES}
    try:
        config = load_config(checkpoint / "config.json")
        tokenizer_dir = resolve_tokenizer(options, checkpoint)
        load_tokenizer(tokenizer_dir, expected_vocab_size=config.vocab_size)
    except (ConfigError, TokenizerError) as exc:
        raise ServeLoadError(str(exc)) from exc
    return Servable(checkpoint, tokenizer_dir, sha256)


def load_served_model(options: ServeOptions, servable: Servable) -> ServedModel:
    """Load what `check_servable` accepted (the very bytes whose digests the signed record lists) and start its
    engine."""
    checkpoint = servable.checkpoint
    try:
        model = load_checkpoint(checkpoint, device=options.device, expected_sha256=servable.sha256)
        tokenizer = load_tokenizer(servable.tokenizer, expected_vocab_size=model.config.vocab_size)
    except (CheckpointError, TokenizerError) as exc:
        raise ServeLoadError(str(exc)) from exc
    temperature, top_p, eos_ids = _generation_defaults(_asset(checkpoint, options.root, GENERATION_CONFIG_FILE))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    # the end of the text or of the turn, or the start of another turn (the model may not speak for the user)
    stop_ids = sorted({vocab[token] for token in (END_OF_TEXT, END_OF_TURN, *ROLE_TOKENS.values())} | set(eos_ids))
    suppress = [i for token, i in vocab.items() if never_generated(token)]
    system_path = _asset(checkpoint, options.root, SYSTEM_PROMPT_FILE)
    default_system = system_path.read_text(encoding="utf-8").strip() if system_path else None
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
