"""Validation loss over every window of a store, for one model or any other scorer of tokens."""
from __future__ import annotations

import functools

import jax
import numpy as np

from megadoc.data import host_rows
from megadoc.data import store as store_lib
from megadoc.models import llama, sharding
from megadoc.train import step as step_lib


class Evaluator:
    """Mean next-token loss of a store, in batches laid out on the mesh (the last one padded
    with zero-weight rows). Each process reads only the rows its devices hold.

    By default the loss is the model's; `token_losses(params, tokens_BxW, segment_ids_BxW)`
    (fp32 [B, W-1]) with `param_shardings` scores anything else, e.g. an ensemble."""

    def __init__(self, model_config: llama.LlamaConfig, mesh, batch_size: int, *,
                 token_losses=None, param_shardings=None):
        rows_sh = sharding.batch_sharding(mesh)
        self.batch_size = host_rows.round_up(batch_size, host_rows.num_shards(rows_sh))
        self.rows = host_rows.HostRows(rows_sh, self.batch_size)
        token_losses = token_losses or functools.partial(step_lib.token_losses, model_config)
        if param_shardings is None:
            param_shardings = llama.param_shardings(model_config, mesh)
        self._step = step_lib.make_eval_step(token_losses, param_shardings, mesh)

    def __call__(self, params, store: store_lib.WindowStore) -> float:
        if len(store) == 0:
            raise ValueError(f"{getattr(store, 'path', 'store')}: no windows to evaluate")
        total, count = 0.0, 0.0
        for start in range(0, len(store), self.batch_size):
            window_ids = start + self.rows.local_rows
            valid = window_ids < len(store)
            read = store.read(np.where(valid, window_ids, 0))
            batch = {k: self.rows.to_global(v) for k, v in read.items()}
            s, c = self._step(params, batch, self.rows.to_global(valid.astype(np.float32)))
            total, count = total + float(s), count + float(c)
        return total / count


def eval_loss(model_config: llama.LlamaConfig, params, store, batch_size: int, mesh=None) -> float:
    """Mean next-token loss over every window of `store` (a WindowStore or its path)."""
    if isinstance(store, str):
        store = store_lib.open(store)
    mesh = mesh or sharding.make_mesh()
    params = jax.device_put(params, llama.param_shardings(model_config, mesh))
    return Evaluator(model_config, mesh, batch_size)(params, store)
