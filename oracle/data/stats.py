"""The stats stage: `stats.json` (exact accounting of every input document) and `report.md` with PNG plots."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from oracle_base.atomic_write import write_atomically


@dataclass
class PipelineStats:
    input_docs: int = 0
    kept_docs: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    bytes: dict[str, int] = field(default_factory=lambda: {"ingested": 0, "cleaned": 0, "kept": 0, "sharded": 0})
    languages: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    duplicate_clusters: int = 0
    cluster_sizes: dict[str, int] = field(default_factory=dict)  # documents in a cluster → how many such clusters
    eval_corrupt_records: int = 0  # evaluation-set records that could not be read (listed in corrupt_records.log)
    contamination_hits: Counter[str] = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)  # packed-token totals when a tokenizer was given
    sources: list[dict[str, object]] = field(default_factory=list)
    kept_lengths: list[int] = field(default_factory=list)

    def check_accounting(self) -> None:
        accounted = self.kept_docs + sum(self.dropped.values())
        if accounted != self.input_docs:
            raise AssertionError(f"accounting broken: {self.input_docs} in, {accounted} kept or dropped")

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("kept_lengths")
        for key in ("dropped", "languages", "pii", "contamination_hits"):
            data[key] = dict(sorted(getattr(self, key).items()))
        return data


def write_stats(stats: PipelineStats, out: Path) -> Path:
    stats.check_accounting()
    return write_atomically(out / "stats.json", json.dumps(stats.as_json(), indent=2, ensure_ascii=False) + "\n")


def write_report(stats: PipelineStats, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)

    def bar(name: str, counts: Counter[str], title: str) -> str:
        figure, axes = plt.subplots(figsize=(6, 3))
        items = sorted(counts.items(), key=lambda item: -item[1]) or [("none", 0)]
        axes.bar([k for k, _ in items], [v for _, v in items])
        axes.set_title(title)
        axes.tick_params(axis="x", rotation=30)
        figure.tight_layout()
        figure.savefig(plots / name)
        plt.close(figure)
        return f"plots/{name}"

    figure, axes = plt.subplots(figsize=(6, 3))
    axes.hist(stats.kept_lengths or [0], bins=30)
    axes.set_title("kept document length (characters)")
    figure.tight_layout()
    figure.savefig(plots / "lengths.png")
    plt.close(figure)
    languages = bar("languages.png", stats.languages, "kept documents by language")
    drops = bar("drops.png", stats.dropped, "dropped documents by reason")
    lines = [
        "# Data pipeline report",
        "",
        f"- input documents: {stats.input_docs}",
        f"- kept: {stats.kept_docs}; dropped: {sum(stats.dropped.values())}",
        f"- bytes: {stats.bytes}",
        f"- duplicate clusters: {stats.duplicate_clusters} (by size: {stats.cluster_sizes or 'none'})",
        f"- PII redacted: {dict(stats.pii) or 'none'}",
        f"- contamination hits: {dict(stats.contamination_hits) or 'none'}",
        f"- shards: {len(stats.shards)}",
        "",
        "![lengths](plots/lengths.png)",
        f"![languages]({languages})",
        f"![drops]({drops})",
        "",
    ]
    return write_atomically(out / "report.md", "\n".join(lines))
