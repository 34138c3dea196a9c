"""Benchmark (issue 19): datatrove's MinHash deduplication side by side with ours, on the same generated corpus.

The corpus is bench/data_pipeline.py's (`make_corpus`: English and Russian word salad with planted near pairs,
triples whose original comes after its copies, and exact copies reformatted in case and whitespace). Measured, in one
session, repeated and interleaved (medians; the load average is printed, the machine may be shared):
- ours: `oracle data run` in one process (the whole pipeline, a subprocess, as a user runs it), and the dedup part
  alone (read the JSONL, `dedup.exact_key` + `dedup.signature` of every document, `dedup.cluster`), as 1 task and
  as 2 tasks (two processes at once, each reading its own files, as the prepare stage splits them; then one
  cluster);
- datatrove: its four MinHash stages (signatures, buckets, cluster, filter writing the kept documents as JSONL) under
  `LocalPipelineExecutor`, 1 task and 2 tasks (2 workers; the buckets stage always runs one task per bucket), as
  close to ours as it allows: word 5-grams, 16 buckets x 8 hashes (128 in all), seed 1, and a whitespace word
  tokenizer (its default for English is spaCy's, whose tokens differ from ours). What cannot be matched: its
  shingles are hashed with xxhash64 and permuted with a universal hash (ours: datasketch, sha1 and 32 bits); its text
  normalisation also strips punctuation, replaces digits and strips diacritics; and a candidate pair (equal values
  in one bucket) is joined without confirming the estimated Jaccard.
- quality for both, as bench/data_pipeline.py's `cluster_quality` measures it: recall (the planted pairs with true
  5-gram Jaccard >= 0.85 that end in one cluster) and precision (of the documents removed, the share whose kept
  cluster member is planted in the same group); whether the copies that differ only in case and whitespace are
  removed; and whether the kept set is the same when the corpus is written in another order (a shuffled copy).

datatrove runs in a subprocess with another interpreter (a throwaway virtualenv; it is not a dependency of this
project, and this file imports it only there): the same file, run as `--worker`, reads the corpus folder and prints
one JSON line. Setup (about 150 MB besides pip; the MinHash stages import `tokenizers`, `regex`, `orjson` and
`xxhash`, which datatrove's `processing` extra pins below 4: xxhash 4 refuses the str its hash is given):

    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install datatrove 'xxhash<4' regex orjson tokenizers

Usage: python bench/datatrove_compare.py --datatrove-python /tmp/dtvenv/bin/python [--docs N] [--repeats R]
       [--json FILE]
Prints one JSON report (medians, docs/s, quality); 20,000 documents x 3 repeats take about 9 minutes on two cores.
(`nox -s bench` skips it: it needs that virtualenv.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

PARTS = 8  # make_corpus writes documents i with i % 8 == p to part-p.jsonl, in order
ID_PATTERN = re.compile(r"part-(\d+)\.jsonl/(\d+)$")


# ---------------------------------------------------------------------------------------------------------------
# the worker: runs under the throwaway virtualenv's interpreter, imports only datatrove and the standard library


def _whitespace_tokenizer(word_tokenizers: Any) -> Any:
    """A datatrove WordTokenizer that splits on whitespace, as ours does (after datatrove's own normalisation)."""

    class Whitespace(word_tokenizers.WordTokenizer):  # type: ignore[misc]
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return Whitespace()


def worker(inputs: Path, work: Path, tasks: int) -> dict[str, Any]:
    """datatrove's four MinHash stages over inputs/*.jsonl; the kept, removed and clustered document ids."""
    local = importlib.import_module("datatrove.executor.local")
    minhash = importlib.import_module("datatrove.pipeline.dedup.minhash")
    readers = importlib.import_module("datatrove.pipeline.readers")
    writers = importlib.import_module("datatrove.pipeline.writers.jsonl")
    hashing = importlib.import_module("datatrove.utils.hashing")
    word_tokenizers = importlib.import_module("datatrove.utils.word_tokenizers")
    config = minhash.MinhashConfig(
        n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1, hash_config=hashing.HashConfig(precision=64)
    )
    tokenizer = _whitespace_tokenizer(word_tokenizers)
    workers = min(tasks, 2)

    def reader() -> Any:
        return readers.JsonlReader(str(inputs), glob_pattern="*.jsonl")

    def executor(pipeline: list[Any], stage_tasks: int, name: str) -> Any:
        return local.LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=stage_tasks,
            workers=min(workers, stage_tasks),
            logging_dir=str(work / "logs" / name),
        )

    stages = [
        executor(
            [reader(), minhash.MinhashDedupSignature(str(work / "sigs"), config=config, language=tokenizer)],
            tasks,
            "signatures",
        ),
        executor(
            [minhash.MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
            config.num_buckets,
            "buckets",
        ),
        executor(
            [
                minhash.MinhashDedupCluster(
                    str(work / "buckets"), str(work / "remove"), config=config, save_cluster_id=True
                )
            ],
            1,
            "cluster",
        ),
        executor(
            [
                reader(),
                minhash.MinhashDedupFilter(
                    str(work / "remove"),
                    exclusion_writer=writers.JsonlWriter(str(work / "removed"), compression=None),
                ),
                writers.JsonlWriter(str(work / "kept"), compression=None),
            ],
            tasks,
            "filter",
        ),
    ]
    times = []
    start = time.perf_counter()
    for stage in stages:
        begin = time.perf_counter()
        stage.run()
        times.append(time.perf_counter() - begin)
    seconds = time.perf_counter() - start

    def ids(folder: Path) -> list[str]:
        return [json.loads(line)["id"] for path in sorted(folder.glob("*.jsonl")) for line in path.open()]

    clusters: dict[str, int] = {}  # document id -> cluster id, for the documents in a cluster of two or more
    for rank in range(tasks):
        stream = [doc.id for doc in reader().run(rank=rank, world_size=tasks)]  # the rank's documents, in order
        path = work / "remove" / f"{rank:06d}.clusters"
        if path.exists():
            values = memoryview(path.read_bytes()).cast("I")
            for position in range(0, len(values), 2):
                clusters[stream[values[position]]] = values[position + 1]
    return {
        "seconds": seconds,
        "stage_seconds": dict(zip(["signatures", "buckets", "cluster", "filter"], times, strict=True)),
        "kept": ids(work / "kept"),
        "removed": ids(work / "removed"),
        "clusters": clusters,
    }


# ---------------------------------------------------------------------------------------------------------------
# the driver: runs under the project's interpreter


def corpus_index(doc_id: str) -> int:
    """datatrove's default document id (`part-P.jsonl/LINE`) -> the document's index in make_corpus's list."""
    match = ID_PATTERN.search(doc_id)
    if match is None:
        raise ValueError(f"unexpected datatrove document id {doc_id!r}")
    return int(match.group(2)) * PARTS + int(match.group(1))


def write_parts(folder: Path, docs: list[str]) -> None:
    folder.mkdir(parents=True)
    for part in range(PARTS):
        lines = [json.dumps({"text": d}, ensure_ascii=False) for d in docs[part::PARTS]]
        (folder / f"part-{part}.jsonl").write_text("\n".join(lines))


def strong_pairs(docs: list[str], groups: list[list[int]]) -> list[tuple[int, int]]:
    from bench.data_pipeline import jaccard

    pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]]
    return [(a, b) for a, b in pairs if jaccard(docs[a], docs[b]) >= 0.85]


