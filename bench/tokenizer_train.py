"""Benchmark: tokenizer training throughput (MB/s) of `oracle tokenizer train`'s code path against the `tokenizers`
library's own ByteLevelBPETokenizer trained on the same documents in the same run (the ratio shows our overhead:
reading inputs, NFC, special and reserved tokens).

The corpus is generated (seeded): English, Russian and Python-like documents of about 2 KB, written as JSONL.

Usage: python bench/tokenizer_train.py [--megabytes N] [--vocab-size N] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer

from oracle.tokenization.corpus import input_files, iter_documents
from oracle.tokenization.special_tokens import SPECIAL_TOKENS
from oracle.tokenization.tokenizer import train_tokenizer

EN = [
    "the",
    "model",
    "routes",
    "every",
    "token",
    "to",
    "two",
    "of",
    "sixty",
    "four",
    "experts",
    "and",
    "the",
    "router",
    "learns",
    "which",
    "expert",
    "fits",
]
RU = [
    "модель",
    "направляет",
    "каждый",
    "токен",
    "двум",
    "из",
    "шестидесяти",
    "четырёх",
    "экспертов",
    "и",
    "маршрутизатор",
    "учится",
]
CODE = ["def", "return", "self", "x_TD", "torch", "import", "(", ")", ":", "=", "+", "for", "in", "range", "None"]


def write_corpus(directory: Path, megabytes: float, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path = directory / "corpus.jsonl"
    written = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < megabytes * 1e6:
            words = rng.choice([EN, RU, CODE])
            text = " ".join(rng.choice(words) for _ in range(300))[:2000]
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=8.0)
    parser.add_argument("--vocab-size", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        corpus = write_corpus(Path(temp), args.megabytes)
        texts = list(iter_documents(input_files([corpus])))
        size_mb = sum(len(text.encode()) for text in texts) / 1e6
        ours, baseline = [], []
        for _ in range(args.repeats):  # interleaved
            start = time.perf_counter()
            train_tokenizer([corpus], args.vocab_size)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            plain = ByteLevelBPETokenizer()
            plain.train_from_iterator(
                texts, vocab_size=args.vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
            )
            baseline.append(time.perf_counter() - start)
    ours_s, base_s = statistics.median(ours), statistics.median(baseline)
    result = {
        "megabytes": round(size_mb, 2),
        "documents": len(texts),
        "vocab_size": args.vocab_size,
        "ours_mb_per_s": size_mb / ours_s,
        "baseline_mb_per_s": size_mb / base_s,
        "ratio_ours_over_baseline": base_s / ours_s,
    }
    print(
        f"tokenizer_train {size_mb:.1f} MB, {len(texts)} docs, vocab {args.vocab_size}: "
        f"ours {size_mb / ours_s:.2f} MB/s, "
        f"ByteLevelBPETokenizer {size_mb / base_s:.2f} MB/s, ratio {base_s / ours_s:.2f}x (1.0 = no overhead)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
