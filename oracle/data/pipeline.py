"""The data pipeline as stages a scheduler runs: per-task stages over slices of the inputs, one global stage, and a
finish that assembles the output. `oracle data run` runs the same stages in one process (one task), so a run split
over N tasks ends with the same `stats.json`, shards and token files as the one-process run.

    init      WORK/run.json: the plan (the expanded inputs, the task count, every setting, the digests of the
              evaluation sets and of the tokenizer); rerunning init with the same plan is a no-op, a different one
              is refused
    prepare   per task (`--task i`, the inputs j with j % tasks == i): ingest, clean (with PII redaction and the
              filters), language ID, decontamination and MinHash signatures → WORK/prepare/task-NNNNN/
    cluster   global: buckets → confirmed pairs → connected components over every task's signatures, one survivor a
              cluster (oracle/data/dedup.py) → WORK/cluster/
    write     per task: the survivors into WebDataset shards (and packed token sequences with a tokenizer), one
              stream per input → WORK/write/task-NNNNN/
    finish    the output folder: shards and token files numbered in input order, tokens/index.json, stats.json
              (exact accounting of every input document), report.md, manifest.json, corrupt_records.log

Every stage writes into a temporary folder beside its result and renames it into place when complete: a killed
task leaves nothing that counts, and its rerun does only its own slice; a stage whose result exists (for this plan)
is a no-op. Each result records the sha256 of its files and the plan's digest, and the stages after it check both
(and that every file they use is listed), so a result of another plan, or one cut short or damaged on the shared
disk, is refused rather than read. That is integrity against accidents, not against the user who submitted the
job, who can write the work folder (and so result.json): a data job attests the code and the plan it ran, not its
outputs. What training may read is judged where it is read: SUB003 and the trainer's checks of the token index.
A process reads its plan once (`read_plan`), so the runtime check of a job and its stage see the same plan.

Output layout is a function of the inputs alone (each input's survivors in order, its own shards and token
sequences), never of the task count: that is what makes the accounting identical however the work is split. The
price: each input closes its last shard and pads its last token sequence, so many tiny inputs make many small shards
(concatenate them first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oracle.data import dedup
from oracle.data.clean import CleanSettings, clean_document
from oracle.data.decontaminate import Decontaminator
from oracle.data.format import PackedWriter, write_index
from oracle.data.language import identify
from oracle.data.reader import expand, read_documents
from oracle.data.shard import DEFAULT_MAX_SHARD_BYTES, ShardWriter
from oracle.data.stats import PipelineStats, write_report, write_stats
from oracle_base.atomic_write import write_atomically
from oracle_base.digests import sha256_file
from oracle_base.errors import ConfigurationError
from oracle_base.records.training import PackedFile

PLAN_FILE = "run.json"
PLAN_VERSION = 1
RESULT_FILE = "result.json"
OWN_OUTPUTS = {"shards", "tokens", "plots", "stats.json", "report.md", "manifest.json", "corrupt_records.log"}


class StageError(ConfigurationError, ValueError):
    """A stage that cannot run: a missing or foreign plan, an earlier stage not finished, a result altered on disk.
    The message names the folder and what to run."""


class OutputError(ConfigurationError, ValueError):
    """An --output folder that holds something other than a previous run's results."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    inputs: list[str]
    output: Path
    eval_sets: Path | None = None
    languages: tuple[str, ...] = ("en", "ru")
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    clean: CleanSettings = dataclasses.field(default_factory=CleanSettings)
    tokenizer: Path | None = None  # with it, also packed token sequences (oracle/data/format.py)
    seq_len: int = 2048


def config_from_options(
    inputs: list[str],
    output: Path,
    *,
    eval_sets: Path | None,
    languages: str,
    max_shard_bytes: int,
    tokenizer: Path | None,
    seq_len: int,
) -> PipelineConfig:
    """The configuration the command line describes (`--languages en,ru` a comma-separated list)."""
    return PipelineConfig(
        inputs=inputs,
        output=output,
        eval_sets=eval_sets,
        languages=tuple(code.strip() for code in languages.split(",") if code.strip()),
        max_shard_bytes=max_shard_bytes,
        tokenizer=tokenizer,
        seq_len=seq_len,
    )


