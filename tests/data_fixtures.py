"""Small builders shared by the data tests: labelled window stores and a tiny tokenizer."""
import random

import numpy as np

from megadoc.data import store, tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "12", "3.5", "ünïcødé", "日本語", "data", "run"]


def labelled_store(path, num_windows, seq_len=8, label=0, fingerprint="test"):
    """Window i holds tokens label*1000 + i everywhere, so a batch row names its window."""
    writer = store.StoreWriter(path, seq_len, shard_windows=16)
    tokens = np.repeat(label * 1000 + np.arange(num_windows, dtype=np.int32)[:, None], seq_len + 1, 1)
    writer.append(tokens, np.ones_like(tokens))
    writer.finish({"tokenizer_fingerprint": fingerprint, "num_tokens": num_windows * seq_len,
                   "recipe": "test"})
    return store.open(path)


def random_text(rng: random.Random, n_words: int) -> str:
    seps = [" ", " ", " ", "  ", "\n", "\t", "\n\n"]
    return "".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n_words)).strip()


def corpus(num_docs=40, seed=0):
    rng = random.Random(seed)
    return [{"id": f"doc{i}", "text": random_text(rng, rng.randint(3, 40))} for i in range(num_docs)]


def train_tokenizer(path, texts, vocab_size=400):
    tokenizer.train_sentencepiece(texts, vocab_size, path)
    return tokenizer.load(path)
