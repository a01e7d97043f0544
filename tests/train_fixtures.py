"""Tiny window stores for the training tests, written with megadoc.data.store's writer."""
from __future__ import annotations

import numpy as np

from megadoc.data import store as store_lib

VOCAB = 64


def make_store(path: str, num_windows: int, seq_len: int = 32, seed: int = 0,
               fingerprint: str = "test-tokenizer", recipe: str = "real") -> str:
    """Windows of learnable text: each document counts up mod VOCAB with a stride of 1, 2 or 3
    from a random start, so the next token is predictable from the two before it."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, VOCAB, (num_windows, 1))
    strides = rng.integers(1, 4, (num_windows, 1))
    tokens = (starts + strides * np.arange(seq_len + 1)) % VOCAB
    writer = store_lib.StoreWriter(path, seq_len)
    writer.append(tokens.astype(np.int32), np.ones_like(tokens, np.int32))
    writer.finish({"tokenizer_fingerprint": fingerprint, "vocab_size": VOCAB, "recipe": recipe,
                   "num_tokens": int(tokens.size)})
    return path


def train_config(argv: list[str]):
    """The TrainConfig `python -m experiments.train ARGV` would run, flags left unparsed after."""
    from experiments import train as train_main

    train_main.FLAGS.unparse_flags()
    train_main.FLAGS(["train", *argv])
    try:
        return train_main.build_config()
    finally:
        train_main.FLAGS.unparse_flags()
