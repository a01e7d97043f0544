"""Latent-thought split points: a document's tokens cut into k+1 equal pieces.

Split i (1..k) sits after token floor(i·n/(k+1)); the prompt for it holds the whole text before
that point and the whole text after it, and the record stores the point as a character offset.
A sweep over counts takes each count's own points (the 2 points of k=2 are not among the 4 of
k=4), so a run at several counts writes every count's thoughts, in `sweep_points` order.
"""
from __future__ import annotations

# How far a cut may move to land on a token boundary that is also a character boundary (a
# byte-level tokenizer can end a token inside a multi-byte character).
_MAX_NUDGE = 4


def sweep_points(counts) -> list[tuple[int, int]]:
    """(count k, split index 0..k-1) of each sample of a run at these split counts."""
    return [(k, i) for k in counts for i in range(k)]


def split_offsets(tokenizer, text: str, splits: int) -> list[int]:
    """Character offsets of the `splits` split points, in order (equal offsets are possible when
    the document has fewer tokens than pieces)."""
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    ids = tokenizer.encode(text)
    n = len(ids)
    return [char_offset(tokenizer, text, ids, (i * n) // (splits + 1))
            for i in range(1, splits + 1)]


def char_offset(tokenizer, text: str, ids: list[int], cut: int) -> int:
    """Characters of `text` in its first `cut` tokens `ids[:cut]`, the cut nudged by up to a few
    tokens to a character boundary."""
    for nudge in range(_MAX_NUDGE + 1):
        for c in dict.fromkeys((cut + nudge, cut - nudge)):
            if 0 <= c <= len(ids):
                prefix = tokenizer.decode(ids[:c])
                if text.startswith(prefix):
                    return len(prefix)
    raise ValueError(f"no character boundary within {_MAX_NUDGE} tokens of token {cut}: the "
                     "tokenizer does not decode a prefix of the tokens to a prefix of the text")
