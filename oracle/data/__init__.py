"""The data pipeline stages. Filled by the data and tokenizer issue (#4)."""
