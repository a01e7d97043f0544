"""Validation loss over every window of a store."""
from __future__ import annotations

import jax
import numpy as np

from megadoc.data import store as store_lib
from megadoc.models import llama, sharding
from megadoc.train import step as step_lib


class Evaluator:
    """Mean next-token loss of a store, in batches laid out on the mesh (last batch padded with
    zero-weight rows). Each process reads only the rows its devices hold."""

    def __init__(self, model_config: llama.LlamaConfig, mesh, batch_size: int):
        self.mesh = mesh
        self.batch_sh = sharding.batch_sharding(mesh)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // shards) * shards
        self._step = step_lib.make_eval_step(model_config, sharding.param_shardings(model_config, mesh), mesh)

    def __call__(self, params, store: store_lib.WindowStore) -> float:
        n, width = len(store), store.seq_len + 1
        shape = (self.batch_size, width)
        weight_sh = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.batch_sh.spec[0]))
        rows_of_process = sorted({r for idx in self.batch_sh.addressable_devices_indices_map(shape).values()
                                  for r in range(*idx[0].indices(self.batch_size))})
        total, count = 0.0, 0.0
        for start in range(0, n, self.batch_size):
            window_ids = np.arange(start, start + self.batch_size)
            valid = window_ids < n
            local = np.asarray(rows_of_process)
            read = store.read(np.where(valid[local], window_ids[local], 0))
            position = {r: i for i, r in enumerate(rows_of_process)}

            def array(x, shape):
                return jax.make_array_from_callback(
                    shape, weight_sh if len(shape) == 1 else self.batch_sh,
                    lambda idx: x[[position[r] for r in range(*idx[0].indices(self.batch_size))]])

            batch = {k: array(v, shape) for k, v in read.items()}
            weights = array(valid[local].astype(np.float32), (self.batch_size,))
            s, c = self._step(params, batch, weights)
            total += float(s)
            count += float(c)
        return total / count


def eval_loss(model_config: llama.LlamaConfig, params, store, batch_size: int, mesh=None) -> float:
    """Mean next-token loss over every window of `store` (a WindowStore or its path)."""
    if isinstance(store, str):
        store = store_lib.open(store)
    mesh = mesh or sharding.make_mesh()
    params = jax.device_put(params, sharding.param_shardings(model_config, mesh))
    return Evaluator(model_config, mesh, batch_size)(params, store)
