"""Deduplication by clusters, whatever the input order: exact duplicates by a hash of the normalised text, near
duplicates by MinHash signatures, LSH buckets and connected components.

Parameters, chosen for recall at Jaccard similarity >= 0.85 (and measured in bench/data_pipeline.py):
- shingles: word 5-grams of the lowercased text (whitespace-split);
- 128 permutations (datasketch's MinHash, seeded: the same signature in every process and run; it hashes with
  sha1, never Python's randomised `hash()`);
- LSH with 16 bands of 8 rows: a pair at Jaccard 0.85 shares a bucket with probability 1 - (1 - 0.85^8)^16 = 0.994;
  at 0.5 with probability 0.06.

The global step (`cluster`) sees every document's signature at once, as datatrove, NeMo Curator and dolma do:
1. documents with the same normalised-text hash are joined (exact duplicates; one of them stands for the group in
   the buckets, since their signatures are equal);
2. for each band, documents whose band of the signature is equal share a bucket; every pair in a bucket that is not
   yet in one component is confirmed by the estimated Jaccard (the share of equal signature values) >= 0.85 and
   joined (union-find);
3. each connected component keeps one document, chosen by a rule that does not depend on order: the longest text,
   then the smallest normalised-text hash, then the smallest document id. The others are dropped, as
   `exact_duplicate` when their normalised text equals the survivor's, else `near_duplicate`.
Skipping a pair whose documents are already connected cannot change the components, so the components (and hence
the kept set) are a function of the documents alone. Chains count: A ~ B and B ~ C put A, B and C in one cluster
even when A and C differ more; that is the reference pipelines' rule too.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash

NUM_PERM = 128
BANDS, ROWS = 16, 8
THRESHOLD = 0.85
SHINGLE_WORDS = 5
SEED = 1
SIGNATURE_DTYPE = np.dtype("<u4")  # datasketch keeps hash values below 2**32


def exact_key(text: str) -> str:
    """sha256 of the text with case and whitespace normalised (so trivially reformatted copies are exact)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def signature(text: str) -> np.ndarray:
    """The document's MinHash signature: `NUM_PERM` values."""
    words = text.lower().split()
    minhash = MinHash(num_perm=NUM_PERM, seed=SEED)
    shingles = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    minhash.update_batch([shingle.encode() for shingle in shingles])
    values: np.ndarray = np.asarray(minhash.hashvalues)
    if int(values.max()) >= 2**32:
        raise AssertionError("datasketch produced a hash value of 32 bits or more; SIGNATURE_DTYPE must widen")
    return values.astype(SIGNATURE_DTYPE)


class _Components:
    def __init__(self, size: int) -> None:
        self.parent = np.arange(size)

    def find(self, item: int) -> int:
        parent = self.parent
        root = item
        while parent[root] != root:
            root = parent[root]
        while parent[item] != root:  # path compression
            parent[item], item = root, parent[item]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# odd 64-bit multipliers that fold a band's ROWS values into one bucket key; a collision only adds a candidate pair,
# which the Jaccard estimate then rejects, so the choice affects speed, never the result
_FOLD = np.array(
    [(0x9E3779B97F4A7C15 ^ (i * 0xBF58476D1CE4E5B9)) & (2**64 - 1) | 1 for i in range(ROWS)], dtype=np.uint64
)


def _buckets(signatures: np.ndarray, band: int) -> list[np.ndarray]:
    """Groups (of two or more row numbers) whose values in `band` fold to the same key."""
    rows = signatures[:, band * ROWS : (band + 1) * ROWS].astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = (rows * _FOLD).sum(axis=1, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    return [group for group in np.split(order, cuts) if len(group) > 1]


@dataclass(frozen=True)
class Clusters:
    """The outcome for documents 0..n-1 of `cluster`: the drop reason of each (None: kept), the row that survives
    for each row's cluster, and the sizes of the clusters of two or more documents."""

    reasons: list[str | None]
    survivors: list[int]
    sizes: Counter[int]

    @property
    def count(self) -> int:
        return sum(self.sizes.values())


def cluster(doc_ids: Sequence[str], keys: Sequence[str], lengths: Sequence[int], signatures: np.ndarray) -> Clusters:
    """One survivor per connected component (module docstring); inputs are parallel, one row per document."""
    count = len(doc_ids)
    if not (len(keys) == len(lengths) == signatures.shape[0] == count):
        raise ValueError("cluster: doc_ids, keys, lengths and signatures differ in length")
    components = _Components(count)
    first_of_key: dict[str, int] = {}
    representatives: list[int] = []
    for row, key in enumerate(keys):
        if key in first_of_key:
            components.union(first_of_key[key], row)
        else:
            first_of_key[key] = row
            representatives.append(row)
    reps = np.asarray(representatives, dtype=np.int64)
    rep_signatures = signatures[reps]
    needed = int(np.ceil(THRESHOLD * NUM_PERM))  # estimated Jaccard >= THRESHOLD, in whole equal values
    for band in range(BANDS):
        for group in _buckets(rep_signatures, band):
            members = reps[group]
            for position in range(len(members) - 1):
                head = int(members[position])
                others = members[position + 1 :]
                equal = np.count_nonzero(signatures[others] == signatures[head], axis=1)
                for other in others[equal >= needed]:
                    components.union(head, int(other))
    roots = [components.find(row) for row in range(count)]
    best: dict[int, int] = {}
    for row, root in enumerate(roots):
        current = best.get(root)
        if current is None or _rank(row, lengths, keys, doc_ids) < _rank(current, lengths, keys, doc_ids):
            best[root] = row
    reasons: list[str | None] = []
    survivors = [best[root] for root in roots]
    for row, survivor in enumerate(survivors):
        if row == survivor:
            reasons.append(None)
        else:
            reasons.append("exact_duplicate" if keys[row] == keys[survivor] else "near_duplicate")
    sizes = Counter(Counter(roots).values())
    del sizes[1]
    return Clusters(reasons, survivors, sizes)


def _rank(row: int, lengths: Sequence[int], keys: Sequence[str], doc_ids: Sequence[str]) -> tuple[int, str, str]:
    return (-lengths[row], keys[row], doc_ids[row])