# --- the plan ------------------------------------------------------------------------------------------------------


def _digests(directory: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(directory / name) for name in names}


def _eval_digests(eval_sets: Path | None) -> dict[str, str]:
    if eval_sets is None or not eval_sets.is_dir():
        return {}  # Decontaminator refuses a missing folder with its own message
    return _digests(eval_sets, sorted(p.name for p in eval_sets.iterdir() if p.is_file()))


def _tokenizer_digests(tokenizer: Path | None) -> dict[str, str]:
    if tokenizer is None:
        return {}
    from oracle.tokenization.tokenizer import TOKENIZER_FILES

    try:
        return _digests(tokenizer, list(TOKENIZER_FILES))
    except OSError as exc:
        raise StageError(f"--tokenizer {tokenizer}: cannot read its files ({exc}); train one first") from exc


def make_plan(config: PipelineConfig, tasks: int) -> dict[str, Any]:
    if tasks < 1:
        raise StageError(f"--tasks {tasks}: must be at least 1")
    # local inputs by absolute path: the stages may run elsewhere (a job's working directory is not the shell's)
    inputs = [uri if "://" in uri else str(Path(uri).resolve()) for uri in expand(config.inputs)]
    if not inputs:
        raise StageError(f"no input files behind {', '.join(config.inputs)}")
    if tasks > len(inputs):
        raise StageError(f"--tasks {tasks}: more tasks than the {len(inputs)} input file(s); a task takes whole files")
    return {
        "version": PLAN_VERSION,
        "inputs": inputs,
        "tasks": tasks,
        "languages": list(config.languages),
        "max_shard_bytes": config.max_shard_bytes,
        "clean": dataclasses.asdict(config.clean),
        "eval_sets": None if config.eval_sets is None else str(config.eval_sets.resolve()),
        "eval_digests": _eval_digests(config.eval_sets),
        "tokenizer": None if config.tokenizer is None else str(config.tokenizer.resolve()),
        "tokenizer_digests": _tokenizer_digests(config.tokenizer),
        "seq_len": config.seq_len,
    }