def quality(
    cluster_of: dict[int, int],
    kept: set[int],
    removed: list[int],
    groups: list[list[int]],
    strong: list[tuple[int, int]],
) -> dict[str, float]:
    """Recall and precision as cluster_quality computes them, from cluster labels and the kept set."""
    group_of = {doc: number for number, group in enumerate(groups) for doc in group}
    found = sum(a in cluster_of and cluster_of.get(b) == cluster_of[a] for a, b in strong)
    survivor = {cluster_of[doc]: doc for doc in kept if doc in cluster_of}
    right = 0
    for doc in removed:
        keeper = survivor.get(cluster_of.get(doc, -1))
        right += doc in group_of and keeper is not None and group_of.get(keeper) == group_of[doc]
    return {"recall": found / len(strong), "precision": right / len(removed) if removed else 1.0}


def run_datatrove(python: str, inputs: Path, work: Path, tasks: int, perm: list[int] | None = None) -> dict[str, Any]:
    """One datatrove run in the throwaway interpreter; ids mapped back to corpus indices (through `perm` when the
    corpus was written shuffled: position s holds document perm[s])."""
    shutil.rmtree(work, ignore_errors=True)
    command = [python, __file__, "--worker", "--input", str(inputs), "--work", str(work), "--tasks", str(tasks)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "LOGURU_LEVEL": "WARNING"}
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"datatrove worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])

    def back(doc_id: str) -> int:
        index = corpus_index(doc_id)
        return perm[index] if perm is not None else index

    result["kept"] = {back(d) for d in result["kept"]}
    result["removed"] = [back(d) for d in result["removed"]]
    result["clusters"] = {back(d): c for d, c in result["clusters"].items()}
    result["wall_seconds"] = wall
    shutil.rmtree(work, ignore_errors=True)
    return result


