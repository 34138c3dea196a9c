"""The base every layer may use: atomic writes, bounded reads, validation messages, weight-file names (and, as they
move here, records and signing). It imports nothing of this project."""
