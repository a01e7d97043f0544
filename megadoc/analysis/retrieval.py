"""Retrieval for RAG evaluation: an article cut into character chunks, ranked by Okapi BM25.

No embedding model can be downloaded on the machines the tests run on, so BM25 is the default;
any object with `rank(query, k) -> list[int]` over the same chunks fits where a `BM25` does.
"""
from __future__ import annotations

import collections
import math
import re

CHUNK_CHARS = 1024  # EntiGraph's RAG baseline chunk size
_WORD = re.compile(r"\w+")
# Words that carry no topic; dropping them keeps a question's "the"/"of" from ranking chunks.
_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how in is it its of on or that "
    "the their them they this to was were what when where which who whom why will with".split())


def chunk_text(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    """Consecutive pieces of at most `chunk_chars` characters, each cut at the last whitespace
    before the limit (a word longer than the limit is cut where it must); joining them with the
    whitespace dropped between gives back the text."""
    chunks, start = [], 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start, end + 1), text.rfind("\n", start, end + 1))
            end = cut if cut > start else end
        chunks.append(text[start:end])
        start = end
        while start < len(text) and text[start] in " \n":
            start += 1
    return chunks


def terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


class BM25:
    """Okapi BM25 (k1, b) with Lucene's non-negative idf, over a fixed list of passages."""

    def __init__(self, passages: list[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.counts = [collections.Counter(terms(p)) for p in passages]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.mean_length = max(sum(self.lengths) / max(len(passages), 1), 1e-9)
        docs_with = collections.Counter(t for c in self.counts for t in c)
        n = len(passages)
        self.idf = {t: math.log(1 + (n - m + 0.5) / (m + 0.5)) for t, m in docs_with.items()}

    def scores(self, query: str) -> list[float]:
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.mean_length)
            out.append(sum(self.idf.get(t, 0.0) * counts[t] * (self.k1 + 1) / (counts[t] + norm)
                           for t in terms(query) if counts[t]))
        return out

    def rank(self, query: str, k: int) -> list[int]:
        """Indices of the k best passages, best first (ties: earlier passage first)."""
        scores = self.scores(query)
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
