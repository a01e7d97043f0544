"""Closed-book or retrieval-augmented accuracy of one model on QuALITY-format questions:
option log-likelihoods, or the answer letter parsed from a chain-of-thought generation
(megadoc.analysis.quality)."""
from __future__ import annotations

import dataclasses
import json

from megadoc import fs
from megadoc.analysis import benchmarks, quality

MODES, SCOPES, SPLITS = quality.MODES, quality.SCOPES, quality.SPLITS
SCORINGS = ("loglikelihood", "generate")


@dataclasses.dataclass(frozen=True)
class QaEvalConfig:
    """Which model, which questions, how they are asked and scored."""
    model: str
    """.gguf file, Hugging Face directory or megadoc workdir"""
    quality: str
    """QuALITY-format JSONL (article, questions, gold_label)"""
    output: str
    """JSON results path (local or gs://)"""
    mode: str = "closed_book"
    """closed_book: without the article; rag: with the top BM25 chunks"""
    rag_chunks: int = 8
    """rag: chunks of 1,024 characters put in the prompt"""
    scope: str = "corpus"
    """rag: retrieve from every article of the file (the knowledge papers' protocol) or, as an
    oracle, from the question's own article only"""
    rerank_from: int = 0
    """rag: rerank this many BM25 candidates by the model's log-likelihood of the question after
    each, keeping rag_chunks (0: no rerank)"""
    split: str = "all"
    """questions of these articles: dev (a fixed fifth of the articles, by id; tune on it), test
    (the rest) or all"""
    scoring: str = "loglikelihood"
    """loglikelihood: option log-likelihoods; generate: the letter parsed from a generation"""
    temperature: float = 0.1
    """generate: sampling temperature (0: greedy)"""
    max_new_tokens: int = 256
    """generate: tokens per answer"""
    seed: int = 0
    """generate: sampling seed"""
    tokenizer: str | None = None
    """the model's tokenizer (default: the model's own)"""
    batch_size: int = 16
    """sequences per forward pass"""

    def __post_init__(self):
        if self.rag_chunks < 1:
            raise ValueError(f"rag_chunks must be >= 1, got {self.rag_chunks}")
        if self.rerank_from and self.rerank_from < self.rag_chunks:
            raise ValueError(f"rerank_from must be 0 or at least rag_chunks ({self.rag_chunks}), "
                             f"got {self.rerank_from}")
        for name, known in (("mode", MODES), ("scoring", SCORINGS), ("scope", SCOPES),
                            ("split", SPLITS)):
            if getattr(self, name) not in known:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {known}")


def run(cfg: QaEvalConfig) -> dict:
    """{"accuracy", "n", "attempt_rate", "questions": [...], ...}, also written to cfg.output."""
    from megadoc.models import sharding
    from megadoc.synth import prompts, sampler
    from megadoc.train import pretrained

    articles = quality.read_quality(cfg.quality)
    tokenizer = pretrained.load_tokenizer(cfg.model, cfg.tokenizer)
    mesh = sharding.make_mesh()
    config, params = pretrained.load(cfg.model, mesh)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{cfg.model}: tokenizer vocab {tokenizer.vocab_size} exceeds the "
                         f"model's {config.vocab_size}")
    if cfg.scoring == "loglikelihood":
        loglikelihood = benchmarks.model_loglikelihood(config, params, tokenizer,
                                                       batch_size=cfg.batch_size, mesh=mesh)
        results = quality.evaluate(articles, cfg.mode, loglikelihood, top_k=cfg.rag_chunks,
                                   scope=cfg.scope, split=cfg.split, rerank_from=cfg.rerank_from)
    else:
        def generate(conversations):
            ids = sampler.generate(config, params, [quality.encode_cot(tokenizer, c)
                                                    for c in conversations],
                                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   seed=cfg.seed, stop_tokens=prompts.stop_tokens(tokenizer),
                                   batch_size=cfg.batch_size, mesh=mesh)
            return [tokenizer.decode(t) for t in ids]

        reranker = None
        if cfg.rerank_from:
            reranker = quality.likelihood_reranker(benchmarks.model_loglikelihood(
                config, params, tokenizer, batch_size=cfg.batch_size, mesh=mesh))
        results = quality.evaluate_generated(articles, cfg.mode, generate, top_k=cfg.rag_chunks,
                                             scope=cfg.scope, split=cfg.split,
                                             rerank_from=cfg.rerank_from, reranker=reranker)
    results.update(model=cfg.model, quality=cfg.quality)
    fs.write_text(cfg.output, json.dumps(results, indent=1) + "\n")
    print(f"[qa_eval] {cfg.mode}: accuracy {results['accuracy']:.4f} (n={results['n']}, "
          f"attempt rate {results['attempt_rate']:.2f}) -> {cfg.output}", flush=True)
    return results