def _task_signatures(paths: list[Path]) -> tuple[list[int], list[str], list[int], Any]:
    """One task's share of our dedup: read its files, the normalised-text keys, lengths and MinHash signatures."""
    import numpy as np

    from oracle.data import dedup

    rows, keys, lengths, signatures = [], [], [], []
    for path in paths:
        part = int(path.name.removeprefix("part-").removesuffix(".jsonl"))
        for line_no, line in enumerate(path.open()):
            text = json.loads(line)["text"]
            rows.append(line_no * PARTS + part)
            keys.append(dedup.exact_key(text))
            lengths.append(len(text))
            signatures.append(dedup.signature(text))
    return rows, keys, lengths, np.stack(signatures)


def ours_dedup(inputs: Path, tasks: int) -> tuple[float, Any, list[int]]:
    """Our dedup alone, as the stages split it: each task (a process of its own when tasks > 1) reads the files j
    with j % tasks == i and computes keys and signatures, then one `dedup.cluster`. Returns the seconds, the
    Clusters and each row's position in the corpus folder."""
    import numpy as np

    from oracle.data import dedup

    start = time.perf_counter()
    paths = sorted(inputs.glob("*.jsonl"))
    shares = [paths[i::tasks] for i in range(tasks)]
    if tasks == 1:
        parts = [_task_signatures(paths)]
    else:
        with ProcessPoolExecutor(tasks, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_task_signatures, shares))
    rows = [row for part in parts for row in part[0]]
    keys = [key for part in parts for key in part[1]]
    lengths = [length for part in parts for length in part[2]]
    signatures = np.concatenate([part[3] for part in parts])
    outcome = dedup.cluster([str(r) for r in rows], keys, lengths, signatures)
    return time.perf_counter() - start, outcome, rows


def ours_quality(outcome: Any, rows: list[int], groups: list[list[int]], strong: list[tuple[int, int]]) -> Any:
    cluster_of = {rows[r]: rows[s] for r, s in enumerate(outcome.survivors)}
    kept = {rows[r] for r, reason in enumerate(outcome.reasons) if reason is None}
    removed = [rows[r] for r, reason in enumerate(outcome.reasons) if reason is not None]
    return quality(cluster_of, kept, removed, groups, strong), kept


