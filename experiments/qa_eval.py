"""Closed-book or retrieval-augmented accuracy on QuALITY-format questions.

    python -m experiments.qa_eval --model=SmolLM2-135M-Instruct.gguf --quality=QUALITY.jsonl \\
        --mode=closed_book --output=closed_book.json
    python -m experiments.qa_eval --model=gs://b/runs/cpt --quality=QUALITY.jsonl --mode=rag \\
        --top_k=8 --output=gs://b/runs/cpt/rag.json

--model is a .gguf file, a Hugging Face Llama directory or a megadoc workdir (newest
checkpoint); its tokenizer comes with it (a workdir's: the one its stores were prepared with)
unless --tokenizer says otherwise. --scoring=loglikelihood (default) scores each option by its
log-likelihood; --scoring=generate parses the answer letter from a chain-of-thought generation
after worked examples (EntiGraph's protocol, temperature 0.1), the examples as earlier turns of
the model's chat template (megadoc.analysis.quality.cot_messages). Every prompt names the
article (title, author, year where the file has them). RAG retrieves from the whole file's
articles (--scope=corpus) or, as an oracle, the question's own (--scope=article). --split=dev
(tune on it) or test evaluates a fixed part of the articles. Writes {"accuracy", "n",
"attempt_rate", "questions": [{"prompt", "predicted_label", ...}], ...} to --output.
"""
from __future__ import annotations

import json

from absl import app, flags

from megadoc import cli

FLAGS = flags.FlagValues()
_IN = {"flag_values": FLAGS}
flags.DEFINE_string("model", None, ".gguf file, Hugging Face directory or megadoc workdir", **_IN)
flags.DEFINE_string("quality", None, "QuALITY-format JSONL (article, questions, gold_label)",
                    **_IN)
flags.DEFINE_enum("mode", "closed_book", ["closed_book", "rag"], "without the article, or with "
                  "the top-k BM25 chunks", **_IN)
flags.DEFINE_integer("top_k", 8, "rag: chunks of 1,024 characters put in the prompt", **_IN)
flags.DEFINE_enum("scope", "corpus", ["corpus", "article"], "rag: retrieve from every article "
                  "of the file (the knowledge papers' protocol) or, as an oracle, from the "
                  "question's own article only", **_IN)
flags.DEFINE_integer("rerank_from", 0, "rag: rerank this many BM25 candidates by the model's "
                     "log-likelihood of the question after each, keeping --top_k (0: no rerank)",
                     **_IN)
flags.DEFINE_enum("split", "all", ["all", "dev", "test"], "questions of these articles: dev "
                  "(a fixed fifth of the articles, by id; tune on it) or test (the rest)", **_IN)
flags.DEFINE_enum("scoring", "loglikelihood", ["loglikelihood", "generate"], "option "
                  "log-likelihoods, or the letter parsed from a generation", **_IN)
flags.DEFINE_float("temperature", 0.1, "generate: sampling temperature (0: greedy)", **_IN)
flags.DEFINE_integer("max_new_tokens", 256, "generate: tokens per answer", **_IN)
flags.DEFINE_integer("seed", 0, "generate: sampling seed", **_IN)
flags.DEFINE_string("tokenizer", None, "default: the model's own", **_IN)
flags.DEFINE_integer("batch_size", 16, "sequences per forward pass", **_IN)
flags.DEFINE_string("output", None, "JSON results path (local or gs://)", **_IN)


def run(f=FLAGS) -> dict:
    from megadoc import fs
    from megadoc.analysis import benchmarks, quality
    from megadoc.data import tokenizer as tokenizer_lib
    from megadoc.models import sharding
    from megadoc.synth import prompts, sampler
    from megadoc.train import pretrained

    missing = [n for n in ("model", "quality", "output") if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join('--' + n for n in missing)}")
    if f.top_k < 1 or (f.rerank_from and f.rerank_from < f.top_k):
        raise app.UsageError("--top_k must be >= 1, and --rerank_from 0 or at least --top_k")
    articles = quality.read_quality(f.quality)
    tokenizer = tokenizer_lib.load(f.tokenizer or pretrained.tokenizer_path(f.model))
    mesh = sharding.make_mesh()
    config, params = pretrained.load(f.model, mesh)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{f.model}: tokenizer vocab {tokenizer.vocab_size} exceeds the "
                         f"model's {config.vocab_size}")
    if f.scoring == "loglikelihood":
        loglikelihood = benchmarks.model_loglikelihood(config, params, tokenizer,
                                                       batch_size=f.batch_size, mesh=mesh)
        results = quality.evaluate(articles, f.mode, loglikelihood, top_k=f.top_k,
                                   scope=f.scope, split=f.split, rerank_from=f.rerank_from)
    else:
        def generate(conversations):
            ids = sampler.generate(config, params, [quality.encode_cot(tokenizer, c)
                                                    for c in conversations],
                                   max_new_tokens=f.max_new_tokens, temperature=f.temperature,
                                   seed=f.seed, stop_tokens=prompts.stop_tokens(tokenizer),
                                   batch_size=f.batch_size, mesh=mesh)
            return [tokenizer.decode(t) for t in ids]

        reranker = None
        if f.rerank_from:
            reranker = quality.likelihood_reranker(benchmarks.model_loglikelihood(
                config, params, tokenizer, batch_size=f.batch_size, mesh=mesh))
        results = quality.evaluate_generated(articles, f.mode, generate, top_k=f.top_k,
                                             scope=f.scope, split=f.split,
                                             rerank_from=f.rerank_from, reranker=reranker)
    results.update(model=f.model, quality=f.quality)
    fs.write_text(f.output, json.dumps(results, indent=1) + "\n")
    print(f"[qa_eval] {f.mode}: accuracy {results['accuracy']:.4f} (n={results['n']}, "
          f"attempt rate {results['attempt_rate']:.2f}) -> {f.output}", flush=True)
    return results


if __name__ == "__main__":
    cli.run_flags(run, FLAGS)
