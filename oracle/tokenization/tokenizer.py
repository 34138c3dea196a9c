"""Training, saving and loading the Oracle tokenizer: byte-level BPE with NFC normalisation (lossless otherwise:
no lowercasing, no accent stripping), so English, Russian, code and emoji round-trip byte for byte.

A saved tokenizer is a folder with `tokenizer.json` (the `tokenizers` format), `tokenizer_config.json` (class,
special tokens, chat template, context length) and `special_tokens_map.json`: `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast` both load it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from oracle.tokenization.chat_template import CHAT_TEMPLATE
from oracle.tokenization.corpus import Corpus, input_files
from oracle.tokenization.special_tokens import ASSISTANT, END_OF_TEXT, PAD, SPECIAL_TOKENS, is_reserved, reserved_token
from oracle_base.errors import ConfigurationError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens
TOKENIZER_FILES = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
TOKENIZER_ASSETS = Path("oracle") / "tokenization" / "assets"  # where a committed tokenizer lives (repo-relative)


class TokenizerError(ConfigurationError, ValueError):
    """A tokenizer that cannot be trained, saved or loaded as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TrainingReport:
    documents: int
    bytes: int
    seconds: float
    learned_tokens: int  # tokens BPE learned (bytes, merges, specials) before reserved padding
    vocab_size: int
    corrupt: list[str]  # records that could not be read (counted and listed, as everywhere)


def _empty_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def train_tokenizer(inputs: list[Path], vocab_size: int, *, min_frequency: int = 2) -> tuple[Tokenizer, TrainingReport]:
    """Train on every document behind `inputs`; the vocabulary is padded with reserved tokens to exactly
    `vocab_size`."""
    if vocab_size < MIN_VOCAB:
        raise TokenizerError(
            f"--vocab-size {vocab_size} is below {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} specials)"
        )
    corpus = Corpus(input_files(inputs))
    counted = {"documents": 0, "bytes": 0}

    def documents() -> object:
        for text in corpus.texts():
            counted["documents"] += 1
            counted["bytes"] += len(text.encode("utf-8"))
            yield text

    tokenizer = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tokenizer.train_from_iterator(documents(), trainer=trainer)
    seconds = time.perf_counter() - start
    learned = tokenizer.get_vocab_size()
    if learned > vocab_size:
        raise TokenizerError(f"training produced {learned} tokens, more than --vocab-size {vocab_size}")
    tokenizer.add_special_tokens([reserved_token(i) for i in range(vocab_size - learned)])
    if tokenizer.get_vocab_size() != vocab_size:
        raise TokenizerError(f"the vocabulary has {tokenizer.get_vocab_size()} tokens, expected {vocab_size}")
    report = TrainingReport(counted["documents"], counted["bytes"], seconds, learned, vocab_size, corpus.corrupt)
    return tokenizer, report


def _config(tokenizer: Tokenizer, context_length: int) -> dict[str, object]:
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in tokenizer.get_vocab(with_added_tokens=True)
        if token in SPECIAL_TOKENS or is_reserved(token)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_type": "oracle_moe",
        "vocab_size": tokenizer.get_vocab_size(),
        "model_max_length": context_length,
        "bos_token": None,
        "eos_token": END_OF_TEXT,
        "pad_token": PAD,
        "unk_token": None,
        "additional_special_tokens": [token for token in SPECIAL_TOKENS if token not in {END_OF_TEXT, PAD}],
        "added_tokens_decoder": dict(sorted(added.items(), key=lambda item: int(item[0]))),
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
        "generation_prompt": ASSISTANT,
    }


def save_tokenizer(tokenizer: Tokenizer, directory: Path, *, context_length: int) -> Path:
    """Write the three files into `directory` (created), each atomically: nothing half-written on failure."""
    directory.mkdir(parents=True, exist_ok=True)
    special_map = {
        "eos_token": END_OF_TEXT,
        "pad_token": PAD,
        "additional_special_tokens": [token for token in SPECIAL_TOKENS if token not in {END_OF_TEXT, PAD}],
    }
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".tokenizer-"))
    try:
        tokenizer.save(str(staging / TOKENIZER_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps(_config(tokenizer, context_length), indent=2) + "\n")
        (staging / SPECIAL_TOKENS_MAP_FILE).write_text(json.dumps(special_map, indent=2) + "\n")
        for name in (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_tokenizer(directory: Path, *, expected_vocab_size: int | None = None, data: bytes | None = None) -> Tokenizer:
    """The tokenizer saved in `directory`; `data`: its tokenizer.json bytes, already read (and checked) by the caller,
    so that what is loaded is exactly what was checked."""
    path = directory / TOKENIZER_FILE
    try:
        tokenizer = Tokenizer.from_file(str(path)) if data is None else Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # the Rust side raises a plain Exception for unreadable files
        raise TokenizerError(
            f"{path}: not a readable tokenizer ({exc}); train one with `oracle tokenizer train`"
        ) from exc
    if expected_vocab_size is not None and tokenizer.get_vocab_size() != expected_vocab_size:
        raise TokenizerError(
            f"{path}: vocabulary of {tokenizer.get_vocab_size()} tokens, "
            f"the model config declares {expected_vocab_size}"
        )
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise TokenizerError(f"{path}: special tokens missing: {', '.join(missing)}; retrain with this version")
    return tokenizer
