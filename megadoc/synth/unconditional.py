"""Unconditional documents from trained students: the synthetic data of self-distillation (the
megadocs paper §5: "generated unconditionally from a previously trained model of the same
architecture and data") and of ensemble distillation (the infinite-compute paper).

Every document starts from the token that begins a document in the training stream (BOS, or EOS
for a tokenizer without one) and ends at EOS or after `max_new_tokens`. With K members the next
token is drawn from softmax(mean of the K members' logits), each member keeping its own KV cache.

Output: the synthesis job's layout and records (megadoc/synth/job.py): shard-NNNNN.jsonl of
{"doc_id": "unconditional-<i>", "method": "unconditional", "sample": 0, "offset": None, "text",
"finish_reason", "seed", "generator", "template": None}, done markers, _job/config.json and
summary.json. Document i draws from the stream of key i alone, so a restart redoes only the
shards without a marker and writes the same text.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.models import llama
from megadoc.synth import job as job_lib
from megadoc.synth import sampler as sampler_lib

METHOD = "unconditional"


@dataclasses.dataclass(frozen=True)
class UnconditionalConfig:
    output: str
    generator: str  # the members' workdirs, comma-separated (recorded with every record)
    num_documents: int
    """unconditional: documents to draw"""
    max_new_tokens: int = 1024
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 64  # documents decoded together
    shard_size: int = 256  # documents per output shard

    def __post_init__(self):
        for name in ("num_documents", "max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _draw(config: llama.LlamaConfig, max_new: int, temperature: float, stop_id: int,
          stacked: dict, start_id, keys_Bx2):
    """[B, max_new] tokens and [B] counts (tokens before the stop token, or max_new)."""
    members = jax.tree.leaves(stacked)[0].shape[0]
    batch = keys_Bx2.shape[0]
    cache = llama.init_cache(config, batch, max_new)
    caches = jax.tree.map(lambda c: jnp.broadcast_to(c, (members, *c.shape)), cache)
    keys = jax.random.wrap_key_data(keys_Bx2, impl="threefry2x32")

    def member_logits(params, cache, tokens_Bx1, positions_Bx1):
        logits_Bx1xV, cache = llama.forward(config, params, tokens_Bx1, positions=positions_Bx1,
                                            cache=cache)
        return logits_Bx1xV[:, 0], cache

    def step(carry, t):
        caches, last_B, stopped_B = carry
        positions_Bx1 = jnp.full((batch, 1), t, jnp.int32)
        logits_KxBxV, caches = jax.vmap(member_logits, in_axes=(0, 0, None, None))(
            stacked, caches, last_B[:, None], positions_Bx1)
        logits_BxV = jnp.mean(logits_KxBxV.astype(jnp.float32), axis=0)
        if temperature == 0:
            token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        else:
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
            token_B = jax.vmap(jax.random.categorical)(step_keys, logits_BxV / temperature)
        stopped_B = stopped_B | (token_B == stop_id)
        return (caches, token_B.astype(jnp.int32), stopped_B), (token_B, stopped_B)

    start_B = jnp.full((batch,), start_id, jnp.int32)
    _, (tokens_TxB, stopped_TxB) = jax.lax.scan(
        step, (caches, start_B, jnp.zeros((batch,), bool)), jnp.arange(max_new))
    counts_B = jnp.sum(~stopped_TxB, axis=0)
    return tokens_TxB.T, counts_B


def sample_documents(config: llama.LlamaConfig, stacked: dict, tokenizer, keys: list[int], *,
                     max_new_tokens: int, temperature: float, seed: int) -> list[tuple]:
    """(text, finish_reason, generated tokens) of one document per key, from the members in
    `stacked` (leaves with a leading member axis)."""
    max_new = min(max_new_tokens, config.max_seq_len - 1)  # the start token takes one slot
    start = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id
    root = jax.random.PRNGKey(seed)
    keys_B = jnp.asarray(np.asarray(keys, np.int64) & 0xFFFFFFFF, jnp.uint32)
    keys_Bx2 = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root, keys_B)
    tokens_BxT, counts_B = jax.device_get(_draw(config, max_new, float(temperature),
                                                tokenizer.eos_id, stacked, start, keys_Bx2))
    out = []
    for row, n in zip(tokens_BxT, counts_B):
        reason = sampler_lib.FINISH_STOP if n < max_new else sampler_lib.FINISH_LENGTH
        out.append((tokenizer.decode(row[:n].tolist()), reason, int(n)))
    return out


def run(cfg: UnconditionalConfig, model_config: llama.LlamaConfig, stacked: dict,
        tokenizer) -> dict:
    """Sample (or resume) every shard; returns the summary also written to summary.json."""
    start = time.time()
    fs.check_writable(cfg.output)
    fs.makedirs(fs.join(cfg.output, "_job"))
    members = jax.tree.leaves(stacked)[0].shape[0]
    _check_settings(fs.join(cfg.output, "_job", "config.json"), {
        "method": METHOD, "generator": cfg.generator, "members": members, "seed": cfg.seed,
        "num_documents": cfg.num_documents, "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature, "shard_size": cfg.shard_size,
        "tokenizer_fingerprint": tokenizer.fingerprint})
    num_shards = -(-cfg.num_documents // cfg.shard_size)
    todo = [j for j in range(num_shards) if not fs.exists(job_lib.marker_path(cfg.output, j))]
    print(f"[synth] {cfg.num_documents} unconditional documents from {members} member(s) in "
          f"{num_shards} shards, {num_shards - len(todo)} already done", flush=True)
    stacked = jax.device_put(stacked)
    for j in todo:
        ids = range(j * cfg.shard_size, min((j + 1) * cfg.shard_size, cfg.num_documents))
        drawn = []
        for b in range(0, len(ids), cfg.batch_size):
            keys = list(ids[b:b + cfg.batch_size])
            keys += [keys[-1]] * (cfg.batch_size - len(keys))  # a full batch: one compile
            drawn += sample_documents(model_config, stacked, tokenizer, keys,
                                      max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.temperature, seed=cfg.seed)
        drawn = drawn[:len(ids)]
        records = [dict(doc_id=f"{METHOD}-{i:08d}", method=METHOD, sample=0, offset=None,
                        text=text, finish_reason=reason, seed=cfg.seed, generator=cfg.generator,
                        template=None) for i, (text, reason, _) in zip(ids, drawn)]
        docs_lib.write_jsonl(job_lib.shard_path(cfg.output, j), records)
        counts = collections.Counter(r["finish_reason"] for r in records)
        fs.write_text(job_lib.marker_path(cfg.output, j), json.dumps(
            {"records": len(records), "finish_reason": dict(counts),
             "generated_tokens": sum(n for _, _, n in drawn)}))
        print(f"[synth] shard {j + 1}/{num_shards} written ({time.time() - start:.0f}s)",
              flush=True)
    summary = {"method": METHOD, "members": members, "shards_total": num_shards,
               "records": cfg.num_documents, "elapsed_s": round(time.time() - start, 1)}
    fs.write_text(fs.join(cfg.output, "summary.json"), json.dumps(summary, indent=1))
    return summary


def _check_settings(path: str, settings: dict) -> None:
    """First run: record the settings; a restart with other settings would mix two samples."""
    if not fs.exists(path):
        fs.write_text(path, json.dumps(settings, indent=1, sort_keys=True))
        return
    old = json.loads(fs.read_text(path))
    if old != settings:
        changed = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
                            if old.get(k) != v)
        raise ValueError(f"{path}: this output directory was written with other settings "
                         f"({changed}); use a new --output or the original settings")
