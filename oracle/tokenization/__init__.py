"""The Oracle tokenizer: byte-level BPE (`tokenizers`), special tokens, chat template, training, loading."""

from oracle.tokenization.special_tokens import SPECIAL_TOKENS
from oracle.tokenization.tokenizer import TokenizerError, load_tokenizer, save_tokenizer, train_tokenizer

__all__ = ["SPECIAL_TOKENS", "TokenizerError", "load_tokenizer", "save_tokenizer", "train_tokenizer"]
