"""Concat-and-chunk: documents (already EOS-terminated) into windows of seq_len+1 tokens.

Window i covers stream tokens [i*seq_len, i*seq_len + seq_len + 1): consecutive windows share one
token, so every next-token transition of the stream lands in exactly one window. Segment ids
number the documents inside each window 1, 2, ...; a document cut by a window edge keeps going
as segment 1 of the next window.
"""
from __future__ import annotations

import numpy as np


class Windower:
    def __init__(self, seq_len: int, chunk_tokens: int = 1 << 20):
        self.seq_len = seq_len
        self._chunk_tokens = max(chunk_tokens, seq_len + 1)
        self._docs: list[np.ndarray] = []
        self._pending = 0
        self._tail_tokens = np.zeros(0, np.int32)
        self._tail_docs = np.zeros(0, np.int64)  # running document number of each tail token
        self._next_doc = 0
        self.num_tokens = 0

    def add(self, ids) -> list[tuple[np.ndarray, np.ndarray]]:
        """Adds one document; returns any full windows as (tokens [n, L+1], segment_ids [n, L+1])."""
        self._docs.append(np.asarray(ids, np.int32))
        self._pending += len(ids)
        self.num_tokens += len(ids)
        return self._cut() if self._pending >= self._chunk_tokens else []

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._cut()

    def get_state(self) -> dict:
        """The carried tail (call after `flush`, when no document is pending)."""
        assert not self._docs, "flush before get_state"
        return {"tail_tokens": self._tail_tokens.tolist(), "tail_docs": self._tail_docs.tolist(),
                "next_doc": self._next_doc, "num_tokens": self.num_tokens}

    def set_state(self, state: dict) -> None:
        self._tail_tokens = np.asarray(state["tail_tokens"], np.int32)
        self._tail_docs = np.asarray(state["tail_docs"], np.int64)
        self._next_doc, self.num_tokens = state["next_doc"], state["num_tokens"]

    @property
    def leftover_tokens(self) -> int:
        """Stream tokens whose next-token transition is in no window (the unfinished tail)."""
        return max(len(self._tail_tokens) - 1, 0) + self._pending

    def _cut(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if not self._docs:
            return []
        lengths = np.array([len(d) for d in self._docs])
        doc_numbers = np.repeat(np.arange(self._next_doc, self._next_doc + len(lengths)), lengths)
        tokens = np.concatenate([self._tail_tokens] + self._docs)
        docs = np.concatenate([self._tail_docs, doc_numbers])
        self._next_doc += len(lengths)
        self._docs, self._pending = [], 0
        L = self.seq_len
        n = (len(tokens) - 1) // L if len(tokens) > L else 0
        self._tail_tokens, self._tail_docs = tokens[n * L:], docs[n * L:]
        if n == 0:
            return []
        rows = np.arange(n)[:, None] * L + np.arange(L + 1)[None, :]
        window_docs = docs[rows]
        segment_ids = (window_docs - window_docs[:, :1] + 1).astype(np.int32)
        return [(tokens[rows], segment_ids)]
