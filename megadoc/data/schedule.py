"""The global batch at every step, as a pure function of (seed, step, batch, mix, store sizes).

Real rows: the real stream is a sequence of positions p = step * real_per_batch + j; position p
reads window `real_perm[p % num_real]`. One seeded permutation, reused every epoch, so epoch e
sees the windows in the same order. `num_steps = ceil(epochs * num_real / real_per_batch)`;
when that does not divide evenly the last batch *wraps* into the start of the same permutation
(`num_wrapped` windows are seen one extra time) so that every batch keeps its exact shape and mix.

Synthetic rows: likewise `syn_perm[q % num_synthetic]` with q = step * synthetic_per_batch + j;
the synthetic stream simply cycles for as long as the schedule runs.

Row placement: synthetic rows sit at the slots a per-step seeded permutation of the batch picks,
so each data-parallel shard sees a mix close to `mix` rather than all-real or all-synthetic.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

REAL, SYNTHETIC = 0, 1


@dataclasses.dataclass(frozen=True)
class MixSchedule:
    num_real: int
    num_synthetic: int
    global_batch: int
    mix: float
    epochs: int
    seed: int

    def __post_init__(self):
        if not 0.0 <= self.mix < 1.0:
            raise ValueError(f"mix must be in [0, 1): the real stream sets the length; got {self.mix}")
        if self.global_batch <= 0 or self.num_real <= 0 or int(self.epochs) != self.epochs or self.epochs <= 0:
            raise ValueError(f"need global_batch > 0, num_real > 0 and a whole number of epochs > 0; got {self}")
        if self.synthetic_per_batch > 0 and self.num_synthetic <= 0:
            raise ValueError(f"mix={self.mix} puts {self.synthetic_per_batch} synthetic windows in "
                             f"each batch, but the synthetic store is empty")
        if self.real_per_batch <= 0:
            raise ValueError(f"mix={self.mix} leaves no real window in a batch of {self.global_batch}")

    @property
    def synthetic_per_batch(self) -> int:
        return math.floor(self.mix * self.global_batch + 0.5)  # round half up, not to even

    @property
    def real_per_batch(self) -> int:
        return self.global_batch - self.synthetic_per_batch

    @property
    def num_steps(self) -> int:
        return math.ceil(self.epochs * self.num_real / self.real_per_batch)

    @property
    def num_wrapped(self) -> int:
        """Real windows the last batch takes from the start of the next (unscheduled) epoch."""
        return self.num_steps * self.real_per_batch - self.epochs * self.num_real

    @functools.cached_property
    def _real_perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, REAL]).permutation(self.num_real)

    @functools.cached_property
    def _synthetic_perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, SYNTHETIC]).permutation(max(self.num_synthetic, 1))

    def batch_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream id per row: 0 real / 1 synthetic, window id per row), each int64 [global_batch]."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside the schedule [0, {self.num_steps})")
        R, S = self.real_per_batch, self.synthetic_per_batch
        real = self._real_perm[(step * R + np.arange(R)) % self.num_real]
        synthetic = self._synthetic_perm[(step * S + np.arange(S)) % max(self.num_synthetic, 1)]
        slots = np.random.default_rng([self.seed, 2, step]).permutation(self.global_batch)
        streams = np.full(self.global_batch, REAL, np.int64)
        windows = np.empty(self.global_batch, np.int64)
        streams[slots[:S]] = SYNTHETIC
        windows[slots[:S]] = synthetic
        windows[slots[S:]] = real
        return streams, windows