def ours_pipeline(directory: Path) -> float:
    output = directory / "ours-out"
    shutil.rmtree(output, ignore_errors=True)
    oracle = Path(sys.executable).with_name("oracle")
    command = [str(oracle), "data", "run", "--input", str(directory / "in"), "--output", str(output)]
    command += ["--eval-sets", str(directory / "evals")]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(output, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datatrove-python", help="the throwaway virtualenv's python, with datatrove installed")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.input, args.work, args.tasks)))
        return
    if not args.datatrove_python:
        parser.error("--datatrove-python is required (see the docstring for the throwaway virtualenv)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.data_pipeline import make_corpus

    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        corpus = make_corpus(directory, args.docs)
        docs, groups = corpus["docs"], corpus["groups"]
        assert isinstance(docs, list)
        assert isinstance(groups, list)
        strong = strong_pairs(docs, groups)
        reformatted = [g for g in groups if len(g) == 2 and docs[g[1]] == docs[g[0]].upper().replace(" ", "  ")]
        perm = list(range(len(docs)))
        random.Random(1).shuffle(perm)
        write_parts(directory / "shuffled", [docs[i] for i in perm])
        (directory / "groups.json").write_text(json.dumps(groups))
        timings: dict[str, list[float]] = {k: [] for k in ["ours_pipeline", "ours_dedup_1", "ours_dedup_2"]}
        timings |= {"datatrove_1": [], "datatrove_2": [], "datatrove_1_wall": [], "datatrove_2_wall": []}
        results: dict[str, Any] = {}
        for repeat in range(args.repeats):
            for tasks in (1, 2):
                run = run_datatrove(args.datatrove_python, directory / "in", directory / "dt", tasks)
                timings[f"datatrove_{tasks}"].append(run["seconds"])
                timings[f"datatrove_{tasks}_wall"].append(run["wall_seconds"])
                results[f"datatrove_{tasks}"] = run
                seconds, outcome, rows = ours_dedup(directory / "in", tasks)
                timings[f"ours_dedup_{tasks}"].append(seconds)
                results["ours"] = (outcome, rows)
            timings["ours_pipeline"].append(ours_pipeline(directory))
            print(f"repeat {repeat + 1}/{args.repeats} done, load average {os.getloadavg()}", file=sys.stderr)
        shuffled = run_datatrove(args.datatrove_python, directory / "shuffled", directory / "dt", 1, perm)
        _, shuffled_ours, shuffled_rows = ours_dedup(directory / "shuffled", 1)
    load = os.getloadavg()
    ours_outcome, ours_rows = results["ours"]
    ours_q, ours_kept = ours_quality(ours_outcome, ours_rows, groups, strong)
    _, ours_kept_shuffled = ours_quality(shuffled_ours, [perm[r] for r in shuffled_rows], groups, strong)
    report: dict[str, Any] = {
        "docs": len(docs),
        "megabytes": round(sum(len(d.encode()) for d in docs) / 1e6, 1),
        "planted_pairs": len(strong),
        "reformatted_exact_copies": len(reformatted),
        "load_average": load,
        "median_seconds": {k: statistics.median(v) for k, v in timings.items()},
        "ours": ours_q,
        "ours_reformatted_removed": sum(g[1] not in ours_kept or g[0] not in ours_kept for g in reformatted),
        "ours_kept_same_when_shuffled": ours_kept == ours_kept_shuffled,
    }
    report["docs_per_s"] = {k: len(docs) / v for k, v in report["median_seconds"].items()}
    for tasks in (1, 2):
        run = results[f"datatrove_{tasks}"]
        report[f"datatrove_{tasks}"] = quality(run["clusters"], run["kept"], run["removed"], groups, strong)
        report[f"datatrove_{tasks}"]["removed"] = len(run["removed"])
        report[f"datatrove_{tasks}"]["stage_seconds"] = run["stage_seconds"]
    run = results["datatrove_1"]
    report["datatrove_reformatted_removed"] = sum(
        g[0] not in run["kept"] or g[1] not in run["kept"] for g in reformatted
    )
    report["datatrove_kept_same_when_shuffled"] = run["kept"] == shuffled["kept"]
    report["datatrove_kept_differs_when_shuffled"] = len(run["kept"] ^ shuffled["kept"])
    report["ours_removed"] = sum(r is not None for r in results["ours"][0].reasons)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
