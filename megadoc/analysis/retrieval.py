"""Retrieval for RAG evaluation: articles cut into character chunks, each prefixed by its
article's title, ranked by Okapi BM25 (`bm25s`) over the whole corpus or one article's chunks.

The knowledge papers retrieve over the whole corpus (EntiGraph and SMT: dense embeddings, top
128, reranked to 8). No embedding model can be downloaded on the machines the tests run on, so
megadoc ranks by BM25; the title prefix lets a question that names its article find that
article's chunks. A reranker (e.g. `quality.likelihood_reranker`) may reorder the top
candidates.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import bm25s
import numpy as np

CHUNK_CHARS = 1024  # EntiGraph's RAG baseline chunk size
STOPWORDS = "en"


@dataclasses.dataclass(frozen=True)
class Chunk:
    article_id: str
    index: int  # position among its article's chunks
    text: str  # as retrieved and shown: the article's title, a newline, then the chunk


def chunks_of(article_id: str, title: str, text: str) -> list[Chunk]:
    prefix = f"{title}\n" if title else ""
    return [Chunk(article_id, i, prefix + c) for i, c in enumerate(chunk_text(text))]


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


class BM25:
    """Okapi BM25 (bm25s, Lucene's variant: k1 1.5, b 0.75, English stopwords dropped) over a
    fixed list of chunks."""

    def __init__(self, chunks: Sequence[Chunk]):
        if not chunks:
            raise ValueError("BM25 needs at least one chunk to rank")
        self.chunks = list(chunks)
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize([c.text for c in self.chunks], stopwords=STOPWORDS,
                                         show_progress=False), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        words = bm25s.tokenize([query], stopwords=STOPWORDS, show_progress=False,
                               return_ids=False)[0]
        known = [w for w in words if w in self._index.vocab_dict]
        if not known:  # nothing in common with any chunk
            return np.zeros(len(self.chunks))
        return np.asarray(self._index.get_scores(known), np.float64)

    def rank(self, query: str, k: int) -> list[int]:
        """Indices of the k best chunks, best first (ties: earlier chunk first)."""
        order = np.lexsort((np.arange(len(self.chunks)), -self.scores(query)))
        return [int(i) for i in order[:k]]
