"""Fixtures of the SBP tests: a model whose embeddings see shared tokens, and a corpus of
planted paraphrase pairs."""
import os
import re

import jax
import numpy as np

from megadoc.analysis import quality
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama
from knowledge_fixtures import fixture_texts


def make_embedding_model(path: str) -> str:
    """A Llama whose layers barely touch the residual stream (weights ~0.01, embeddings ~1):
    its mean-pooled states are close to a bag of its token embeddings, so texts sharing most of
    their tokens embed close together, as a trained model's paraphrases do."""
    tokenizer_lib.train_sentencepiece(fixture_texts() * 4, 700,
                                      os.path.join(path, "tokenizer.model"))
    config = llama.LlamaConfig(vocab_size=tokenizer_lib.load(path).vocab_size, hidden=64,
                               ffn=128, layers=2, heads=4, kv_heads=2, max_seq_len=256)
    rng = np.random.default_rng(0)
    shapes = llama.param_shapes(config)
    params = jax.tree.map(lambda s: (0.01 * rng.standard_normal(s)).astype(np.float32), shapes,
                          is_leaf=lambda x: isinstance(x, tuple))
    params["embed"] = rng.standard_normal(shapes["embed"]).astype(np.float32)
    for norm in ("attn_norm", "mlp_norm"):
        params["layers"][norm] = np.ones(shapes["layers"][norm], np.float32)
    params["final_norm"] = np.ones(shapes["final_norm"], np.float32)
    hf.save(config, params, path)
    return path


def planted_corpus() -> tuple[list[dict], set]:
    """Paragraph a_i and its paraphrase b_i (its sentences shuffled, one dropped), for each
    paragraph of the QuALITY fixture, and dup0: a_0 again under another id."""
    paragraphs = [p for a in quality.read_quality(quality.FIXTURE) for p in a.text.split("\n\n")]
    rng = np.random.default_rng(1)
    docs = []
    for i, p in enumerate(paragraphs):
        sentences = re.split(r"(?<=[.!?])\s+", p)
        kept = [sentences[j] for j in rng.permutation(len(sentences))][:max(2, len(sentences) - 1)]
        docs += [{"id": f"a{i}", "text": p}, {"id": f"b{i}", "text": " ".join(kept)}]
    docs.append({"id": "dup0", "text": paragraphs[0]})
    planted = {(f"a{i}", f"b{i}") for i in range(len(paragraphs))}
    return docs, planted | {(b, a) for a, b in planted}
