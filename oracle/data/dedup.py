"""The dedup stage: exact duplicates by a hash of the normalised text, near duplicates by MinHash with LSH.

Parameters, chosen for recall at Jaccard similarity >= 0.85 (and measured in bench/data_pipeline.py):
- shingles: word 5-grams of the lowercased text (whitespace-split);
- 128 permutations (datasketch's MinHash, seeded: the same signature in every process and run; it hashes with
  sha1, never Python's randomised `hash()`);
- LSH with 16 bands of 8 rows: a pair at Jaccard 0.85 becomes a candidate with probability 1 - (1 - 0.85^8)^16 =
  0.994; at 0.5 with probability 0.06;
- every candidate is confirmed by the estimated Jaccard >= 0.85 before it counts as a duplicate (precision).
The first document of a cluster is kept; the others are dropped with reason `near_duplicate` (or `exact_duplicate`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

NUM_PERM = 128
BANDS, ROWS = 16, 8
THRESHOLD = 0.85
SHINGLE_WORDS = 5
SEED = 1


def exact_key(text: str) -> str:
    """sha256 of the text with case and whitespace normalised (so trivially reformatted copies are exact)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def signature(text: str) -> MinHash:
    words = text.lower().split()
    minhash = MinHash(num_perm=NUM_PERM, seed=SEED)
    shingles = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    minhash.update_batch([shingle.encode() for shingle in shingles])
    return minhash


@dataclass
class Deduplicator:
    """Streaming: `check(doc_id, text)` returns None for a document to keep, else the drop reason."""

    lsh: MinHashLSH = field(default_factory=lambda: MinHashLSH(num_perm=NUM_PERM, params=(BANDS, ROWS)))
    exact: dict[str, str] = field(default_factory=dict)  # key → first document id
    signatures: dict[str, MinHash] = field(default_factory=dict)
    clusters: dict[str, list[str]] = field(default_factory=dict)  # kept id → ids dropped as its duplicates

    def check(self, doc_id: str, text: str) -> str | None:
        key = exact_key(text)
        if key in self.exact:
            self.clusters.setdefault(self.exact[key], []).append(doc_id)
            return "exact_duplicate"
        minhash = signature(text)
        for candidate in self.lsh.query(minhash):
            if self.signatures[candidate].jaccard(minhash) >= THRESHOLD:
                self.clusters.setdefault(candidate, []).append(doc_id)
                return "near_duplicate"
        self.exact[key] = doc_id
        self.signatures[doc_id] = minhash
        self.lsh.insert(doc_id, minhash)
        return None

    def cluster_count(self) -> int:
        """Groups of two or more documents that were merged into one."""
        return len(self.clusters)
