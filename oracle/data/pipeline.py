"""`oracle data run`: ingest → clean (with language ID) → dedup → decontaminate → shard → stats, streaming one
document at a time, so every input document ends kept or dropped with exactly one reason."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from oracle.atomic_write import write_atomically
from oracle.data.clean import CleanSettings, clean_document
from oracle.data.decontaminate import Decontaminator
from oracle.data.dedup import Deduplicator
from oracle.data.format import PackedWriter
from oracle.data.ingest import expand, read_source
from oracle.data.language import identify
from oracle.data.shard import DEFAULT_MAX_SHARD_BYTES, ShardWriter
from oracle.data.stats import PipelineStats, write_report, write_stats

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class PipelineConfig:
    inputs: list[str]
    output: Path
    eval_sets: Path | None = None
    languages: tuple[str, ...] = ("en", "ru")
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    clean: CleanSettings = field(default_factory=CleanSettings)
    tokenizer: Path | None = None  # with it, also packed token sequences (oracle/data/format.py)
    seq_len: int = 2048


def _packer(config: PipelineConfig) -> tuple[PackedWriter | None, Tokenizer | None]:
    if config.tokenizer is None:
        return None, None
    from oracle.tokenization.special_tokens import END_OF_TEXT, PAD
    from oracle.tokenization.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.tokenizer)
    tokenizer.encode_special_tokens = True  # corpus text that spells a special token must not become one
    eos, pad = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(PAD)
    assert eos is not None
    assert pad is not None
    packer = PackedWriter(
        config.output / "tokens", config.seq_len, tokenizer.get_vocab_size(), eos, pad, tokenizer_dir=config.tokenizer
    )
    return packer, tokenizer


OWN_OUTPUTS = {"shards", "tokens", "plots", "stats.json", "report.md", "manifest.json", "corrupt_records.log"}


class OutputError(ValueError):
    """An --output folder that holds something other than a previous run's results."""


def run_pipeline(config: PipelineConfig) -> PipelineStats:
    """Build the whole output in a temporary sibling folder and swap it in at the end: a failed run leaves the
    previous output untouched, and a rerun leaves no stale shards behind."""
    final = config.output
    if final.exists() and any(entry.name not in OWN_OUTPUTS for entry in final.iterdir()):
        raise OutputError(f"--output {final} holds files that are not a pipeline run's; choose an empty folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        stats = _run(dataclasses.replace(config, output=staging))
        if final.exists():
            retired = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _run(config: PipelineConfig) -> PipelineStats:
    stats = PipelineStats()
    uris = expand(config.inputs)
    dedup = Deduplicator()
    decontaminator = Decontaminator(config.eval_sets)
    writer = ShardWriter(config.output / "shards", config.max_shard_bytes)
    packer, tokenizer = _packer(config)
    corrupt: list[str] = []
    kept_index = 0
    for uri in uris:
        source, documents = read_source(uri)
        stats.sources.append({"uri": source.uri, "sha256": source.sha256, "size": source.size})
        stats.bytes["ingested"] += source.size
        for document in documents:
            stats.input_docs += 1
            if document.text is None:
                stats.dropped["corrupt_record"] += 1
                corrupt.append(document.problem or document.doc_id)
                continue
            cleaned = clean_document(document.text, config.clean)
            stats.pii.update(cleaned.pii)
            if cleaned.text is None:
                stats.dropped[cleaned.drop_reason or "filtered"] += 1
                continue
            stats.bytes["cleaned"] += len(cleaned.text.encode())
            language, score = identify(cleaned.text)
            if language not in config.languages:
                stats.dropped["language"] += 1
                continue
            # decontamination first: a copy of a contaminated document is contaminated too, not a duplicate
            reason = decontaminator.check(cleaned.text) or dedup.check(document.doc_id, cleaned.text)
            if reason:
                stats.dropped[reason] += 1
                continue
            meta = {"id": document.doc_id, "source": document.source, "language": language, "lang_score": score}
            writer.write(f"{kept_index:09d}", cleaned.text, meta)
            if packer is not None and tokenizer is not None:
                packer.add(tokenizer.encode(cleaned.text).ids)  # literal "<|...|>" text stays text
            kept_index += 1
            stats.kept_docs += 1
            stats.languages[language] += 1
            stats.bytes["kept"] += len(cleaned.text.encode())
            stats.kept_lengths.append(len(cleaned.text))
    shards = writer.close()
    if packer is not None:
        packer.close()
        stats.tokens = {"tokens": packer.tokens, "padded_tokens": packer.padded_tokens, "seq_len": config.seq_len}
    stats.shards = [path.name for path in shards]
    stats.bytes["sharded"] = sum(path.stat().st_size for path in shards)
    stats.duplicate_clusters = dedup.cluster_count()
    stats.contamination_hits.update(decontaminator.hits)
    write_atomically(config.output / "manifest.json", json.dumps({"sources": stats.sources}, indent=2) + "\n")
    if corrupt:
        write_atomically(config.output / "corrupt_records.log", "\n".join(corrupt) + "\n")
    write_stats(stats, config.output)
    write_report(stats, config.output)
    return stats
