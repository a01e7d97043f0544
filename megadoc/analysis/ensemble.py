"""Ensembles of K students: params stacked on a leading member axis, logits averaged.

Members run one after another under `lax.scan` over the stacked params (one compile whatever K)
and their outputs are accumulated, rather than `vmap`-ed side by side: the result is the same,
but only one member's [B, T, V] logits are live at a time instead of K of them, which is what
bounds the batch at the papers' vocabulary of 128k.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.models import llama, sharding

AVERAGES = ("logits", "probs")


def stack_params(members: Sequence[dict], names: Sequence[str] | None = None) -> dict:
    """One param tree (host numpy) whose leaves carry a leading [K] member axis."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    names = list(names) if names is not None else [f"member {i}" for i in range(len(members))]
    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): np.shape(x) for path, x in leaves}

    ref = shapes(members[0])
    for name, member in zip(names[1:], members[1:]):
        got = shapes(member)
        for key in sorted(set(ref) | set(got)):
            if ref.get(key) != got.get(key):
                raise ValueError(
                    f"ensemble member {name!r}: tensor {key} has shape "
                    f"{got.get(key, 'missing')}, but {names[0]!r} has {ref.get(key, 'missing')}"
                )
    # Stacked on the host: the caller places the K-fold tree straight into its sharding
    # (`stacked_shardings`), never whole on one device.
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *members)


def num_members(stacked: dict) -> int:
    return jax.tree.leaves(stacked)[0].shape[0]


def ensemble_logits(config: llama.LlamaConfig, stacked: dict, tokens_BxT, segment_ids_BxT=None,
                    *, average: str = "logits"):
    """[B, T, V] fp32 logits whose softmax is the ensemble's next-token distribution: the mean of
    the members' logits ("logits"), or the log of the mean of their probabilities ("probs")."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    k = num_members(stacked)

    def add_member(acc_BxTxV, params):
        logits_BxTxV = llama.forward(config, params, tokens_BxT, segment_ids_BxT)
        if average == "logits":
            return acc_BxTxV + logits_BxTxV, None
        return jnp.logaddexp(acc_BxTxV, jax.nn.log_softmax(logits_BxTxV, axis=-1)), None

    B, T = tokens_BxT.shape
    empty = 0.0 if average == "logits" else -jnp.inf
    init = jnp.full((B, T, config.vocab_size), empty, jnp.float32)
    acc_BxTxV, _ = jax.lax.scan(add_member, init, stacked)
    return acc_BxTxV / k if average == "logits" else acc_BxTxV - math.log(k)


def token_losses(config, stacked, tokens_BxW, segment_ids_BxW, average="logits"):
    """The ensemble's next-token loss per position, fp32 [B, W-1]; windows hold seq_len+1 tokens."""
    logits_BxTxV = ensemble_logits(config, stacked, tokens_BxW[:, :-1], segment_ids_BxW[:, :-1],
                                   average=average)
    target_BxT = jnp.take_along_axis(logits_BxTxV, tokens_BxW[:, 1:, None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BxTxV, axis=-1) - target_BxT


def stacked_shardings(config: llama.LlamaConfig, mesh) -> dict:
    """Each member laid out as a single model would be; the member axis is not split."""
    return jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)),
                        sharding.param_shardings(config, mesh))


def _global_batch(x: np.ndarray, sh: NamedSharding) -> jax.Array:
    # Every process holds the whole (small) eval batch and hands each device its block.
    return jax.make_array_from_callback(x.shape, sh, lambda index: x[index])


def ensemble_loss(config: llama.LlamaConfig, stacked: dict, store, batch_size: int, mesh=None,
                  *, average: str = "logits") -> float:
    """Mean next-token loss of the ensemble over every window of a store (as
    `megadoc.train.evaluate.eval_loss` is for one model); members and batch sharded over `mesh`,
    `batch_size` rounded up to a multiple of the mesh's batch shards."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    batch_sh = sharding.batch_sharding(mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-batch_size // shards) * shards  # rounded up to fill every batch shard
    if len(store) == 0:
        raise ValueError("ensemble_loss: the store has no windows")
    stacked = jax.device_put(stacked, stacked_shardings(config, mesh))
    weight_sh = NamedSharding(mesh, P(batch_sh.spec[0]))

    @jax.jit
    def batch_loss(stacked, tokens_BxW, segment_ids_BxW, weights_B):
        losses_BxT = token_losses(config, stacked, tokens_BxW, segment_ids_BxW, average)
        per_window_B = jnp.mean(losses_BxT, axis=-1)
        return jnp.sum(per_window_B * weights_B)

    total = 0.0
    n = len(store)
    t0 = last_log = time.time()
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        rows = store.read(idx)
        pad = batch_size - len(idx)
        tokens = np.pad(rows["tokens"], ((0, pad), (0, 0)))
        segs = np.pad(rows["segment_ids"], ((0, pad), (0, 0)))
        weights = np.array([1.0] * len(idx) + [0.0] * pad, np.float32)
        with jax.set_mesh(mesh):
            total += float(batch_loss(
                stacked, _global_batch(tokens, batch_sh), _global_batch(segs, batch_sh),
                _global_batch(weights, weight_sh)))
        done = start + len(idx)
        if time.time() - last_log > 30 or done == n:
            last_log, rate = time.time(), done / max(time.time() - t0, 1e-9)
            print(f"[ensemble] {done}/{n} windows, {rate * tokens.shape[1]:.0f} tokens/s, "
                  f"ETA {(n - done) / rate:.0f}s", flush=True)
    return total / n
