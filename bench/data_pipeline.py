"""Benchmark: `oracle data run` end to end against a plain datasketch MinHashLSH pass over the same corpus.

A seeded corpus of 20,000 documents of about 2 KB (English and Russian word salad from common words, so language
ID works and unrelated documents share no 5-gram) with planted near-duplicates (about 2 % of words changed:
Jaccard of 5-gram shingles >= 0.85), exact duplicates, PII and contamination. Prints:
- docs/s of the whole pipeline (ingest, clean, PII, language ID, dedup, decontamination, shards, stats) and of the
  dedup pass alone (MinHash with 128 permutations, shingles fed one by one as datasketch's examples do, LSH at
  threshold 0.85), measured in the same run, and their ratio (target >= 1.0);
- dedup precision and recall on the planted pairs (targets: recall >= 0.95 at Jaccard >= 0.85, precision >= 0.99),
  measured with the pipeline's own Deduplicator on the same documents.

Usage: python bench/data_pipeline.py [--docs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from oracle.data.dedup import Deduplicator
from oracle.data.pipeline import PipelineConfig, run_pipeline

EN = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "this",
    "which",
    "or",
    "had",
    "not",
    "are",
    "but",
    "have",
    "they",
    "one",
    "you",
    "were",
    "all",
    "their",
    "there",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "states",
    "himself",
    "few",
    "house",
    "use",
    "during",
    "without",
    "again",
    "place",
    "american",
    "around",
    "however",
    "home",
    "small",
    "found",
    "thought",
    "went",
    "say",
    "part",
    "once",
    "general",
    "high",
    "upon",
    "school",
    "every",
    "does",
    "got",
    "united",
    "left",
    "number",
    "course",
    "war",
    "until",
    "always",
    "away",
    "something",
    "fact",
    "though",
    "water",
    "less",
    "public",
    "put",
    "think",
    "almost",
    "hand",
    "enough",
    "far",
    "took",
    "head",
    "yet",
    "government",
    "system",
    "better",
    "set",
    "told",
    "nothing",
    "night",
    "end",
    "why",
    "called",
    "didn",
    "find",
    "going",
    "look",
    "asked",
    "later",
    "knew",
    "point",
]
RU = [
    "и",
    "в",
    "не",
    "на",
    "я",
    "быть",
    "он",
    "с",
    "что",
    "а",
    "по",
    "это",
    "она",
    "этот",
    "к",
    "но",
    "они",
    "мы",
    "как",
    "из",
    "у",
    "который",
    "то",
    "за",
    "свой",
    "что",
    "весь",
    "год",
    "от",
    "так",
    "о",
    "для",
    "ты",
    "же",
    "все",
    "тот",
    "мочь",
    "вы",
    "человек",
    "такой",
    "его",
    "сказать",
    "только",
    "или",
    "ещё",
    "бы",
    "себя",
    "один",
    "как",
    "уже",
    "до",
    "время",
    "если",
    "сам",
    "когда",
    "другой",
    "вот",
    "говорить",
    "наш",
    "мой",
    "знать",
    "стать",
    "при",
    "чтобы",
    "дело",
    "жизнь",
    "кто",
    "первый",
    "очень",
    "два",
    "день",
    "её",
    "новый",
    "рука",
    "даже",
    "во",
    "со",
    "раз",
    "где",
    "там",
    "под",
    "можно",
    "ну",
    "какой",
    "после",
    "их",
    "работа",
    "без",
    "самый",
    "потом",
    "надо",
    "хотеть",
    "ли",
    "слово",
    "идти",
    "большой",
    "должен",
]
EVAL_ITEMS = [
    f"question number {i} asks which of the following statements about the history of the united states is true"
    for i in range(50)
]


def make_corpus(directory: Path, n_docs: int, seed: int = 0) -> dict[str, object]:
    rng = random.Random(seed)
    docs: list[str] = []
    near_pairs: list[tuple[int, int]] = []
    while len(docs) < n_docs:
        words = EN if rng.random() < 0.7 else RU
        text = " ".join(rng.choice(words) for _ in range(rng.randint(300, 380)))
        docs.append(text)
        roll = rng.random()
        if roll < 0.05 and len(docs) < n_docs:  # a near duplicate: ~1 % of the words changed
            copy = text.split()
            for position in rng.sample(range(len(copy)), max(1, len(copy) // 100)):
                copy[position] = rng.choice(words)
            near_pairs.append((len(docs) - 1, len(docs)))
            docs.append(" ".join(copy))
        elif roll < 0.06 and len(docs) < n_docs:  # an exact duplicate (reformatted)
            docs.append(text.upper().replace(" ", "  "))
        elif roll < 0.08:  # PII
            docs[-1] += f" write to user{len(docs)}@example.org or call +1 415 555 {1000 + len(docs) % 9000}"
        elif roll < 0.085:  # contamination
            docs[-1] += " " + rng.choice(EVAL_ITEMS)
    inputs = directory / "in"
    inputs.mkdir()
    for part in range(4):
        chunk = docs[part::4]
        (inputs / f"part-{part}.jsonl").write_text(
            "\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in chunk)
        )
    evals = directory / "evals"
    evals.mkdir()
    (evals / "history.jsonl").write_text("\n".join(json.dumps({"question": q}) for q in EVAL_ITEMS))
    return {"docs": docs, "near_pairs": near_pairs, "inputs": str(inputs), "evals": evals}


def jaccard(a: str, b: str) -> float:
    def shingles(text: str) -> set[str]:
        words = text.lower().split()
        return {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}

    first, second = shingles(a), shingles(b)
    return len(first & second) / len(first | second)


def plain_minhash_pass(docs: list[str]) -> float:
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=0.85, num_perm=128)
    for index, text in enumerate(docs):
        words = text.lower().split()
        minhash = MinHash(num_perm=128)
        for i in range(len(words) - 4):
            minhash.update(" ".join(words[i : i + 5]).encode())
        if not lsh.query(minhash):
            lsh.insert(str(index), minhash)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        corpus = make_corpus(directory, args.docs)
        docs = corpus["docs"]
        assert isinstance(docs, list)
        baseline_s = plain_minhash_pass(docs)
        start = time.perf_counter()
        stats = run_pipeline(
            PipelineConfig([str(corpus["inputs"]) + "/*.jsonl"], directory / "out", eval_sets=corpus["evals"])  # type: ignore[arg-type]
        )
        pipeline_s = time.perf_counter() - start

        dedup = Deduplicator()
        dropped = {index for index, text in enumerate(docs) if dedup.check(str(index), text) == "near_duplicate"}
        pairs = corpus["near_pairs"]
        assert isinstance(pairs, list)
        # Recall counts the planted pairs whose true Jaccard (of the same 5-gram shingles) is >= 0.85.
        planted = {second for first, second in pairs if jaccard(docs[first], docs[second]) >= 0.85}
        recall = len(planted & dropped) / len(planted)
        all_planted = {second for _, second in pairs}
        precision = len(all_planted & dropped) / len(dropped) if dropped else 1.0
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    result = {
        "docs": len(docs),
        "megabytes": round(megabytes, 1),
        "pipeline_docs_per_s": len(docs) / pipeline_s,
        "minhash_pass_docs_per_s": len(docs) / baseline_s,
        "ratio_pipeline_over_minhash_pass": baseline_s / pipeline_s,
        "near_dup_recall": recall,
        "near_dup_precision": precision,
        "planted_near_pairs": len(planted),
        "kept": stats.kept_docs,
        "dropped": dict(stats.dropped),
    }
    print(
        f"data_pipeline {len(docs)} docs ({megabytes:.1f} MB): pipeline {result['pipeline_docs_per_s']:.0f} docs/s, "
        f"datasketch MinHashLSH pass {result['minhash_pass_docs_per_s']:.0f} docs/s, "
        f"ratio {result['ratio_pipeline_over_minhash_pass']:.2f}x (target >= 1.0)"
    )
    print(
        f"data_pipeline near-duplicates: recall {recall:.3f} (target >= 0.95), precision {precision:.3f} "
        f"(target >= 0.99) on {len(planted)} planted pairs; dropped {dict(stats.dropped)}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
