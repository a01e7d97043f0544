"""Global arrays from the rows each host holds: the one way batches reach the mesh.

A batch of N rows is split over the mesh's batch axes by a row sharding (in megadoc,
`models.sharding.batch_sharding(mesh)`). Each process reads only the rows its own devices hold
(`local_rows`) and `to_global` assembles the global `jax.Array` from them, so no host reads or
sends another host's rows and the global batch is the same on 1 host or 32.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


class HostRows:
    """Which rows of an N-row batch this process holds under `rows_sharding`, and the global
    arrays built from them (any trailing shape, same row split)."""

    def __init__(self, rows_sharding: NamedSharding, num_rows: int):
        self.mesh = rows_sharding.mesh
        self.row_axes = rows_sharding.spec[0]
        self.num_rows = num_rows
        if num_rows % self.num_shards:
            raise ValueError(f"a batch of {num_rows} rows does not split over the mesh's "
                             f"{self.num_shards} batch shards ({self.row_axes}): use a "
                             f"multiple of {self.num_shards} rows, or fewer batch shards")
        index_map = self.sharding(1).addressable_devices_indices_map((num_rows,))
        rows = sorted({r for idx in index_map.values() for r in range(*idx[0].indices(num_rows))})
        self.local_rows = np.asarray(rows, np.int64)  # the global rows this process holds
        self._position = np.full(num_rows, -1, np.int64)
        self._position[self.local_rows] = np.arange(len(rows))

    @property
    def num_shards(self) -> int:
        return num_shards(self.sharding(1))

    def sharding(self, ndim: int) -> NamedSharding:
        """Rows split as the batch is; every other dimension whole."""
        return NamedSharding(self.mesh, PartitionSpec(self.row_axes, *(None,) * (ndim - 1)))

    def to_global(self, local: np.ndarray) -> jax.Array:
        """The [N, ...] global array whose rows `local_rows` are `local` (in that order)."""
        local = np.asarray(local)
        if len(local) != len(self.local_rows):
            raise ValueError(f"{len(local)} local rows given, this process holds "
                             f"{len(self.local_rows)} of {self.num_rows}")
        return jax.make_array_from_callback((self.num_rows, *local.shape[1:]),
                                            self.sharding(local.ndim),
                                            lambda idx: local[self._position[idx[0]]])


def num_shards(rows_sharding: NamedSharding) -> int:
    """How many blocks the rows split into: the product of the row axes' sizes."""
    axes = rows_sharding.spec[0]
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(rows_sharding.mesh.shape[a] for a in axes if a is not None)


def round_up(batch_size: int, num_shards: int) -> int:
    """The smallest multiple of `num_shards` not below `batch_size`: every shard gets rows."""
    return -(-batch_size // num_shards) * num_shards
