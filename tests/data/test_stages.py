"""The pipeline as stages: near-duplicate clusters that do not depend on input order, a run split over tasks that
ends exactly like the one-process run, killed and repeated stages, and the one reader every stage reads through."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oracle.data import dedup, pipeline
from oracle.data.pipeline import PipelineConfig, StageError, run_pipeline
from oracle.data.reader import read_documents
from oracle_cli.app import app
from tests.data.test_pipeline import EN, _doc


def _edit(words: list[str], positions: list[int], rng: random.Random) -> list[str]:
    copy = list(words)
    for position in positions:
        copy[position] = rng.choice([w for w in EN if w != copy[position]]) + "x"  # a word no original uses
    return copy


def _triples(count: int, seed: int) -> list[tuple[str, str, str]]:
    """An original of 200 words and two copies with 2 edited words each, far apart and different in each copy:
    each copy is at 5-gram Jaccard ~0.91 to the original and ~0.83 to the other copy."""
    rng = random.Random(seed)
    triples = []
    for _ in range(count):
        words = [rng.choice(EN) for _ in range(200)]
        first = _edit(words, [40, 140], rng)
        second = _edit(words, [90, 180], rng)
        triples.append((" ".join(words) + ".", " ".join(first) + ".", " ".join(second) + "."))
    return triples


def _jaccard(a: str, b: str) -> float:
    def shingles(text: str) -> set[str]:
        words = text.lower().split()
        return {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _streaming_survivors(texts: list[str]) -> int:
    """What the pipeline did before clusters: compare each document only with those already kept."""
    kept: list[tuple[str, np.ndarray]] = []
    needed = int(np.ceil(dedup.THRESHOLD * dedup.NUM_PERM))
    for text in texts:
        signature = dedup.signature(text)
        if not any(np.count_nonzero(signature == other) >= needed for _, other in kept):
            kept.append((text, signature))
    return len(kept)


def _partition(texts: list[str]) -> set[frozenset[str]]:
    outcome = dedup.cluster(
        [f"doc-{i}" for i in range(len(texts))],
        [dedup.exact_key(t) for t in texts],
        [len(t) for t in texts],
        np.stack([dedup.signature(t) for t in texts]),
    )
    groups: dict[int, set[str]] = {}
    for row, survivor in enumerate(outcome.survivors):
        groups.setdefault(survivor, set()).add(texts[row])
    assert sum(reason is None for reason in outcome.reasons) == len(groups)
    return {frozenset(group) for group in groups.values()}


def test_clusters_do_not_depend_on_the_order_where_streaming_did() -> None:
    triples = _triples(24, seed=11)
    first_to_copy = [_jaccard(o, c) for o, c1, c2 in triples for c in (c1, c2)]
    copy_to_copy = [_jaccard(c1, c2) for _, c1, c2 in triples]
    assert min(first_to_copy) >= 0.88
    assert max(first_to_copy) <= 0.93
    assert min(copy_to_copy) >= 0.80
    assert max(copy_to_copy) <= 0.86
    rng = random.Random(5)
    singles = [_doc(EN, rng, 200) for _ in range(20)]
    originals_last = [t for _, c1, c2 in triples for t in (c1, c2)] + [o for o, _, _ in triples] + singles
    originals_first = [t for triple in triples for t in triple] + singles
    shuffled = list(originals_first)
    random.Random(9).shuffle(shuffled)
    partitions = [_partition(order) for order in (originals_last, originals_first, shuffled)]
    assert partitions[0] == partitions[1] == partitions[2]
    # one cluster a triple, bar the rare pair whose MinHash estimate falls below 0.85 (sd ~0.025 at 0.91)
    whole = sorted(len(group) for group in partitions[0]).count(3)
    assert whole >= len(triples) - 2
    assert len(partitions[0]) <= len(triples) + len(singles) + 2 * (len(triples) - whole)
    # the streaming rule kept two of a triple whenever the copies came first and differed enough from each other
    assert _streaming_survivors(originals_last) >= len(partitions[0]) + 3


def test_the_survivor_is_chosen_by_content_not_by_position() -> None:
    rng = random.Random(2)
    base = _doc(EN, rng, 120)
    longer = base + " " + " ".join(rng.choice(EN) for _ in range(3)) + "."
    for order in ([base, longer], [longer, base]):
        outcome = dedup.cluster(
            ["a", "b"],
            [dedup.exact_key(t) for t in order],
            [len(t) for t in order],
            np.stack([dedup.signature(t) for t in order]),
        )
        kept = [text for text, reason in zip(order, outcome.reasons, strict=True) if reason is None]
        assert kept == [longer]
        assert outcome.count == 1
    exact = [base, base.upper()]  # the same normalised text: an exact duplicate whichever comes first
    outcome = dedup.cluster(
        ["x", "y"],
        [dedup.exact_key(t) for t in exact],
        [len(t) for t in exact],
        np.stack([dedup.signature(t) for t in exact]),
    )
    assert sorted(map(str, outcome.reasons)) == ["None", "exact_duplicate"]


def _write_corpus(folder: Path, texts: list[str], files: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(files):
        chunk = texts[number::files]
        path = folder / f"part-{number:02d}.jsonl"
        if number % 2:
            path = path.with_suffix(".jsonl.gz")
            path.write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in chunk).encode()))
        else:
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk) + "{broken\n")
        paths.append(str(path))
    return paths


def _kept_texts(out: Path) -> list[str]:
    texts = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as archive:
            for member in archive:
                if member.name.endswith(".txt"):
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    texts.append(extracted.read().decode())
    return texts


def test_the_kept_set_is_the_same_in_three_input_orders(tmp_path: Path) -> None:
    triples = _triples(12, seed=3)
    rng = random.Random(4)
    singles = [_doc(EN, rng, 150) for _ in range(10)]
    everything = [t for triple in triples for t in triple] + singles
    results = []
    for name, order in (
        ("originals-first", everything),
        ("originals-last", [t for _, a, b in triples for t in (a, b)] + [o for o, _, _ in triples] + singles),
        ("shuffled", random.Random(1).sample(everything, len(everything))),
    ):
        inputs = _write_corpus(tmp_path / name / "in", order, files=3)
        stats = run_pipeline(PipelineConfig(inputs, tmp_path / name / "out", languages=("en",)))
        results.append((stats.kept_docs, sorted(_kept_texts(tmp_path / name / "out")), stats.cluster_sizes))
    assert results[0] == results[1] == results[2]
    clusters = _partition(everything)
    assert results[0][0] == len(clusters) <= len(triples) + len(singles) + 4
    assert results[0][2] == {str(n): c for n, c in Counter(len(g) for g in clusters).items() if n > 1}


def test_a_run_split_over_tasks_ends_exactly_like_the_one_process_run(tmp_path: Path) -> None:
    from oracle.tokenization import save_tokenizer, train_tokenizer

    triples = _triples(6, seed=8)
    rng = random.Random(6)
    texts = [t for triple in triples for t in triple] + [_doc(EN, rng) for _ in range(14)]
    inputs = _write_corpus(tmp_path / "in", texts, files=5)
    tokenizer, _ = train_tokenizer([Path(p) for p in inputs], 1024)
    save_tokenizer(tokenizer, tmp_path / "tok", context_length=512)
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "set.jsonl").write_text(json.dumps({"q": texts[-1]}) + "\n" + "{not json\n")
    common = ["--eval-sets", str(evals), "--languages", "en", "--tokenizer", str(tmp_path / "tok"), "--seq-len", "64"]
    one = tmp_path / "one"
    inputs_args = [arg for path in inputs for arg in ("--input", path)]
    result = CliRunner().invoke(app, ["data", "run", *inputs_args, "--output", str(one), *common])
    assert result.exit_code == 0, result.output

    work, split = tmp_path / "work", tmp_path / "split"
    runner = CliRunner()
    steps = [
        ["init", "--work", str(work), "--tasks", "2", *inputs_args, *common],
        ["prepare", "--work", str(work), "--task", "1"],
        ["prepare", "--work", str(work), "--task", "0"],
        ["cluster", "--work", str(work)],
        ["write", "--work", str(work), "--task", "0"],
        ["write", "--work", str(work), "--task", "1"],
        ["finish", "--work", str(work), "--output", str(split)],
    ]
    for step in steps:
        result = runner.invoke(app, ["data", "stage", *step])
        assert result.exit_code == 0, (step, result.output)
    compared = ["stats.json", "manifest.json", "corrupt_records.log"]
    compared += [str(p.relative_to(one)) for p in (one / "shards").iterdir()]
    compared += [str(p.relative_to(one)) for p in (one / "tokens").rglob("*") if p.is_file()]
    assert sorted(compared) == sorted(
        [
            *compared[:3],
            *(str(p.relative_to(split)) for d in ("shards", "tokens") for p in (split / d).rglob("*") if p.is_file()),
        ]
    )
    for name in compared:
        assert (one / name).read_bytes() == (split / name).read_bytes(), name
    stats = json.loads((one / "stats.json").read_text())
    assert set(stats["cluster_sizes"]) <= {"2", "3"}
    assert stats["cluster_sizes"].get("3", 0) >= 5  # six planted triples, one copy may fall below the estimate
    assert stats["dropped"]["corrupt_record"] == 3  # the three plain JSONL files end with a broken line
    assert stats["dropped"]["contaminated"] == 1
    assert stats["eval_corrupt_records"] == 1
    assert "evaluation set:" in (one / "corrupt_records.log").read_text()
    # every stage again: nothing to do
    for step in steps[1:-1]:
        result = runner.invoke(app, ["data", "stage", *step])
        assert result.exit_code == 0
        assert "already done" in result.output


def test_a_killed_task_is_run_again_for_its_slice_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(12)
    inputs = _write_corpus(tmp_path / "in", [_doc(EN, rng) for _ in range(12)], files=4)
    work = tmp_path / "work"
    pipeline.init(work, PipelineConfig(inputs, Path(), languages=("en",)), tasks=2)
    assert pipeline.prepare(work, 0)
    done = work / "prepare" / "task-00000" / "result.json"
    stamp = done.stat().st_mtime_ns

    calls = {"n": 0}
    real = pipeline.identify

    def dies_midway(text: str) -> tuple[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill would: nothing of the task may count
        return real(text)

    monkeypatch.setattr(pipeline, "identify", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        pipeline.prepare(work, 1)
    assert not (work / "prepare" / "task-00001").exists()
    assert [p.name for p in (work / "prepare").iterdir() if p.name.startswith(".")] == []
    with pytest.raises(StageError, match=r"prepare stage has not finished for task\(s\) 1"):
        pipeline.cluster(work)
    monkeypatch.setattr(pipeline, "identify", real)
    stale = work / "prepare" / ".task-00001.tmp-killed"  # what a SIGKILL leaves: a half-written staging folder
    stale.mkdir()
    (stale / "documents.jsonl").write_text("half")
    assert pipeline.prepare(work, 1)  # the rerun does task 1 ...
    assert not stale.exists()
    assert not pipeline.prepare(work, 0)  # ... and task 0 is not done again
    assert done.stat().st_mtime_ns == stamp
    assert pipeline.cluster(work)


def test_foreign_plans_altered_results_and_changed_inputs_are_refused(tmp_path: Path) -> None:
    rng = random.Random(13)
    inputs = _write_corpus(tmp_path / "in", [_doc(EN, rng) for _ in range(6)], files=2)
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "e.jsonl").write_text(json.dumps({"q": "x"}) + "\n")
    work = tmp_path / "work"
    config = PipelineConfig(inputs, Path(), eval_sets=evals, languages=("en",))
    pipeline.init(work, config, tasks=2)
    pipeline.init(work, config, tasks=2)  # the same plan: a no-op
    with pytest.raises(StageError, match="another run's plan"):
        pipeline.init(work, config, tasks=1)
    with pytest.raises(StageError, match="the plan has tasks 0 to 1"):
        pipeline.prepare(work, 2)
    pipeline.prepare(work, 0)
    pipeline.prepare(work, 1)
    documents = work / "prepare" / "task-00001" / "documents.jsonl"
    documents.write_text(documents.read_text().replace("model", "mode1"))
    with pytest.raises(StageError, match=r"documents\.jsonl: sha256 differs"):
        pipeline.cluster(work)
    (evals / "e.jsonl").write_text(json.dumps({"q": "y"}) + "\n")
    with pytest.raises(StageError, match=r"evaluation sets .* changed since the plan"):
        pipeline.write(work, 0)
    with pytest.raises(StageError, match="no plan; run `oracle data stage init`"):
        pipeline.prepare(tmp_path / "elsewhere", 0)


def test_one_reader_for_every_format_and_the_same_documents_for_the_tokenizer(tmp_path: Path) -> None:
    from oracle.tokenization.corpus import Corpus, input_files

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (
            ("a.txt", b"first document"),
            ("a.json", b"{}"),
            ("b.txt", b"\xff bad"),
            ("c.txt", b"third"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (tmp_path / "t.txt").write_text("\ufeffplain text")
    (tmp_path / "j.jsonl").write_text('{"text": "one"}\n[1, 2]\n{"text": 3}\n')
    docs = [d for p in sorted(tmp_path.iterdir()) for d in read_documents(str(p))[1]]
    assert [d.text for d in docs] == ["one", None, None, "first document", None, "third", "plain text"]
    problems = [d.problem for d in docs if d.problem]
    assert problems == [
        f"{tmp_path}/j.jsonl:2: a list, not an object with a string field `text`",
        f"{tmp_path}/j.jsonl:3: no string field `text` (it is int)",
        f"{shard}: member b.txt: not UTF-8 (invalid start byte at byte 0)",
    ]
    assert [d.doc_id.rpartition("#")[2] for d in docs] == ["1", "2", "3", "a", "b", "c", "1"]
    corpus = Corpus(input_files([tmp_path]))
    assert list(corpus.texts()) == [d.text for d in docs if d.text is not None]
    assert corpus.corrupt == problems


def test_a_stage_that_claims_a_submitted_job_must_prove_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(14)
    inputs = _write_corpus(tmp_path / "in", [_doc(EN, rng) for _ in range(4)], files=1)
    work = tmp_path / "work"
    pipeline.init(work, PipelineConfig(inputs, Path(), languages=("en",)), tasks=1)
    monkeypatch.chdir(tmp_path)
    record = tmp_path / "record.json"
    record.write_text("{}")
    env = {"ORACLE_SUBMISSION_DIGEST": "0" * 64, "ORACLE_SUBMISSION_RECORD": str(record)}
    result = CliRunner().invoke(app, ["data", "stage", "prepare", "--work", str(work), "--task", "0"], env=env)
    assert result.exit_code == 1  # refused, as `oracle train` in a job that cannot show it was submitted
    assert "data stage prepare refused: submission record" in " ".join(result.stderr.split())
    assert not (work / "prepare").exists()  # nothing ran
    audit = [json.loads(line) for line in (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert (audit[-1]["gate"], audit[-1]["result"]) == ("data", "refused")
    half = CliRunner().invoke(
        app, ["data", "stage", "cluster", "--work", str(work)], env={"ORACLE_SUBMISSION_DIGEST": "x"}
    )
    assert half.exit_code == 1
    assert "must both be set" in half.stderr


def test_hand_edited_plans_and_results_are_refused_in_one_line(tmp_path: Path) -> None:
    """Red team helper-39: a plan or result of the wrong shape is a one-line refusal, never a traceback, and finish
    copies only files a result lists (so hashes) from its own folder."""
    rng = random.Random(15)
    inputs = _write_corpus(tmp_path / "in", [_doc(EN, rng) for _ in range(6)], files=2)
    config = PipelineConfig(inputs, Path(), languages=("en",))
    with pytest.raises(StageError, match="more tasks than the 2 input"):
        pipeline.init(tmp_path / "many", config, tasks=3)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps({**pipeline.make_plan(config, 1), "tasks": "x"}))
    with pytest.raises(StageError, match=r"run\.json: not a plan of version 1 \(tasks: "):
        pipeline.prepare(bad, 0)

    work = tmp_path / "work"
    pipeline.init(work, config, tasks=2)
    for task in (0, 1):
        pipeline.prepare(work, task)
    pipeline.cluster(work)
    pipeline.write(work, 0)
    pipeline.write(work, 1)
    result_file = work / "write" / "task-00000" / "result.json"
    result = json.loads(result_file.read_text())
    secret = tmp_path / "secret.txt"
    secret.write_text("not from any input")
    result["sources"][0]["shards"].append(f"../../../../{secret.name}")
    result_file.write_text(json.dumps(result))
    with pytest.raises(StageError, match=r"is not a file its result lists under shards/"):
        pipeline.finish(work, tmp_path / "out")
    result_file.write_text(json.dumps({"plan": result["plan"]}))
    with pytest.raises(StageError, match="not a stage result"):
        pipeline.finish(work, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_a_slurm_training_record_runs_no_data_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Red team helper-39: `srun --overlap` into one's own training job passes the scheduler's identity check; the
    record of a SLURM training job must still not let data stages run (a data job's record must, for its plan)."""
    from types import SimpleNamespace

    import guards.runtime as runtime
    import guards.submission as submission
    from guards.runtime import DataJobRefusedError, require_data_stage_allowed

    monkeypatch.chdir(tmp_path)
    env = {"ORACLE_SUBMISSION_DIGEST": "d" * 64, "ORACLE_SUBMISSION_RECORD": str(tmp_path / "r.json")}
    monkeypatch.setattr(runtime, "_job_identity", lambda *args: "4242")
    for kind, target, plan, allowed in (
        ("train", "slurm", "p" * 64, False),
        ("data", "slurm", "q" * 64, False),
        ("data", "slurm", "p" * 64, True),
        ("train", "argo", "p" * 64, True),  # the workflow's own data steps, from inputs its spec names
    ):
        record = SimpleNamespace(kind=kind, target=target, config_hash=plan, commit="c" * 40, spec_hash="s")
        monkeypatch.setattr(submission, "verify_submission", lambda *args, record=record: record)
        if allowed:
            assert require_data_stage_allowed("prepare", "p" * 64, env) == "4242"
        else:
            with pytest.raises(DataJobRefusedError, match="data stage prepare refused"):
                require_data_stage_allowed("prepare", "p" * 64, env)
