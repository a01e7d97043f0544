"""Ensembles of K students: params stacked on a leading member axis, logits averaged.

Members run one after another under `lax.scan` over the stacked params (one compile whatever K)
and their outputs are accumulated, rather than `vmap`-ed side by side: the result is the same,
but only one member's [B, T, V] logits are live at a time instead of K of them, which is what
bounds the batch at the papers' vocabulary of 128k.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.models import llama, sharding
from megadoc.train import evaluate, pretrained
from megadoc.train import step as step_lib

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


def load_members(workdirs: Sequence[str], tokenizer=None) -> tuple[llama.LlamaConfig, dict]:
    """(model config, stacked params on the host) of each member: a training run's newest
    checkpoint, or any model `train.pretrained` loads; every member must have the same config
    and the same tokenizer (fingerprint, not size): the `tokenizer` the caller will read their
    ids with, when given."""
    configs, params = [], []
    fingerprint = pretrained.tokenizer_fingerprint(workdirs[0]) if workdirs else None
    for workdir in workdirs:
        config, p = pretrained.load(workdir)
        if configs and config != configs[0]:
            raise ValueError(f"ensemble member {workdir}: model config {config} differs from "
                             f"{workdirs[0]}: {configs[0]}")
        if pretrained.tokenizer_fingerprint(workdir) != fingerprint:
            raise ValueError(f"ensemble member {workdir}: trained on data tokenized with "
                             f"{pretrained.tokenizer_fingerprint(workdir)}, {workdirs[0]} with "
                             f"{fingerprint}; members must share one tokenizer")
        if tokenizer is not None:
            pretrained.check_tokenizer(workdir, tokenizer)
        configs.append(config)
        params.append(jax.tree.map(np.asarray, p))  # to host: K members never share one device
    return configs[0], stack_params(params, names=workdirs)


def check_store(workdirs: Sequence[str], store) -> None:
    """Refuse a store tokenized by another tokenizer than the members' (by fingerprint)."""
    for workdir in workdirs:
        pretrained.check_store(workdir, store)


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
    return step_lib.next_token_losses(logits_BxTxV, tokens_BxW[:, 1:])


def stacked_shardings(config: llama.LlamaConfig, mesh) -> dict:
    """Each member laid out as a single model would be; the member axis is not split."""
    return jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)),
                        llama.param_shardings(config, mesh))


def ensemble_loss(config: llama.LlamaConfig, stacked: dict, store, batch_size: int, mesh=None,
                  *, average: str = "logits") -> float:
    """Mean next-token loss of the ensemble over every window of a store, by the evaluator that
    `megadoc.train.evaluate.eval_loss` uses for one model: members and batch sharded over `mesh`,
    each process reading only its rows, `batch_size` rounded up to fill the batch shards."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    member_sh = stacked_shardings(config, mesh)
    evaluator = evaluate.Evaluator(
        config, mesh, batch_size, param_shardings=member_sh,
        token_losses=functools.partial(token_losses, config, average=average))
    return evaluator(jax.device_put(stacked, member_sh), store)
