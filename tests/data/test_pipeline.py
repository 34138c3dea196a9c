"""`oracle data run` end to end on planted cases, from local files, an S3 server and an HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from typer.testing import CliRunner

from oracle.data.dedup import signature
from oracle.data.shard import ShardError, ShardWriter
from oracle_cli.app import app

EN = [
    "model",
    "data",
    "train",
    "token",
    "expert",
    "router",
    "layer",
    "weight",
    "value",
    "batch",
    "system",
    "result",
    "paper",
    "method",
    "study",
    "number",
    "field",
    "group",
    "people",
    "world",
    "water",
    "house",
    "school",
    "family",
    "student",
    "power",
    "market",
    "money",
    "music",
    "story",
    "science",
    "health",
    "energy",
    "question",
    "answer",
    "problem",
    "process",
    "service",
    "report",
    "policy",
    "program",
    "public",
    "history",
    "language",
    "learning",
    "network",
    "city",
]
RU = [
    "модель",
    "данные",
    "обучение",
    "токен",
    "эксперт",
    "маршрутизатор",
    "слой",
    "вес",
    "значение",
    "пакет",
    "система",
    "результат",
    "статья",
    "метод",
    "число",
    "поле",
    "группа",
    "люди",
    "мир",
    "вода",
    "дом",
    "школа",
    "семья",
    "студент",
    "сила",
    "рынок",
    "деньги",
    "музыка",
    "история",
    "наука",
    "здоровье",
]
GERMAN = "Der schnelle braune Fuchs springt über den faulen Hund und die Katze schläft ruhig in der warmen Sonne " * 3
EVAL_ITEM = "Which planet in the solar system has the largest number of confirmed moons orbiting it as of this year"


def _doc(words: list[str], rng: random.Random, n: int = 150) -> str:
    return " ".join(rng.choice(words) for _ in range(n)) + "."


@pytest.fixture
def corpus(tmp_path: Path, s3_endpoint: str, http_root: tuple[str, Path]) -> dict[str, object]:
    rng = random.Random(7)
    english = [_doc(EN, rng) for _ in range(12)]
    russian = [_doc(RU, rng) for _ in range(6)]
    near = english[1].split()
    near[70] = "zebra"
    records = [*english, *russian]
    records += [english[0].upper().replace(" ", "  ")]  # exact duplicate after normalisation
    records += [" ".join(near)]  # near duplicate
    records += [_doc(EN, rng) + " Reach me at jane.doe@example.org for details."]  # PII, kept
    records += [_doc(EN, rng) + " " + EVAL_ITEM + " and more words follow here."]  # contaminated
    records += [GERMAN, "too short"]
    local = tmp_path / "in"
    local.mkdir()
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in records]
    (local / "a.jsonl").write_text("\n".join(lines[:10]) + "\n{not json\n")
    with gzip.open(local / "b.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines[10:20]) + "\n")
    pq.write_table(pa.table({"text": records[20:22]}), local / "c.parquet")
    (local / "d.txt").write_text(_doc(EN, rng))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="corpus")
    s3.put_object(Bucket="corpus", Key="e.jsonl", Body=("\n".join(lines[22:]) + "\n").encode())
    base, www = http_root
    (www / "f.jsonl").write_text(json.dumps({"text": _doc(RU, rng)}, ensure_ascii=False) + "\n")
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "planets.jsonl").write_text(json.dumps({"question": EVAL_ITEM, "answer": "Saturn"}) + "\n")
    inputs = [str(local / "*.jsonl"), str(local / "b.jsonl.gz"), str(local / "c.parquet"), str(local / "d.txt")]
    inputs += ["s3://corpus/e.jsonl", f"{base}/f.jsonl"]
    return {"inputs": inputs, "evals": evals, "total": len(records) + 1 + 1 + 1}


def test_every_document_is_accounted_for_and_each_stage_does_its_job(corpus: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["data", "run", "--output", str(out), "--eval-sets", str(corpus["evals"]), "--max-shard-bytes", "50000"]
    for item in corpus["inputs"]:
        args += ["--input", item]
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input_docs"] == corpus["total"]
    assert stats["dropped"] == {
        "contaminated": 1,
        "corrupt_record": 1,
        "exact_duplicate": 1,
        "language": 1,
        "near_duplicate": 1,
        "too_short": 1,
    }
    assert stats["kept_docs"] == stats["input_docs"] - 6
    assert stats["pii"] == {"email": 1}
    assert stats["duplicate_clusters"] == 2
    assert stats["contamination_hits"] == {"planets": 1}
    assert set(stats["languages"]) == {"en", "ru"}
    assert len(stats["sources"]) == 6
    assert all(len(source["sha256"]) == 64 for source in stats["sources"])
    assert (out / "report.md").exists()
    assert {p.name for p in (out / "plots").iterdir()} == {"lengths.png", "languages.png", "drops.png"}
    assert "invalid JSON" in (out / "corrupt_records.log").read_text()

    shards = sorted((out / "shards").glob("*.tar"))
    assert len(shards) > 1
    assert all(shard.stat().st_size <= 50000 for shard in shards)
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False))
    assert len(samples) == stats["kept_docs"]
    texts = [sample["txt"].decode() for sample in samples]
    assert any("<EMAIL>" in text for text in texts)
    assert all(json.loads(sample["json"])["language"] in {"en", "ru"} for sample in samples)


def test_the_shard_cap_is_the_real_file_size(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_bytes=4 * 10240)
    rng = random.Random(1)
    for index in range(200):
        writer.write(f"{index:09d}", "x" * rng.randint(10, 3000), {"i": index})
    shards = writer.close()
    assert len(shards) > 5
    assert max(path.stat().st_size for path in shards) <= 4 * 10240
    assert sum(1 for _ in wds.WebDataset([str(s) for s in shards], shardshuffle=False)) == 200
    with pytest.raises(ShardError, match="more than the cap"):
        ShardWriter(tmp_path / "big", max_bytes=4 * 10240).write("000000000", "x" * 50000, {})


def test_minhash_signatures_are_the_same_in_another_process() -> None:
    text = "the router sends every token to two experts and the shared expert sees all of them " * 3
    here = signature(text).tolist()
    code = "import sys; from oracle.data.dedup import signature; print(signature(sys.argv[1]).tolist())"
    there = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True).stdout
    assert json.loads(there) == here


def test_a_missing_input_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "run", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "no such file or directory" in result.stderr


def test_with_a_tokenizer_the_pipeline_also_writes_packed_sequences(tmp_path: Path) -> None:
    from oracle.data.format import read_index, read_sequences
    from oracle.tokenization import save_tokenizer, train_tokenizer

    rng = random.Random(3)
    docs = [_doc(EN, rng) for _ in range(8)]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    tokenizer, _ = train_tokenizer([source], 1024)
    save_tokenizer(tokenizer, tmp_path / "tok", context_length=512)
    out = tmp_path / "out"
    args = ["data", "run", "--input", str(source), "--output", str(out), "--tokenizer", str(tmp_path / "tok")]
    result = CliRunner().invoke(app, [*args, "--seq-len", "64", "--languages", "en"])
    assert result.exit_code == 0, result.output
    index = read_index(out / "tokens")
    assert (index.dtype, index.seq_len, index.vocab_size) == ("uint16", 64, 1024)
    assert [entry.name for entry in index.files] == ["tokens-000000.bin"]
    # the tokenizer is kept beside the tokens (training puts it into every checkpoint), listed with its digests
    kept = out / "tokens" / "tokenizer"
    assert index.tokenizer is not None
    assert index.tokenizer == {
        name: hashlib.sha256((tmp_path / "tok" / name).read_bytes()).hexdigest() for name in sorted(index.tokenizer)
    }
    assert sorted(p.name for p in kept.iterdir()) == sorted(index.tokenizer)
    assert all((kept / n).read_bytes() == (tmp_path / "tok" / n).read_bytes() for n in index.tokenizer)
    sequences = list(read_sequences(out / "tokens"))
    flat = [int(t) for seq in sequences for t in seq]
    assert len(flat) == index.tokens + index.padded_tokens
    assert flat.count(0) == 8  # one <|endoftext|> after each document
    first_doc = tokenizer.decode(flat[: flat.index(0)])
    assert first_doc == docs[0]
    (out / "tokens" / "tokens-000000.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="sha256 differs"):
        list(read_sequences(out / "tokens"))


def test_reruns_replace_the_previous_output_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    from oracle.data.pipeline import OutputError, PipelineConfig, run_pipeline

    rng = random.Random(5)
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": _doc(EN, rng, 400)}) for _ in range(30)) + "\n")
    out = tmp_path / "out"
    run_pipeline(PipelineConfig([str(source)], out, languages=("en",), max_shard_bytes=40960))
    assert len(list((out / "shards").glob("*.tar"))) > 2
    source.write_text(json.dumps({"text": _doc(EN, rng)}) + "\n")
    stats = run_pipeline(PipelineConfig([str(source)], out, languages=("en",), max_shard_bytes=40960))
    assert sorted(p.name for p in (out / "shards").iterdir()) == stats.shards == ["shard-000000.tar"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a pipeline run's"):
        run_pipeline(PipelineConfig([str(source)], tmp_path / "mine"))


def test_bom_invalid_utf8_and_corrupt_gzip(tmp_path: Path) -> None:
    rng = random.Random(6)
    good = json.dumps({"text": _doc(EN, rng)}).encode()
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"text": "\xff\xfe broken"}\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "run", "--input", str(tmp_path / "bom.jsonl"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["input_docs"], stats["kept_docs"], stats["dropped"]) == (2, 1, {"corrupt_record": 1})
    assert "bom.jsonl:2: not UTF-8" in (out / "corrupt_records.log").read_text()
    # a damaged gzip stream is one more corrupt record (never fatal); the records before the damage are read
    two = good + b"\n" + good.replace(b'"text": "', b'"text": "Second. ') + b"\n"
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(two)[:-12])
    (tmp_path / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    for name, expected in (("bad.jsonl.gz", "the gzip stream is truncated"), ("junk.jsonl.gz", "not a readable gzip")):
        out = tmp_path / name.replace(".", "-")
        result = CliRunner().invoke(app, ["data", "run", "--input", str(tmp_path / name), "--output", str(out)])
        assert result.exit_code == 0, result.output
        stats = json.loads((out / "stats.json").read_text())
        assert stats["dropped"]["corrupt_record"] == 1
        assert stats["input_docs"] == stats["kept_docs"] + 1
        assert f"{name}: {expected}" in (out / "corrupt_records.log").read_text()


def test_text_that_spells_a_special_token_stays_text_in_packed_sequences(tmp_path: Path) -> None:
    from oracle.data.format import read_sequences
    from oracle.tokenization import save_tokenizer, train_tokenizer

    rng = random.Random(8)
    docs = [_doc(EN, rng) + " quoted <|endoftext|> and <|user|> markers", _doc(EN, rng)]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    tokenizer, _ = train_tokenizer([source], 1024)
    save_tokenizer(tokenizer, tmp_path / "tok", context_length=512)
    out = tmp_path / "out"
    args = ["data", "run", "--input", str(source), "--output", str(out), "--tokenizer", str(tmp_path / "tok")]
    assert CliRunner().invoke(app, [*args, "--seq-len", "32", "--languages", "en"]).exit_code == 0
    flat = [int(t) for seq in read_sequences(out / "tokens") for t in seq]
    assert flat.count(0) == 2  # one <|endoftext|> per document, none from the quoted text
    assert flat.count(3) == 0  # no <|user|> either
