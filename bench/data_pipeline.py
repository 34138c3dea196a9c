"""Benchmark: `oracle data run` end to end against a plain datasketch MinHashLSH pass over the same corpus.

A seeded corpus of 20,000 documents of about 2 KB (English and Russian word salad from common words, so language
ID works and unrelated documents share no 5-gram) with planted near-duplicates (about 2 % of words changed:
Jaccard of 5-gram shingles >= 0.85), exact duplicates, PII and contamination. Prints:
- docs/s of the whole pipeline (ingest, clean, PII, language ID, dedup, decontamination, shards, stats) and of the
  dedup pass alone (MinHash with 128 permutations, shingles fed one by one as datasketch's examples do, LSH at
  threshold 0.85), measured in the same run, and their ratio (target >= 1.0);
- the same run split into two tasks (init, prepare x2 at once, cluster, write x2 at once, finish) against the
  one-process run, and whether both wrote the same stats.json (the run fails if not);
- near-duplicate recall and precision measured on the pipeline's clusters (targets: recall >= 0.95 at Jaccard >=
  0.85, precision >= 0.99), with planted pairs, exact copies and triples whose original comes after its copies.

Usage: python bench/data_pipeline.py [--docs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from oracle.data import dedup, pipeline
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


def _edited(text: str, rng: random.Random, words: list[str], avoid: set[int] | None = None) -> tuple[str, set[int]]:
    """A copy with about 1 % of the words changed (positions outside `avoid`), and the positions changed."""
    copy = text.split()
    free = [i for i in range(len(copy)) if not avoid or i not in avoid]
    positions = set(rng.sample(free, max(1, len(copy) // 100)))
    for position in positions:
        copy[position] = rng.choice(words)
    return " ".join(copy), positions


def make_corpus(directory: Path, n_docs: int, seed: int = 0) -> dict[str, object]:
    rng = random.Random(seed)
    docs: list[str] = []
    groups: list[list[int]] = []  # planted duplicates: a near pair, a triple, an exact pair
    while len(docs) < n_docs:
        words = EN if rng.random() < 0.7 else RU
        text = " ".join(rng.choice(words) for _ in range(rng.randint(300, 380)))
        roll = rng.random()
        if roll < 0.02 and len(docs) + 3 <= n_docs:
            # a triple whose original comes after its two copies (the case a streaming dedup gets wrong)
            first, changed = _edited(text, rng, words)
            second, _ = _edited(text, rng, words, avoid=changed)
            groups.append([len(docs), len(docs) + 1, len(docs) + 2])
            docs += [first, second, text]
            continue
        docs.append(text)
        if roll < 0.05 and len(docs) < n_docs:  # a near duplicate: ~1 % of the words changed
            groups.append([len(docs) - 1, len(docs)])
            docs.append(_edited(text, rng, words)[0])
        elif roll < 0.06 and len(docs) < n_docs:  # an exact duplicate (reformatted)
            groups.append([len(docs) - 1, len(docs)])
            docs.append(text.upper().replace(" ", "  "))
        elif roll < 0.08:  # PII
            docs[-1] += f" write to user{len(docs)}@example.org or call +1 415 555 {1000 + len(docs) % 9000}"
        elif roll < 0.085:  # contamination
            docs[-1] += " " + rng.choice(EVAL_ITEMS)
    inputs = directory / "in"
    inputs.mkdir()
    for part in range(8):
        chunk = docs[part::8]
        (inputs / f"part-{part}.jsonl").write_text(
            "\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in chunk)
        )
    evals = directory / "evals"
    evals.mkdir()
    (evals / "history.jsonl").write_text("\n".join(json.dumps({"question": q}) for q in EVAL_ITEMS))
    return {"docs": docs, "groups": groups, "inputs": str(inputs), "evals": evals}


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


def cluster_quality(docs: list[str], groups: list[list[int]]) -> dict[str, float]:
    """Recall and precision of the pipeline's clusters (oracle/data/dedup.py) on the planted duplicates.

    Recall: the planted pairs whose true Jaccard of 5-gram shingles is >= 0.85 that end in one cluster. Precision:
    of the documents dropped as duplicates, the share whose cluster survivor is planted in the same group."""
    outcome = dedup.cluster(
        [str(i) for i in range(len(docs))],
        [dedup.exact_key(t) for t in docs],
        [len(t) for t in docs],
        np.stack([dedup.signature(t) for t in docs]),
    )
    group_of = {doc: number for number, group in enumerate(groups) for doc in group}
    pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]]
    strong = [(a, b) for a, b in pairs if jaccard(docs[a], docs[b]) >= 0.85]
    found = sum(outcome.survivors[a] == outcome.survivors[b] for a, b in strong)
    dropped = [row for row, reason in enumerate(outcome.reasons) if reason is not None]
    right = sum(row in group_of and group_of.get(outcome.survivors[row]) == group_of[row] for row in dropped)
    return {
        "recall": found / len(strong),
        "precision": right / len(dropped) if dropped else 1.0,
        "planted_pairs": len(strong),
        "clusters": outcome.count,
    }


def split_run(inputs: str, evals: Path, work: Path, output: Path) -> float:
    """The same run as two tasks, each per-task stage on its own process at once, as a two-task array would."""
    config = PipelineConfig([inputs + "/*.jsonl"], output, eval_sets=evals)
    start = time.perf_counter()
    pipeline.init(work, config, tasks=2)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(pipeline.prepare, [work, work], [0, 1]))
        pipeline.cluster(work)
        list(pool.map(pipeline.write, [work, work], [0, 1]))
    pipeline.finish(work, output)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        corpus = make_corpus(directory, args.docs)
        docs, groups = corpus["docs"], corpus["groups"]
        assert isinstance(docs, list)
        assert isinstance(groups, list)
        baseline_s = plain_minhash_pass(docs)
        start = time.perf_counter()
        stats = run_pipeline(
            PipelineConfig([str(corpus["inputs"]) + "/*.jsonl"], directory / "out", eval_sets=corpus["evals"])  # type: ignore[arg-type]
        )
        pipeline_s = time.perf_counter() - start
        split_s = split_run(str(corpus["inputs"]), corpus["evals"], directory / "work", directory / "split")  # type: ignore[arg-type]
        identical = (directory / "out" / "stats.json").read_bytes() == (directory / "split" / "stats.json").read_bytes()
        quality = cluster_quality(docs, groups)
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    result = {
        "docs": len(docs),
        "megabytes": round(megabytes, 1),
        "pipeline_docs_per_s": len(docs) / pipeline_s,
        "minhash_pass_docs_per_s": len(docs) / baseline_s,
        "ratio_pipeline_over_minhash_pass": baseline_s / pipeline_s,
        "two_task_docs_per_s": len(docs) / split_s,
        "ratio_two_tasks_over_one_process": pipeline_s / split_s,
        "two_task_stats_identical": identical,
        "near_dup_recall": quality["recall"],
        "near_dup_precision": quality["precision"],
        "planted_near_pairs": quality["planted_pairs"],
        "clusters": quality["clusters"],
        "kept": stats.kept_docs,
        "dropped": dict(stats.dropped),
        "cluster_sizes": stats.cluster_sizes,
    }
    print(
        f"data_pipeline {len(docs)} docs ({megabytes:.1f} MB): pipeline {result['pipeline_docs_per_s']:.0f} docs/s, "
        f"datasketch MinHashLSH pass {result['minhash_pass_docs_per_s']:.0f} docs/s, "
        f"ratio {result['ratio_pipeline_over_minhash_pass']:.2f}x (target >= 1.0)"
    )
    print(
        f"data_pipeline two tasks at once: {result['two_task_docs_per_s']:.0f} docs/s, "
        f"{result['ratio_two_tasks_over_one_process']:.2f}x one process; stats.json identical: {identical}"
    )
    print(
        f"data_pipeline near-duplicate clusters: recall {quality['recall']:.3f} (target >= 0.95), precision "
        f"{quality['precision']:.3f} (target >= 0.99) on {quality['planted_pairs']} planted pairs; "
        f"cluster sizes {stats.cluster_sizes}; dropped {dict(stats.dropped)}"
    )
    if not identical:
        raise SystemExit("the two-task run's stats.json differs from the one-process run's")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