def _encode(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def init(work: Path, config: PipelineConfig, tasks: int) -> dict[str, Any]:
    """Write WORK/run.json; the same plan again is a no-op, another plan in the same folder is refused."""
    plan = make_plan(config, tasks)
    path = work / PLAN_FILE
    if path.exists():
        if load_plan(work) != plan:
            raise StageError(f"{path} holds another run's plan (inputs or settings differ); use a new --work folder")
        return plan
    work.mkdir(parents=True, exist_ok=True)
    write_atomically(path, _encode(plan))
    return read_plan(work)[0]


class _PlanRecord(BaseModel):
    """WORK/run.json's schema: what `make_plan` writes, checked on every read (a hand-edited plan is refused in one
    line, never a traceback halfway through a stage)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1]
    inputs: list[str] = Field(min_length=1)
    tasks: int = Field(ge=1)
    languages: list[str]
    max_shard_bytes: int = Field(gt=0)
    clean: dict[str, float | int]
    eval_sets: str | None
    eval_digests: dict[str, str]
    tokenizer: str | None
    tokenizer_digests: dict[str, str]
    seq_len: int = Field(ge=8)


# A process reads its plan once (`read_plan`): the runtime check of a submitted job and every stage it then runs
# see the same bytes, so swapping run.json between the check and the stage changes nothing.
_PINNED: dict[Path, tuple[dict[str, Any], str]] = {}


def read_plan(work: Path) -> tuple[dict[str, Any], str]:
    """The plan and the sha256 of the bytes it was parsed from, read once per process and folder."""
    key = work.resolve()
    if key in _PINNED:
        return _PINNED[key]
    path = work / PLAN_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StageError(f"{path}: no plan; run `oracle data stage init` first") from None
    except OSError as exc:
        raise StageError(f"{path}: not readable ({exc.strerror}); check the --work folder") from exc
    try:
        plan: dict[str, Any] = _PlanRecord.model_validate_json(data).model_dump()
    except ValidationError as exc:
        where = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "(top level)"
        raise StageError(
            f"{path}: not a plan of version {PLAN_VERSION} ({where}: {exc.errors()[0]['msg']}); remove the --work "
            "folder and run `oracle data stage init` again"
        ) from exc
    if plan["tasks"] > len(plan["inputs"]):
        raise StageError(f"{path}: {plan['tasks']} tasks for {len(plan['inputs'])} inputs; run init again")
    _PINNED[key] = (plan, hashlib.sha256(data).hexdigest())
    return _PINNED[key]


def load_plan(work: Path) -> dict[str, Any]:
    return read_plan(work)[0]


def plan_digest(work: Path) -> str:
    return read_plan(work)[1]


def task_inputs(plan: dict[str, Any], task: int) -> list[int]:
    tasks = int(plan["tasks"])
    if not 0 <= task < tasks:
        raise StageError(f"--task {task}: the plan has tasks 0 to {tasks - 1}")
    return [index for index in range(len(plan["inputs"])) if index % tasks == task]


def config_of(plan: dict[str, Any], output: Path) -> PipelineConfig:
    return PipelineConfig(
        inputs=list(plan["inputs"]),
        output=output,
        eval_sets=None if plan["eval_sets"] is None else Path(plan["eval_sets"]),
        languages=tuple(plan["languages"]),
        max_shard_bytes=int(plan["max_shard_bytes"]),
        clean=CleanSettings(**plan["clean"]),
        tokenizer=None if plan["tokenizer"] is None else Path(plan["tokenizer"]),
        seq_len=int(plan["seq_len"]),
    )


def _check_unchanged(plan: dict[str, Any]) -> None:
    """The evaluation sets and the tokenizer are read again by every task: they must be those the plan names."""
    config = config_of(plan, Path())
    if _eval_digests(config.eval_sets) != plan["eval_digests"]:
        raise StageError(f"the evaluation sets in {plan['eval_sets']} changed since the plan was made; start a new run")
    if _tokenizer_digests(config.tokenizer) != plan["tokenizer_digests"]:
        raise StageError(f"the tokenizer in {plan['tokenizer']} changed since the plan was made; start a new run")


# --- results: written whole or not at all ---------------------------------------------------------------------------


def _result_dir(work: Path, stage: str, task: int | None) -> Path:
    return work / stage / (f"task-{task:05d}" if task is not None else "all")


def _read_result(work: Path, folder: Path, digest: str) -> dict[str, Any] | None:
    """The result in `folder` (None when there is none yet), checked against the plan and its files' digests."""
    path = folder / RESULT_FILE
    if not path.exists():
        return None
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"{path}: not readable ({exc}); remove {folder} and run that stage again") from exc
    files = result.get("files") if isinstance(result, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise StageError(f"{path}: not a stage result (no `files` table); remove {folder} and run that stage again")
    if result.get("plan") != digest:
        raise StageError(f"{folder} was made for another plan; remove it (or use a new --work) and run it again")
    return result


@contextlib.contextmanager
def _reading(folder: Path) -> Iterator[None]:
    """A result whose contents do not have the shape its stage writes is refused in one line, naming the folder."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        if isinstance(exc, StageError):
            raise
        raise StageError(
            f"{folder}: its result does not hold what the stage writes ({type(exc).__name__}: {exc}); remove "
            f"{folder} and run that stage again"
        ) from exc


# what each stage's result must list (and so hash); names of shards and token files are checked where used
_REQUIRED = {"prepare": ("documents.jsonl", "candidates.jsonl", "signatures.npy")}


def _listed(folder: Path, result: dict[str, Any], subfolder: str, name: object) -> Path:
    """A file a result names under `subfolder`: a plain name that its `files` table lists (so hashed)."""
    if (
        not isinstance(name, str)
        or "/" in name
        or name in ("", ".", "..")
        or f"{subfolder}/{name}" not in result["files"]
    ):
        raise StageError(
            f"{folder}: {name!r} is not a file its result lists under {subfolder}/; remove {folder} and rerun"
        )
    return folder / subfolder / name


def _verify_files(folder: Path, result: dict[str, Any]) -> None:
    for name, expected in result["files"].items():
        try:
            actual = sha256_file(folder / name)
        except OSError as exc:
            raise StageError(f"{folder / name}: missing ({exc.strerror}); remove {folder} and run it again") from exc
        if actual != expected:
            raise StageError(f"{folder / name}: sha256 differs from {RESULT_FILE}; remove {folder} and run it again")


def _publish(staging: Path, final: Path, digest: str, summary: dict[str, Any]) -> dict[str, Any]:
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    result = {"plan": digest, "files": _digests(staging, files), **summary}
    write_atomically(staging / RESULT_FILE, _encode(result))
    try:
        os.replace(staging, final)
    except OSError:  # another run of the same task finished first: its result stands
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / RESULT_FILE).exists():
            raise
    return result


def _staging(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a killed earlier attempt's leftovers
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))


def _run_stage(work: Path, stage: str, task: int | None, body: Any) -> tuple[dict[str, Any], bool]:
    """The stage's result: read when it exists (ran is False), else made by `body(staging)` and published."""
    digest = plan_digest(work)
    final = _result_dir(work, stage, task)
    existing = _read_result(work, final, digest)
    if existing is not None:
        return existing, False
    staging = _staging(final)
    try:
        summary = body(staging)
        return _publish(staging, final, digest, summary), True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _require(work: Path, stage: str, tasks: list[int | None]) -> list[tuple[Path, dict[str, Any]]]:
    digest = plan_digest(work)
    found, missing = [], []
    for task in tasks:
        folder = _result_dir(work, stage, task)
        result = _read_result(work, folder, digest)
        if result is None:
            missing.append("global" if task is None else str(task))
        else:
            _verify_files(folder, result)
            required = list(_REQUIRED.get(stage, ()))
            if stage == "cluster":
                required += [f"task-{t:05d}.json" for t in range(int(read_plan(work)[0]["tasks"]))]
            absent = [name for name in required if name not in result["files"]]
            if absent:
                raise StageError(f"{folder}: its result does not list {absent[0]}; remove {folder} and run it again")
            found.append((folder, result))
    if missing:
        raise StageError(f"the {stage} stage has not finished for task(s) {', '.join(missing)}; run it first")
    return found


# --- prepare -------------------------------------------------------------------------------------------------------


def prepare(work: Path, task: int) -> bool:
    """Ingest, clean, language ID, decontamination and signatures for the task's inputs. False: already done."""
    plan = load_plan(work)
    indices = task_inputs(plan, task)
    _check_unchanged(plan)
    config = config_of(plan, Path())

    def body(staging: Path) -> dict[str, Any]:
        decontaminator = Decontaminator(config.eval_sets)
        sources: list[dict[str, Any]] = []
        signatures: list[np.ndarray] = []
        with (
            (staging / "documents.jsonl").open("w", encoding="utf-8") as documents,
            (staging / "candidates.jsonl").open("w", encoding="utf-8") as candidates,
        ):
            for index in indices:
                sources.append(_prepare_source(plan, index, config, decontaminator, documents, candidates, signatures))
        array = np.stack(signatures) if signatures else np.zeros((0, dedup.NUM_PERM), dedup.SIGNATURE_DTYPE)
        np.save(staging / "signatures.npy", array, allow_pickle=False)
        summary = {"task": task, "sources": sources, "candidates": len(signatures)}
        return {**summary, "eval_corrupt": decontaminator.corrupt}

    return _run_stage(work, "prepare", task, body)[1]


def _prepare_source(
    plan: dict[str, Any],
    index: int,
    config: PipelineConfig,
    decontaminator: Decontaminator,
    documents: Any,
    candidates: Any,
    signatures: list[np.ndarray],
) -> dict[str, Any]:
    source, raw_documents = read_documents(plan["inputs"][index])
    dropped: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    hits_before = Counter(decontaminator.hits)
    corrupt: list[str] = []
    inputs = cleaned_bytes = 0
    for document in raw_documents:
        inputs += 1
        if document.text is None:
            dropped["corrupt_record"] += 1
            corrupt.append(document.problem or document.doc_id)
            continue
        cleaned = clean_document(document.text, config.clean)
        pii.update(cleaned.pii)
        if cleaned.text is None:
            dropped[cleaned.drop_reason or "filtered"] += 1
            continue
        cleaned_bytes += len(cleaned.text.encode())
        language, score = identify(cleaned.text)
        if language not in config.languages:
            dropped["language"] += 1
            continue
        # decontamination first: a copy of a contaminated document is contaminated too, not a duplicate
        if decontaminator.check(cleaned.text):
            dropped["contaminated"] += 1
            continue
        row = {"source": index, "id": document.doc_id, "text": cleaned.text, "language": language, "score": score}
        documents.write(json.dumps(row, ensure_ascii=False) + "\n")
        key = dedup.exact_key(cleaned.text)
        candidates.write(json.dumps({"id": document.doc_id, "key": key, "length": len(cleaned.text)}) + "\n")
        signatures.append(dedup.signature(cleaned.text))
    return {
        "index": index,
        "uri": source.uri,
        "sha256": source.sha256,
        "size": source.size,
        "input_docs": inputs,
        "dropped": dict(dropped),
        "pii": dict(pii),
        "cleaned_bytes": cleaned_bytes,
        "contamination_hits": dict(Counter(decontaminator.hits) - hits_before),
        "corrupt": corrupt,
    }


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


# --- cluster -------------------------------------------------------------------------------------------------------


def cluster(work: Path) -> bool:
    """Near-duplicate clusters over every task's documents; the drop reason of each candidate, per task."""
    plan = load_plan(work)
    tasks = list(range(int(plan["tasks"])))
    prepared = _require(work, "prepare", list(tasks))

    def body(staging: Path) -> dict[str, Any]:
        ids: list[str] = []
        keys: list[str] = []
        lengths: list[int] = []
        blocks, counts = [], []
        for folder, result in prepared:
            with _reading(folder):
                for row in _lines(folder / "candidates.jsonl"):
                    ids.append(str(row["id"]))
                    keys.append(str(row["key"]))
                    lengths.append(int(row["length"]))
                block = np.load(folder / "signatures.npy", allow_pickle=False)
                if block.shape != (int(result["candidates"]), dedup.NUM_PERM) or block.dtype != dedup.SIGNATURE_DTYPE:
                    raise StageError(f"{folder}/signatures.npy: shape {block.shape} does not match its candidates")
            blocks.append(block)
            counts.append(block.shape[0])
        signatures = np.concatenate(blocks) if blocks else np.zeros((0, dedup.NUM_PERM), dedup.SIGNATURE_DTYPE)
        outcome = dedup.cluster(ids, keys, lengths, signatures)
        start = 0
        for task, count in zip(tasks, counts, strict=True):
            reasons = outcome.reasons[start : start + count]
            (staging / f"task-{task:05d}.json").write_text(json.dumps(reasons) + "\n")
            start += count
        return {"clusters": outcome.count, "sizes": {str(size): n for size, n in sorted(outcome.sizes.items())}}

    return _run_stage(work, "cluster", None, body)[1]


# --- write ---------------------------------------------------------------------------------------------------------


def write(work: Path, task: int) -> bool:
    """The task's survivors into shards (and token sequences), one stream per input."""
    plan = load_plan(work)
    task_inputs(plan, task)
    _check_unchanged(plan)
    ((prepared_dir, prepared),) = _require(work, "prepare", [task])
    ((cluster_dir, _),) = _require(work, "cluster", [None])
    config = config_of(plan, Path())
    with _reading(cluster_dir):
        reasons: list[str | None] = json.loads((cluster_dir / f"task-{task:05d}.json").read_text())
        if not isinstance(reasons, list) or not all(r in (None, "exact_duplicate", "near_duplicate") for r in reasons):
            raise ValueError(f"task-{task:05d}.json is not a list of drop reasons")
    if len(reasons) != int(prepared["candidates"]):
        raise StageError(
            f"{cluster_dir}: {len(reasons)} decisions for {prepared['candidates']} candidates of task {task}"
        )

    def body(staging: Path) -> dict[str, Any]:
        tokenizer = None
        if config.tokenizer is not None:
            from oracle.tokenization.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(config.tokenizer)
            tokenizer.encode_special_tokens = True  # corpus text that spells a special token must not become one
        per_source = {
            source["index"]: _Stream(staging, source["index"], source["uri"], config, tokenizer)
            for source in prepared["sources"]
        }
        for row, reason in zip(_lines(prepared_dir / "documents.jsonl"), reasons, strict=True):
            per_source[row["source"]].add(row, reason)
        return {"task": task, "sources": [stream.close() for stream in per_source.values()]}

    return _run_stage(work, "write", task, body)[1]


class _Stream:
    """One input's survivors: its own shards and token sequences."""

    def __init__(self, staging: Path, index: int, uri: str, config: PipelineConfig, tokenizer: Any) -> None:
        self.index, self.uri, self.tokenizer = index, uri, tokenizer
        self.shards = ShardWriter(staging / "shards", config.max_shard_bytes, prefix=f"shard-{index:06d}")
        self.packer = None
        if tokenizer is not None:
            eos, pad = _special_ids(tokenizer)
            self.packer = PackedWriter(
                staging / "tokens", config.seq_len, tokenizer.get_vocab_size(), eos, pad, prefix=f"tokens-{index:06d}"
            )
        self.kept = 0
        self.dropped: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.kept_bytes = 0
        self.lengths: list[int] = []

    def add(self, row: dict[str, Any], reason: str | None) -> None:
        if reason is not None:
            self.dropped[reason] += 1
            return
        text = row["text"]
        meta = {"id": row["id"], "source": self.uri, "language": row["language"], "lang_score": row["score"]}
        self.shards.write(f"{self.index:06d}-{self.kept:09d}", text, meta)
        if self.packer is not None:
            self.packer.add(self.tokenizer.encode(text).ids)  # literal "<|...|>" text stays text
        self.kept += 1
        self.languages[row["language"]] += 1
        self.kept_bytes += len(text.encode())
        self.lengths.append(len(text))

    def close(self) -> dict[str, Any]:
        shards = self.shards.close()
        summary: dict[str, Any] = {
            "index": self.index,
            "kept_docs": self.kept,
            "dropped": dict(self.dropped),
            "languages": dict(self.languages),
            "kept_bytes": self.kept_bytes,
            "kept_lengths": self.lengths,
            "shards": [path.name for path in shards],
        }
        if self.packer is not None:
            files = self.packer.finish()
            listed = [entry.model_dump() for entry in files]
            summary["tokens"] = {"files": listed, "tokens": self.packer.tokens, "padded": self.packer.padded_tokens}
        return summary


# --- finish --------------------------------------------------------------------------------------------------------


def finish(work: Path, output: Path) -> PipelineStats:
    """Assemble the output folder from every task's results, in input order, and swap it in whole."""
    plan = load_plan(work)
    tasks: list[int | None] = list(range(int(plan["tasks"])))
    prepared = {int(r["task"]): (folder, r) for folder, r in _require(work, "prepare", tasks)}
    written = {int(r["task"]): (folder, r) for folder, r in _require(work, "write", tasks)}
    ((_, clustered),) = _require(work, "cluster", [None])
    config = config_of(plan, output)
    _check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        with _reading(work / "write"):
            prepared_sources = {s["index"]: s for _, r in prepared.values() for s in r["sources"]}
            written_sources = {s["index"]: (written[t][0], s) for t, (_, r) in written.items() for s in r["sources"]}
            results = {folder: result for folder, result in written.values()}
            eval_corrupt = [str(p) for p in prepared[0][1]["eval_corrupt"]]  # the same evaluation sets in every task
            stats = _assemble(
                plan, config, staging, prepared_sources, written_sources, results, clustered, eval_corrupt
            )
        _swap(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _assemble(
    plan: dict[str, Any],
    config: PipelineConfig,
    out: Path,
    prepared_sources: dict[int, dict[str, Any]],
    written_sources: dict[int, tuple[Path, dict[str, Any]]],
    results: dict[Path, dict[str, Any]],
    clustered: dict[str, Any],
    eval_corrupt: list[str],
) -> PipelineStats:
    stats = PipelineStats()
    stats.eval_corrupt_records = len(eval_corrupt)
    corrupt: list[str] = [f"evaluation set: {problem}" for problem in eval_corrupt]
    (out / "shards").mkdir()
    token_files: list[PackedFile] = []
    tokens = padded = 0
    for index in range(len(plan["inputs"])):
        source = prepared_sources[index]
        folder, kept = written_sources[index]
        stats.sources.append({"uri": source["uri"], "sha256": source["sha256"], "size": source["size"]})
        stats.input_docs += source["input_docs"]
        stats.bytes["ingested"] += source["size"]
        stats.bytes["cleaned"] += source["cleaned_bytes"]
        stats.dropped.update(source["dropped"])
        stats.dropped.update(kept["dropped"])
        stats.pii.update(source["pii"])
        stats.contamination_hits.update(source["contamination_hits"])
        corrupt += source["corrupt"]
        stats.kept_docs += kept["kept_docs"]
        stats.languages.update(kept["languages"])
        stats.bytes["kept"] += kept["kept_bytes"]
        stats.kept_lengths += kept["kept_lengths"]
        for name in kept["shards"]:
            final = out / "shards" / f"shard-{len(stats.shards):06d}.tar"
            shutil.copyfile(_listed(folder, results[folder], "shards", name), final)
            stats.shards.append(final.name)
            stats.bytes["sharded"] += final.stat().st_size
        if "tokens" in kept:
            (out / "tokens").mkdir(exist_ok=True)
            for entry in kept["tokens"]["files"]:
                name = f"tokens-{len(token_files):06d}.bin"
                shutil.copyfile(_listed(folder, results[folder], "tokens", entry["name"]), out / "tokens" / name)
                token_files.append(PackedFile.model_validate({**entry, "name": name}))
            tokens += kept["tokens"]["tokens"]
            padded += kept["tokens"]["padded"]
    stats.duplicate_clusters = int(clustered["clusters"])
    stats.cluster_sizes = dict(clustered["sizes"])
    if config.tokenizer is not None:
        _write_token_index(config, out / "tokens", token_files, tokens, padded)
        stats.tokens = {"tokens": tokens, "padded_tokens": padded, "seq_len": config.seq_len}
    write_atomically(out / "manifest.json", json.dumps({"sources": stats.sources}, indent=2) + "\n")
    if corrupt:
        write_atomically(out / "corrupt_records.log", "\n".join(corrupt) + "\n")
    write_stats(stats, out)
    write_report(stats, out)
    return stats


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids of `<|endoftext|>` (after each document) and `<|pad|>` (filling the last sequence)."""
    from oracle.tokenization.special_tokens import END_OF_TEXT, PAD

    eos, pad = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(PAD)
    if eos is None or pad is None:
        raise StageError(f"the tokenizer has no {END_OF_TEXT} or {PAD} token; train it with `oracle tokenizer train`")
    return int(eos), int(pad)


def _write_token_index(
    config: PipelineConfig, directory: Path, files: list[PackedFile], tokens: int, padded: int
) -> None:
    from oracle.tokenization.tokenizer import load_tokenizer

    assert config.tokenizer is not None
    tokenizer = load_tokenizer(config.tokenizer)
    eos, pad = _special_ids(tokenizer)
    directory.mkdir(exist_ok=True)
    write_index(
        directory,
        seq_len=config.seq_len,
        vocab_size=tokenizer.get_vocab_size(),
        eos_id=eos,
        pad_id=pad,
        files=files,
        tokens=tokens,
        padded_tokens=padded,
        tokenizer_dir=config.tokenizer,
    )


def _swap(staging: Path, final: Path) -> None:
    """A failed run leaves the previous output untouched, and a rerun leaves no stale shards behind."""
    if final.exists():
        retired = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, retired / final.name)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)


def _check_output(output: Path) -> None:
    if output.exists() and any(entry.name not in OWN_OUTPUTS for entry in output.iterdir()):
        raise OutputError(f"--output {output} holds files that are not a pipeline run's; choose an empty folder")


def run_pipeline(config: PipelineConfig) -> PipelineStats:
    """`oracle data run`: every stage in this process, one task, in a work folder removed afterwards."""
    _check_output(config.output)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=config.output.parent, prefix=f".{config.output.name}.work-"))
    try:
        init(work, config, tasks=1)
        prepare(work, 0)
        cluster(work)
        write(work, 0)
        return finish(work, config.output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
