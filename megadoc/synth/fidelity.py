"""Fidelity and diversity of rephrases, measured by the generator that wrote them.

    fidelity = 1/|s| · Σ_t [log p(s_t | rephrase, s_<t) − log p(s_t | s_<t)]

in nats per source token, under the generator: how much reading the rephrase helps it predict
the source document. Why this score: it needs only the model the job already holds (no second
model to load or ship); it measures content, not style (a faithful rephrase in any style makes
the source's names, numbers and claims predictable, an off-topic one does not); and subtracting
the source's own log-likelihood removes how predictable the source is by itself (code against
prose), so one `prepare --min_fidelity` threshold means the same for every document. 0: the
rephrase tells the generator nothing about the source; below 0: it misleads. A verbatim copy
scores highest, which is what `source_overlap` (data/overlap.py) is for. The record also keeps
`fidelity_logprob`, the first term alone. A rephrase written chunk by chunk is scored chunk
against chunk, the chunks weighted by their source tokens.

The conditioned sequence is BOS, the rephrase, a blank line, then the source; the unconditioned
one BOS then the source (EOS stands in for BOS in a tokenizer without one); the source tokens
are the same in both.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from megadoc.data import overlap
from megadoc.models import llama

TOKENS_PER_BATCH = 2048  # bounds the logits in memory: batch x length x vocabulary floats


def _summed_logprobs(config, params, tokens_BxT, targets_BxT, mask_BxT):
    logits_BxTxV = llama.forward(config, params, tokens_BxT).astype(jnp.float32)
    target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    logprob_BxT = target_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)
    return jnp.sum(jnp.where(mask_BxT, logprob_BxT, 0.0), axis=-1)


@functools.lru_cache(maxsize=4)
def _compiled(config):
    return jax.jit(functools.partial(_summed_logprobs, config))


class Scorer:
    """Scores rephrases against their sources with a generator's weights and tokenizer."""

    def __init__(self, config, params, tokenizer, *, mesh=None,
                 tokens_per_batch: int = TOKENS_PER_BATCH):
        self.config, self.params, self.tokenizer, self.mesh = config, params, tokenizer, mesh
        self.tokens_per_batch = tokens_per_batch
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        self.prefix = [prefix]

    def continuation_logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list:
        """Summed log-prob of each continuation after its context; None where the whole does
        not fit in the generator's context (never scored on a cut sequence)."""
        max_len = self.config.max_seq_len
        out: list = [None] * len(pairs)
        fits = [i for i, (c, s) in enumerate(pairs) if len(c) + len(s) <= max_len and s]
        fits.sort(key=lambda i: -sum(map(len, pairs[i])))
        start = 0
        while start < len(fits):
            T = min(max(16, 1 << (sum(map(len, pairs[fits[start]])) - 2).bit_length()), max_len)
            rows = max(1, self.tokens_per_batch // T)
            idx = fits[start:start + rows]
            tokens, targets = np.zeros((rows, T), np.int32), np.zeros((rows, T), np.int32)
            mask = np.zeros((rows, T), bool)
            for r, i in enumerate(idx):
                context, cont = pairs[i]
                seq = list(context) + list(cont)
                n = len(seq) - 1
                tokens[r, :n], targets[r, :n] = seq[:-1], seq[1:]
                mask[r, n - len(cont):n] = True
            sums = self._call(tokens, targets, mask)
            for r, i in enumerate(idx):
                out[i] = float(sums[r])
            start += rows
        return out

    def _call(self, *rows):
        fn = _compiled(self.config)
        if self.mesh is None:
            return np.asarray(fn(self.params, *rows))
        with jax.set_mesh(self.mesh):
            return np.asarray(fn(self.params, *rows))

    def fidelity(self, items: list[list[tuple[str, str]]]) -> list[tuple[float, float] | None]:
        """(fidelity, fidelity_logprob) of each item, a list of (rephrase, source) pieces (one
        piece, or one per chunk); None where a piece cannot be scored whole."""
        encode = self.tokenizer.encode
        pieces = [(r, s) for item in items for r, s in item]
        sources = {s: encode(s) for _, s in pieces}
        conditioned = [(self.prefix + encode(r + "\n\n"), sources[s]) for r, s in pieces]
        plain = list(sources)
        scores = self.continuation_logprobs(
            conditioned + [(self.prefix, sources[s]) for s in plain])
        alone = dict(zip(plain, scores[len(conditioned):]))
        out, at = [], 0
        for item in items:
            parts = list(zip(item, scores[at:at + len(item)]))
            at += len(item)
            if not parts or any(c is None or alone[s] is None for (_, s), c in parts):
                out.append(None)
                continue
            tokens = sum(len(sources[s]) for (_, s), _ in parts)
            with_it = sum(c for _, c in parts) / tokens
            without = sum(alone[s] for (_, s), _ in parts) / tokens
            out.append((round(with_it - without, 4), round(with_it, 4)))
        return out


def _pieces(record: dict, source: str) -> list[tuple[str, str]]:
    """(rephrase, source) pieces to score: the whole, or each chunk of a chunked rewrite."""
    chunks = record.get("chunks")
    if not chunks:
        return [(record["text"], source)]
    return [(record["text"][c["text_start"]:c["text_end"]],
             source[c["source_start"]:c["source_end"]]) for c in chunks]


def annotate(scorer: Scorer, records: list[dict], sources: dict[str, str]) -> dict:
    """Adds `fidelity`, `fidelity_logprob`, `max_similarity` and `source_overlap` to each
    rephrase record in place (None where it has no text or cannot be scored), and returns the
    values for the job's summary: per record, and per document its generations' mean pairwise
    similarity and near-duplicate count."""
    scored = [r for r in records if r["text"]]
    results = scorer.fidelity([_pieces(r, sources[r["doc_id"]]) for r in scored])
    for r in records:
        r.update(fidelity=None, fidelity_logprob=None, max_similarity=None, source_overlap=None)
    for r, result in zip(scored, results):
        if result is not None:
            r["fidelity"], r["fidelity_logprob"] = result
    stats = {"fidelity": [], "max_similarity": [], "source_overlap": [],
             "mean_pairwise_similarity": [], "near_duplicates": 0}
    by_doc: dict[str, list[dict]] = {}
    for r in scored:
        by_doc.setdefault(r["doc_id"], []).append(r)
    for doc_id, rs in by_doc.items():
        per, doc = overlap.generation_stats(sources[doc_id], [r["text"] for r in rs])
        for r, p in zip(rs, per):
            r.update(p)
        if doc["mean_pairwise_similarity"] is not None:
            stats["mean_pairwise_similarity"].append(doc["mean_pairwise_similarity"])
        stats["near_duplicates"] += doc["near_duplicates"]
    for r in scored:
        for name in ("fidelity", "max_similarity", "source_overlap"):
            if r[name] is not None:
                stats[name].append(r[name])
    return stats


def summarize(stats: list[dict]) -> dict:
    """The distributions of `annotate`'s values over every finished shard."""
    out = {name: overlap.distribution([v for s in stats for v in s[name]])
           for name in ("fidelity", "max_similarity", "source_overlap",
                        "mean_pairwise_similarity")}
    out["near_duplicate_generations"] = sum(s["near_duplicates"] for s in stats)
    return out
