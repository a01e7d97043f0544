"""Nearest-neighbour document pairs (Synthetic Bootstrapped Pretraining's step 1): embed every
document with a model megadoc loads, then pair each document with its neighbours whose inner
product clears a threshold.

Embeddings: the model's final hidden states (after its last norm), mean-pooled over the
document's tokens (`BOS text`, the head `max_tokens` kept; a cut document is recorded as
"truncated"). The job is the synthesis job's: shard j holds documents [j*shard_size,
(j+1)*shard_size), written whole with a done marker (megadoc/synth/job.py), so a restart
(after a kill -9 too) redoes only unfinished shards and writes the same bytes. A record:
{"doc_id", "finish_reason": "embedded" | "truncated" | "empty_document", "tokens",
"embedding": base64 of float32 [hidden] (None for an empty document)}.

Pairs: the embeddings are centred on the corpus mean and scaled to unit length, so a score is
a cosine similarity in [-1, 1]; without the centring every pair of a model's mean-pooled states
scores near 1 and a threshold has nothing to separate. Each document's `neighbours` nearest
others are found by faiss (exact inner product; HNSW above EXACT_SEARCH_MAX documents); a pair
(x1 = the document, x2 = a neighbour) is kept when threshold <= score < duplicate_above: a score
near 1 is the same text again (or a near copy), which teaches the conditional model to copy.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.models import llama, sharding
from megadoc.synth import job as job_lib
from megadoc.train import pretrained
from megadoc.train import step as step_lib

EXACT_SEARCH_MAX = 200_000  # documents; an exact search of more costs n^2 dot products
EMBEDDED, TRUNCATED, EMPTY = "embedded", "truncated", "empty_document"
SCORE_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


@dataclasses.dataclass(frozen=True)
class PairsConfig:
    """Embed documents with a model and pair each with its nearest neighbours."""
    model: str
    """the embedding model: a .gguf file, Hugging Face Llama directory or megadoc workdir (the
    base model of SBP)"""
    docs: str
    """source docs {id, text}: JSONL(.gz)/Parquet file, dir or glob"""
    output: str
    """output directory: embeddings/ (sharded, resumable), pairs.jsonl, summary.json"""
    threshold: float = 0.75
    """keep pairs whose score (cosine of centred embeddings) is at least this"""
    duplicate_above: float = 0.98
    """drop pairs scoring at least this: exact or near duplicates"""
    neighbours: int = 8
    """nearest neighbours looked up per document"""
    max_tokens: int = 512
    """tokens of a document embedded (its head; cut documents are counted)"""
    batch_size: int = 16
    """documents embedded together"""
    shard_size: int = 256
    """documents per embedding shard"""
    process_id: int | None = None
    """this process's index (None: jax.process_index()); processes embed disjoint shards"""
    num_processes: int | None = None
    """processes (None: jax.process_count())"""

    def __post_init__(self):
        if not -1 <= self.threshold < self.duplicate_above <= 1:
            raise ValueError(f"need -1 <= threshold < duplicate_above <= 1, got "
                             f"{self.threshold} and {self.duplicate_above}")
        for name in ("neighbours", "max_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def embeddings_dir(output: str) -> str:
    return fs.join(output, "embeddings")


class _ShardRunner:
    """This process's embedding shards, run by the synthesis job's shard machinery
    (megadoc/synth/job.py: layout, done markers, settings check, summary). The one place this
    module touches that job, so a change to its shard runner is a change here alone."""

    def __init__(self, out: str, settings: dict, num_docs: int, shard_size: int,
                 process_index: int, process_count: int):
        self.out, self.num_shards = out, math.ceil(num_docs / shard_size)
        fs.makedirs(fs.join(out, "_job"))
        job_lib.check_job_config(fs.join(out, "_job", "config.json"), settings)
        self.mine = job_lib.owned_shards(self.num_shards, process_index, process_count)
        done = job_lib.finished_shards(out, self.mine, settings)
        self.todo = [j for j in self.mine if j not in done]
        self._shards = job_lib.ShardWriter(out, {j: min(shard_size, num_docs - j * shard_size)
                                                 for j in self.todo}, settings)

    def add(self, shard: int, position: int, record: dict) -> None:
        """One document's record; a shard is written (then its marker) once it is complete."""
        self._shards.add(shard, (position,), record, 0, 0)

    def summary(self, extra: dict) -> dict:
        return job_lib.summary(self.out, self.num_shards, {}, {
            "shards_written_now": len(self._shards.written), **extra})

    @staticmethod
    def records(out: str, num_shards: int):
        """Every record of finished shards, in order; refuses an unfinished shard."""
        for j in range(num_shards):
            problem = job_lib.shard_problem(out, j)
            if problem:
                raise ValueError(f"{out}: embedding shard {j} is not finished ({problem}); run "
                                 f"the pairs command again to finish it")
            for line in fs.read_text(job_lib.shard_path(out, j)).splitlines():
                yield json.loads(line)


def _pooler(config: llama.LlamaConfig, mesh):
    """`pool(params, (tokens_BxT, mask_BxT)) -> [B, H]` fp32 mean of the final hidden states over
    the positions the mask marks."""
    def pool(params, rows):
        tokens_BxT, mask_BxT = rows
        hidden_BxTxH = llama.hidden_states(config, params, tokens_BxT).astype(jnp.float32)
        weights_BxT = mask_BxT.astype(jnp.float32)
        total_BxH = jnp.einsum("bth,bt->bh", hidden_BxTxH, weights_BxT)
        return total_BxH / jnp.maximum(weights_BxT.sum(-1, keepdims=True), 1.0)
    return step_lib.make_row_scorer(pool, llama.param_shardings(config, mesh), mesh)


def _encode(tokenizer, text: str, max_tokens: int) -> tuple[list[int], bool]:
    ids = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(text)
    return ids[:max_tokens], len(ids) > max_tokens


def embed(cfg: PairsConfig) -> dict:
    """Embed (or resume embedding) this process's shards; returns the embedding summary."""
    start = time.time()
    out = embeddings_dir(cfg.output)
    process_index = jax.process_index() if cfg.process_id is None else cfg.process_id
    process_count = jax.process_count() if cfg.num_processes is None else cfg.num_processes
    fs.check_writable(out)
    bad = docs_lib.BadRecords()
    num_docs = sum(1 for _ in docs_lib.read_docs(cfg.docs, bad))
    mesh = sharding.make_mesh(devices=jax.local_devices())
    config, params = pretrained.load(cfg.model, mesh)
    tokenizer = pretrained.load_tokenizer(cfg.model)
    max_tokens = min(cfg.max_tokens, config.max_seq_len)
    shards = _ShardRunner(out, {
        "method": "embed", "model": cfg.model, "tokenizer_fingerprint": tokenizer.fingerprint,
        "max_tokens": max_tokens, "batch_size": cfg.batch_size, "shard_size": cfg.shard_size,
        "num_docs": num_docs}, num_docs, cfg.shard_size, process_index, process_count)
    print(f"[pairs] {num_docs} docs in {shards.num_shards} embedding shards; process "
          f"{process_index}/{process_count} owns {len(shards.mine)}, "
          f"{len(shards.mine) - len(shards.todo)} already done", flush=True)
    pool = _pooler(config, mesh)
    batch = -(-cfg.batch_size // len(mesh.devices.flat)) * len(mesh.devices.flat)
    pending: list[tuple] = []  # (shard, position, doc_id, ids, truncated)

    def flush():
        tokens = np.zeros((batch, max_tokens), np.int32)  # one shape: one compile
        mask = np.zeros((batch, max_tokens), np.int32)
        for r, (*_, ids, _) in enumerate(pending):
            tokens[r, :len(ids)], mask[r, :len(ids)] = ids, 1
        vectors = np.asarray(jax.device_get(pool(params, (tokens, mask))), np.float32)
        for (shard, pos, doc_id, ids, cut), v in zip(pending, vectors):
            shards.add(shard, pos, {"doc_id": doc_id, "finish_reason": TRUNCATED if cut else
                                    EMBEDDED, "tokens": len(ids),
                                    "embedding": base64.b64encode(v.tobytes()).decode()})
        pending.clear()

    todo_set = set(shards.todo)
    for i, doc in enumerate(docs_lib.read_docs(cfg.docs)):
        shard, pos = divmod(i, cfg.shard_size)
        if shard not in todo_set:
            continue
        if pending and (len(pending) == batch or pending[0][0] != shard):
            flush()  # a batch never spans two shards: a shard's bytes never depend on another
        if doc["text"].strip():
            pending.append((shard, pos, doc["id"], *_encode(tokenizer, doc["text"], max_tokens)))
        else:
            shards.add(shard, pos, {"doc_id": doc["id"], "finish_reason": EMPTY, "tokens": 0,
                                    "embedding": None})
    if pending:
        flush()
    summary = shards.summary({"process_index": process_index,
                              "elapsed_s": round(time.time() - start, 1),
                              "bad_input_records": bad.as_dict()})
    fs.write_text(fs.join(out, "summary.json"), json.dumps(summary, indent=1))
    return summary


def read_embeddings(output: str) -> tuple[list[str], np.ndarray]:
    """(doc ids, float32 [n, hidden]) of every embedded document, in input order; refuses an
    unfinished embedding job."""
    out = embeddings_dir(output)
    settings = json.loads(fs.read_text(fs.join(out, "_job", "config.json")))
    num_shards = math.ceil(settings["num_docs"] / settings["shard_size"])
    ids, vectors = [], []
    for record in _ShardRunner.records(out, num_shards):
        if record["embedding"] is not None:
            ids.append(record["doc_id"])
            vectors.append(np.frombuffer(base64.b64decode(record["embedding"]), np.float32))
    return ids, np.stack(vectors)


def neighbour_scores(vectors_NxH: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N, k], indices [N, k]) of each row's k nearest other rows by the cosine of the
    centred vectors, best first (index -1 where there are fewer than k others)."""
    import faiss  # the pairs step's own dependency; nothing else in megadoc needs it

    x = vectors_NxH - vectors_NxH.mean(axis=0, keepdims=True)
    x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12),
                             np.float32)
    n, dim = x.shape
    index = (faiss.IndexFlatIP(dim) if n <= EXACT_SEARCH_MAX
             else faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))
    index.add(x)
    scores, found = index.search(x, min(k + 1, n))
    keep = found != np.arange(n)[:, None]  # a row is not its own neighbour (duplicates are)
    out_s, out_i = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    for r in range(n):
        s, i = scores[r][keep[r] & (found[r] >= 0)][:k], found[r][keep[r] & (found[r] >= 0)][:k]
        out_s[r, :len(s)], out_i[r, :len(i)] = s, i
    return out_s, out_i


def _quantiles(values: np.ndarray) -> dict:
    if not len(values):
        return {}
    return {f"q{q:g}": round(float(v), 4) for q, v in zip(SCORE_QUANTILES,
                                                         np.quantile(values, SCORE_QUANTILES))}


def find_pairs(cfg: PairsConfig) -> dict:
    """pairs.jsonl from the finished embeddings; returns the summary (also summary.json) with
    the distribution of neighbour scores and what the threshold and duplicate cut removed."""
    ids, vectors = read_embeddings(cfg.output)
    scores, found = neighbour_scores(vectors, cfg.neighbours)
    valid = found >= 0
    duplicate = valid & (scores >= cfg.duplicate_above)
    kept = valid & ~duplicate & (scores >= cfg.threshold)
    rows, cols = np.nonzero(kept)
    records = [{"x1": ids[r], "x2": ids[found[r, c]], "score": round(float(scores[r, c]), 6)}
               for r, c in zip(rows, cols)]
    docs_lib.write_jsonl(fs.join(cfg.output, "pairs.jsonl"), records)
    hist, edges = np.histogram(scores[valid], bins=20, range=(-1.0, 1.0))
    summary = {
        "documents": len(ids), "neighbours_per_document": cfg.neighbours,
        "threshold": cfg.threshold, "duplicate_above": cfg.duplicate_above,
        "pairs": len(records), "duplicates_excluded": int(duplicate.sum()),
        "below_threshold": int((valid & ~duplicate & ~kept).sum()),
        "documents_with_a_pair": int(kept.any(axis=1).sum()),
        "neighbour_scores": _quantiles(scores[valid]),
        "pair_scores": _quantiles(scores[kept]),
        "neighbour_score_histogram": {"edges": [round(float(e), 2) for e in edges],
                                      "counts": hist.tolist()},
        "search": "exact" if len(ids) <= EXACT_SEARCH_MAX else "hnsw"}
    fs.write_text(fs.join(cfg.output, "summary.json"), json.dumps(summary, indent=1))
    print(f"[pairs] {summary['pairs']} pairs over {summary['documents']} documents "
          f"({summary['duplicates_excluded']} duplicates excluded); scores "
          f"{summary['neighbour_scores']}", flush=True)
    return summary


def run(cfg: PairsConfig) -> dict:
    """Embed (resumable), then pair once every process's shards are done: the pairs command.
    With several processes, the one that finishes last (or a rerun) writes the pairs."""
    embedded = embed(cfg)
    if embedded["shards_done"] < embedded["shards_total"]:
        print(f"[pairs] {embedded['shards_done']}/{embedded['shards_total']} embedding shards "
              f"done; the other processes' are still to come: rerun to pair", flush=True)
        return embedded
    return find_pairs(cfg)
