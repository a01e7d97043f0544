"""How much two texts share: word n-gram shingles, Jaccard similarity, containment, MinHash.

One measure serves three jobs: how alike a document's generations are (near-duplicates among
them), how much a generation copies its source, and whether a training document is a near copy
of a validation document. Words are lower-cased runs of letters and digits, so formatting,
punctuation and case do not count; a shingle is `n` consecutive words, hashed to 64 bits
(blake2b: the same in every process, unlike Python's `hash`).
"""
from __future__ import annotations

import hashlib
import re
import statistics

import numpy as np

_WORD = re.compile(r"\w+")
GENERATION_NGRAM = 3  # paraphrases of one source share few longer n-grams
DOCUMENT_NGRAM = 5  # the usual shingle of near-duplicate document detection
NEAR_DUPLICATE = 0.5  # generations this alike (3-gram Jaccard) count as near-duplicates


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, n: int) -> frozenset[int]:
    """Hashed word n-grams; a text of fewer than n words is one shingle of all its words."""
    w = words(text)
    grams = [" ".join(w[i:i + n]) for i in range(max(len(w) - n + 1, 1 if w else 0))]
    return frozenset(int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
                     for g in grams)


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are not alike (0)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def containment(a: frozenset, b: frozenset) -> float:
    """The fraction of a's shingles that b holds (0 for an empty a)."""
    return len(a & b) / len(a) if a else 0.0


def generation_stats(source: str, texts: list[str]) -> tuple[list[dict], dict]:
    """Diversity of one document's generations: per generation, its highest similarity to any
    other of them (`max_similarity`, word-3-gram Jaccard) and the share of its 3-grams found in
    the source (`source_overlap`: 1 is a copy); per document, the mean pairwise similarity and
    how many generations have a near-duplicate (similarity >= 0.5) among the others."""
    source_set = shingles(source, GENERATION_NGRAM)
    sets = [shingles(t, GENERATION_NGRAM) for t in texts]
    pair = {(i, j): jaccard(sets[i], sets[j])
            for i in range(len(sets)) for j in range(i + 1, len(sets))}
    per = []
    for i, s in enumerate(sets):
        others = [pair[min(i, j), max(i, j)] for j in range(len(sets)) if j != i]
        per.append({"max_similarity": round(max(others, default=0.0), 4),
                    "source_overlap": round(containment(s, source_set), 4)})
    doc = {"generations": len(texts),
           "mean_pairwise_similarity": round(statistics.fmean(pair.values()), 4) if pair else None,
           "near_duplicates": sum(p["max_similarity"] >= NEAR_DUPLICATE for p in per)}
    return per, doc



def distribution(values) -> dict | None:
    """count, mean and quantiles (min, p10, median, p90, max) of a list of numbers."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    at = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"count": len(values), "mean": round(statistics.fmean(values), 4),
            "min": round(values[0], 4), "p10": round(at(0.1), 4),
            "median": round(at(0.5), 4), "p90": round(at(0.9), 4), "max": round(values[-1], 4)}


class MinHash:
    """MinHash signatures of shingle sets (`num_perm` hashes (a·x + b) mod the prime 2^31 - 1,
    products within 64 bits) and an LSH index over them in `bands` bands: two sets of Jaccard
    similarity s share a band with probability 1 - (1 - s^(num_perm/bands))^bands (0.9996 at
    s = 0.8 with 128/32)."""
    _PRIME = (1 << 31) - 1

    def __init__(self, num_perm: int = 128, bands: int = 32, seed: int = 0):
        if num_perm % bands:
            raise ValueError(f"num_perm {num_perm} is not a multiple of bands {bands}")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, self._PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, self._PRIME, num_perm, dtype=np.uint64)
        self.bands, self.rows = bands, num_perm // bands
        self.buckets: dict[tuple, list] = {}

    def signature(self, shingle_set: frozenset) -> np.ndarray:
        p = np.uint64(self._PRIME)
        x_S = np.fromiter(shingle_set, np.uint64, len(shingle_set)) % p
        if not len(x_S):
            return np.full(len(self.a), self._PRIME, np.uint64)
        return ((self.a[:, None] * x_S[None, :] + self.b[:, None]) % p).min(axis=1)

    def _band_keys(self, sig: np.ndarray):
        return [(band, sig[band * self.rows:(band + 1) * self.rows].tobytes())
                for band in range(self.bands)]

    def add(self, key, sig: np.ndarray) -> None:
        for band_key in self._band_keys(sig):
            self.buckets.setdefault(band_key, []).append(key)

    def candidates(self, sig: np.ndarray) -> set:
        out = set()
        for band_key in self._band_keys(sig):
            out.update(self.buckets.get(band_key, ()))
        return out
