"""Global batches on the mesh: each process reads only the rows its devices hold.

A grain pipeline over step numbers reads the process's rows of each step's batch (from the
schedule, in background threads with prefetch); the main thread turns them into global
`jax.Array`s laid out with `sharding.batch_sharding(mesh)`. The rows a process reads depend on
the sharding alone, so the global batch at a step is the same on any number of hosts or devices,
and resuming at step s needs only s.
"""
from __future__ import annotations

from typing import Iterator

import grain
import jax
import numpy as np

from megadoc.data import host_rows
from megadoc.data import store as store_lib
from megadoc.data.schedule import REAL, SYNTHETIC, MixSchedule


class BatchLoader:
    def __init__(self, schedule: MixSchedule, real_store: store_lib.WindowStore,
                 synthetic_store: store_lib.WindowStore | None,
                 batch_sharding: jax.sharding.NamedSharding, start_step: int = 0,
                 prefetch: int = 4, num_threads: int = 2):
        """`batch_sharding`: how a [global_batch, seq_len + 1] batch splits over the mesh
        (`models.sharding.batch_sharding(mesh)`)."""
        _check_stores(schedule, real_store, synthetic_store)
        self.schedule = schedule
        self.stores = {REAL: real_store, SYNTHETIC: synthetic_store}
        self.rows = host_rows.HostRows(batch_sharding, schedule.global_batch)
        self.local_rows = self.rows.local_rows  # the global batch rows this process reads
        self.shape = (schedule.global_batch, real_store.seq_len + 1)
        if not 0 <= start_step <= schedule.num_steps:
            raise ValueError(f"start_step {start_step} outside [0, {schedule.num_steps}]")
        dataset = grain.MapDataset.range(start_step, schedule.num_steps).map(
            lambda s: (s, self.read_local(s)))
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self._iterator = iter(dataset.to_iter_dataset(options))

    def read_local(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the batch at `step`, in global row order."""
        streams, windows = self.schedule.batch_indices(step)
        streams, windows = streams[self.local_rows], windows[self.local_rows]
        out = {k: np.empty((len(self.local_rows), self.shape[1]), np.int32) for k in store_lib.ARRAYS}
        for stream in (REAL, SYNTHETIC):
            mask = streams == stream
            if mask.any():
                block = self.stores[stream].read(windows[mask])
                for k in out:
                    out[k][mask] = block[k]
        return out

    def __iter__(self) -> Iterator[tuple[int, dict[str, jax.Array]]]:
        return self

    def __next__(self) -> tuple[int, dict[str, jax.Array]]:
        step, local = next(self._iterator)
        return step, {k: self.rows.to_global(v) for k, v in local.items()}


def _check_stores(schedule, real, synthetic) -> None:
    if len(real) != schedule.num_real:
        raise ValueError(f"{real.path}: {len(real)} windows, schedule expects {schedule.num_real}")
    if schedule.mix == 0:
        return
    if synthetic is None or len(synthetic) != schedule.num_synthetic:
        raise ValueError(f"synthetic store {getattr(synthetic, 'path', None)}: expected "
                         f"{schedule.num_synthetic} windows for mix={schedule.mix}")
    if synthetic.seq_len != real.seq_len:
        raise ValueError(f"{synthetic.path}: seq_len {synthetic.seq_len} differs from "
                         f"{real.path}: {real.seq_len}")
    fp_real = real.metadata.get("tokenizer_fingerprint")
    fp_syn = synthetic.metadata.get("tokenizer_fingerprint")
    if fp_real != fp_syn:
        raise ValueError(f"{synthetic.path}: tokenizer {fp_syn} differs from {real.path}: {fp_real}")
