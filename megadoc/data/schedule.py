"""The global batch at every step, as a pure function of (seed, step, batch, mix, store sizes).

Mixing is exact over the run (DESIGN.md, decision 2): with global batch B and synthetic fraction w,
the first s batches hold `floor(w·B·s)` synthetic windows, so batch s holds
`floor(w·B·(s+1)) - floor(w·B·s)` of them (⌊wB⌋ or ⌈wB⌉) and the realised fraction is w, not
round(w·B)/B. w is taken as the exact decimal it is written as (0.9 is 9/10), so the counts do
not depend on binary rounding. Levanter's `MixtureDataset` reaches the same end with blocks of
2048 windows (src/levanter/data/mixture.py); a running floor needs no block size and keeps every
batch within one window of w·B.

Real rows: the real stream is a sequence of positions; position p reads window
`real_perm[p % num_real]`. One seeded permutation, reused every epoch, so epoch e sees the windows
in the same order. `num_steps = ceil(epochs · num_real / ((1 - w)·B))`, the fewest steps whose real
rows cover every epoch; the last batch *wraps* into the start of the same permutation
(`num_wrapped` windows are seen one extra time) so that every batch keeps its shape.

Synthetic rows: likewise `syn_perm[q % num_synthetic]`; the synthetic stream simply cycles for as
long as the schedule runs.

Synthetic only (mix = 1, the megadocs paper's "no real data" ablation, Appendix D.1): no real row
is read and the synthetic stream sets the length instead, `epochs` counting passes over it:
`num_steps = ceil(epochs · num_synthetic / B)`, the last batch wrapping into its permutation's
start as the real stream's does (ARCHITECTURE.md, design notes, says why).

Row placement: synthetic rows sit at the slots a per-step seeded permutation of the batch picks,
so each data-parallel shard sees a mix close to `mix` rather than all-real or all-synthetic.
Nothing depends on the number of hosts: a host reads its rows of the same global batch.
"""
from __future__ import annotations

import dataclasses
import fractions
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
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if (self.global_batch <= 0 or (self.num_real <= 0 and not self.synthetic_only)
                or int(self.epochs) != self.epochs or self.epochs <= 0):
            raise ValueError(f"need global_batch > 0, num_real > 0 (unless mix = 1) and a whole "
                             f"number of epochs > 0; got {self}")
        if self.mix > 0 and self.num_synthetic <= 0:
            raise ValueError(f"mix={self.mix} asks for synthetic windows, but the synthetic store is empty")

    @property
    def synthetic_only(self) -> bool:
        """mix = 1: the synthetic stream alone, which then sets the run's length."""
        return self.mix == 1.0

    @functools.cached_property
    def _fraction(self) -> fractions.Fraction:
        return fractions.Fraction(repr(float(self.mix)))  # 0.9 -> 9/10 exactly

    def synthetic_before(self, step: int) -> int:
        """Synthetic windows in batches [0, step): floor(mix · global_batch · step)."""
        f = self._fraction
        return f.numerator * self.global_batch * step // f.denominator

    def real_before(self, step: int) -> int:
        return self.global_batch * step - self.synthetic_before(step)

    @property
    def num_steps(self) -> int:
        if self.synthetic_only:
            return math.ceil(self.epochs * self.num_synthetic / self.global_batch)
        f = self._fraction
        return math.ceil(fractions.Fraction(self.epochs * self.num_real)
                         / ((1 - f) * self.global_batch))

    @property
    def num_wrapped(self) -> int:
        """Windows the last batch takes from the start of the next (unscheduled) epoch of the
        stream that sets the length: the real one, or the synthetic one when mix = 1."""
        if self.synthetic_only:
            return self.synthetic_before(self.num_steps) - self.epochs * self.num_synthetic
        return self.real_before(self.num_steps) - self.epochs * self.num_real

    def counts(self) -> dict:
        """The run's realised windows per stream, for its summary."""
        synthetic = self.synthetic_before(self.num_steps)
        total = self.global_batch * self.num_steps
        return {"steps": self.num_steps, "real_windows": total - synthetic,
                "synthetic_windows": synthetic, "synthetic_fraction": synthetic / total,
                "wrapped_windows": self.num_wrapped}

    @functools.cached_property
    def _real_perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, REAL]).permutation(max(self.num_real, 1))

    @functools.cached_property
    def _synthetic_perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, SYNTHETIC]).permutation(max(self.num_synthetic, 1))

    def batch_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream id per row: 0 real / 1 synthetic, window id per row), each int64 [global_batch]."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside the schedule [0, {self.num_steps})")
        s0, s1 = self.synthetic_before(step), self.synthetic_before(step + 1)
        r0 = self.real_before(step)
        S = s1 - s0
        real = self._real_perm[(r0 + np.arange(self.global_batch - S)) % max(self.num_real, 1)]
        synthetic = self._synthetic_perm[(s0 + np.arange(S)) % max(self.num_synthetic, 1)]
        slots = np.random.default_rng([self.seed, 2, step]).permutation(self.global_batch)
        streams = np.full(self.global_batch, REAL, np.int64)
        windows = np.empty(self.global_batch, np.int64)
        streams[slots[:S]] = SYNTHETIC
        windows[slots[:S]] = synthetic
        windows[slots[S:]] = real
        return streams, windows
