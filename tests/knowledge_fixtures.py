"""A tiny pre-trained model for the knowledge-acquisition tests: a random Llama with a
sentencepiece tokenizer trained on the QuALITY fixture's articles, as a Hugging Face directory."""
from __future__ import annotations

import os

import jax
import numpy as np

from megadoc.analysis import quality
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama


def fixture_texts() -> list[str]:
    articles = quality.read_quality(quality.FIXTURE)
    return [a.text for a in articles] + [q.question + " " + " ".join(q.options)
                                         for a in articles for q in a.questions]


def make_hf_model(path: str, max_seq_len: int = 1024, seed: int = 0) -> str:
    tokenizer_lib.train_sentencepiece(fixture_texts() * 4, 700,
                                      os.path.join(path, "tokenizer.model"))
    vocab = tokenizer_lib.load(path).vocab_size
    config = llama.LlamaConfig(vocab_size=vocab, hidden=32, ffn=64, layers=2, heads=4,
                               kv_heads=2, max_seq_len=max_seq_len)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s)).astype(np.float32),
                          llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    hf.save(config, params, path)
    return path
