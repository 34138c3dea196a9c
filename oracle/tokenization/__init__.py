"""Tokenizer training, loading and chat template. Filled by the data and tokenizer issue (#4)."""
