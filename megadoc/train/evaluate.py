"""Validation loss over every window of a store."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.data import store as store_lib
from megadoc.models import llama, sharding
from megadoc.train import step as step_lib


class Evaluator:
    """Mean next-token loss of a store, in batches laid out on the mesh (the last one padded
    with zero-weight rows). Each process reads only the rows its devices hold."""

    def __init__(self, model_config: llama.LlamaConfig, mesh, batch_size: int):
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // shards) * shards
        self.rows_sh = sharding.batch_sharding(mesh)
        self.weights_sh = NamedSharding(mesh, P(self.rows_sh.spec[0]))
        index_map = self.rows_sh.addressable_devices_indices_map((self.batch_size, 1))
        self.local_rows = sorted({r for idx in index_map.values()
                                  for r in range(*idx[0].indices(self.batch_size))})
        self._position = {r: i for i, r in enumerate(self.local_rows)}
        param_sh = sharding.param_shardings(model_config, mesh)
        self._step = step_lib.make_eval_step(model_config, param_sh, mesh)

    def _global(self, local_rows: np.ndarray, sh: NamedSharding) -> jax.Array:
        shape = (self.batch_size,) + local_rows.shape[1:]
        return jax.make_array_from_callback(shape, sh, lambda idx: local_rows[
            [self._position[r] for r in range(*idx[0].indices(self.batch_size))]])

    def __call__(self, params, store: store_lib.WindowStore) -> float:
        total, count = 0.0, 0.0
        local = np.asarray(self.local_rows)
        for start in range(0, len(store), self.batch_size):
            window_ids = start + local
            valid = window_ids < len(store)
            read = store.read(np.where(valid, window_ids, 0))
            batch = {k: self._global(v, self.rows_sh) for k, v in read.items()}
            weights = self._global(valid.astype(np.float32), self.weights_sh)
            s, c = self._step(params, batch, weights)
            total, count = total + float(s), count + float(c)
        return total / count


def eval_loss(model_config: llama.LlamaConfig, params, store, batch_size: int, mesh=None) -> float:
    """Mean next-token loss over every window of `store` (a WindowStore or its path)."""
    if isinstance(store, str):
        store = store_lib.open(store)
    mesh = mesh or sharding.make_mesh()
    params = jax.device_put(params, sharding.param_shardings(model_config, mesh))
    return Evaluator(model_config, mesh, batch_size)(params, store)
