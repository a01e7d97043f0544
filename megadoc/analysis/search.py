"""Certified locally-optimal hyper-parameter search on a grid.

Start at a guess; run every untried one-step neighbour (one axis moved by one grid step) of the
best point so far; move to the best; repeat. The search stops when every neighbour of the best
point has been run and none is better. That point is *certified* locally optimal only when it is
also interior: on an axis where it sits at the first or last value, the neighbour beyond was never
tried, so the result says `at_bound` (those axes) instead, as the megadocs paper flags its
bound-limited runs (Appendix B). Every finished run is appended to a JSONL file, so a restarted
search re-runs nothing.
The launcher is any callable `run(point) -> loss` (megadoc.pipelines.search trains each point in
this process). Neighbours may run concurrently (`parallel`) for a launcher that submits each
one elsewhere, e.g. one cluster job each.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import threading
import time
from typing import Callable, Mapping

from megadoc import fs

Point = dict  # {axis name: grid value}


@dataclasses.dataclass(frozen=True)
class Grid:
    """Ordered axes, each a tuple of values in grid order (neighbours are adjacent values)."""

    axes: tuple[tuple[str, tuple], ...]

    @classmethod
    def of(cls, **axes) -> "Grid":
        return cls(tuple((name, tuple(values)) for name, values in axes.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def index(self, point: Mapping) -> tuple[int, ...]:
        if set(point) != set(self.names):
            raise ValueError(f"point {dict(point)} must set exactly the axes {self.names}")
        out = []
        for name, values in self.axes:
            if point[name] not in values:
                raise ValueError(
                    f"point {dict(point)}: {name}={point[name]!r} is not on the grid {values}")
            out.append(values.index(point[name]))
        return tuple(out)

    def point(self, index: tuple[int, ...]) -> Point:
        return {name: values[i] for (name, values), i in zip(self.axes, index)}

    def bounds(self, index: tuple[int, ...]) -> tuple[str, ...]:
        """The axes on which `index` sits at the first or last value (every axis of one value)."""
        return tuple(name for (name, values), i in zip(self.axes, index)
                     if i == 0 or i == len(values) - 1)

    def neighbours(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        out = []
        for axis, (_, values) in enumerate(self.axes):
            for step in (-1, 1):
                j = index[axis] + step
                if 0 <= j < len(values):
                    out.append(index[:axis] + (j,) + index[axis + 1:])
        return out


# The papers' grids, as Marin's experiments/data_efficiency/utils.py gives them (the code the
# papers ran). Real-only baselines ("Pre-training under infinite compute") search `valid_lrs`,
# `valid_weight_decays`, `valid_epochs`: weight decay reaches 3.2, where the published 600M and
# 1.5B baselines sit (synth_data_regularized_baselines.py), and 6.4 beyond it. Synthetic runs
# (the megadocs paper) search the `synth_valid_*` values, adding the synthetic fraction of each
# batch (synth_data_final_convex_tune.py searches around its optima on exactly these).
REAL_GRID = Grid.of(lr=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
                    weight_decay=(0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
                    epochs=(1, 2, 4, 8, 16, 32, 64))
SYNTHETIC_GRID = Grid.of(lr=(1e-3, 3e-3, 1e-2), weight_decay=(0.1, 0.4, 0.8, 1.6),
                         epochs=(1, 2, 4, 8, 16, 32), mix=(0.5, 0.75, 0.9))
# Two values an axis, for runs that check the machinery on a CPU in minutes.
TOY_REAL_GRID = Grid.of(lr=(3e-3, 1e-2), weight_decay=(0.1, 0.4), epochs=(1, 2))
TOY_SYNTHETIC_GRID = Grid.of(lr=(3e-3, 1e-2), weight_decay=(0.1, 0.4), epochs=(1, 2),
                             mix=(0.5, 0.75))
# The megadocs paper's "no real data" ablation (Appendix D.1, Figure 13): the synthetic stream
# alone (mix 1), epochs counted as passes over it, searched on the synthetic grid's other axes.
SYNTHETIC_ONLY_GRID = Grid.of(lr=(1e-3, 3e-3, 1e-2), weight_decay=(0.1, 0.4, 0.8, 1.6),
                              epochs=(1, 2, 4, 8, 16, 32), mix=(1.0,))
GRIDS = {"real": REAL_GRID, "synthetic": SYNTHETIC_GRID, "synthetic-only": SYNTHETIC_ONLY_GRID,
         "toy-real": TOY_REAL_GRID, "toy-synthetic": TOY_SYNTHETIC_GRID}


def grid_preset(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"unknown grid preset {name!r}; known: {sorted(GRIDS)}")
    return GRIDS[name]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    best: Point
    best_loss: float
    results: list[tuple[Point, float]]  # every run on the grid, in the order they finished
    new_runs: int  # runs made by this call (the rest came from the results file)
    certified: bool  # every neighbour run, none better, and interior on every axis
    at_bound: tuple[str, ...]  # axes on which `best` sits at the grid's first or last value


def load_results(path: str) -> list[tuple[Point, float]]:
    """Finished runs from a results file; a non-finite loss (diverged run) is stored as null.
    A torn last line (a search killed while recording a run) is cut off: that run is redone."""
    out = []
    for lineno, row in fs.read_jsonl_log(path):
        try:
            point, loss = dict(row["point"]), row["loss"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f'{path}:{lineno}: expected {{"point": {{...}}, "loss": float}}: {e}') from e
        out.append((point, math.inf if loss is None else float(loss)))
    return out


def search(
    grid: Grid, start: Mapping, run: Callable[[Point], float], results_path: str, parallel: int = 1
) -> SearchResult:
    """Hill-climb to a certified local optimum, running each grid point at most once ever.

    Up to `parallel` untried neighbours run at once (for a launcher that submits one cluster job
    per call and waits for it). Returns once every neighbour of the best point has run and none
    is better; `certified` also needs the point to be interior (else `at_bound` names the axes).
    """
    start_index = grid.index(start)
    losses: dict[tuple[int, ...], float] = {}
    order: list[tuple[int, ...]] = []
    for point, loss in load_results(results_path):
        try:
            index = grid.index(point)
        except ValueError:
            continue  # from another grid: not ours to use
        if index not in losses:
            order.append(index)
        losses[index] = loss
    resumed = len(losses)
    if resumed:
        print(f"[search] resuming: {resumed} finished runs in {results_path}", flush=True)

    lock = threading.Lock()

    def run_one(index):
        point = grid.point(index)
        print(f"[search] run: {point}", flush=True)
        loss = float(run(point))
        row = {"point": point, "loss": loss if math.isfinite(loss) else None, "time": time.time()}
        with lock:
            fs.append_jsonl(results_path, [row])
            losses[index] = loss if math.isfinite(loss) else math.inf
            order.append(index)
            print(f"[search]   {point}: loss {loss:.5f} ({len(order)} runs)", flush=True)

    def ensure(indices):
        todo = [i for i in indices if i not in losses]
        if parallel == 1 or len(todo) <= 1:
            for i in todo:
                run_one(i)
            return
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            for future in [pool.submit(run_one, i) for i in todo]:
                future.result()

    # Replaying from the start through the stored results retraces the uninterrupted path
    # exactly, so a resumed search ends where an uninterrupted one would. Moves strictly lower
    # the loss (ties keep the current point), so the search ends on a finite grid.
    best = start_index
    ensure([best])
    while True:
        candidates = [best] + grid.neighbours(best)
        ensure(candidates)
        new_best = min(candidates, key=lambda i: losses[i])
        if new_best == best:
            break
        best = new_best
        print(f"[search] move to {grid.point(best)} (loss {losses[best]:.5f})", flush=True)
    at_bound = grid.bounds(best)
    certified = (not at_bound and math.isfinite(losses[best])
                 and all(losses.get(n, -math.inf) >= losses[best] for n in grid.neighbours(best)))
    verdict = "certified" if certified else f"not certified (at the grid's bound on {at_bound})"
    print(f"[search] best {grid.point(best)} loss {losses[best]:.5f} after {len(order)} runs: "
          f"{verdict}", flush=True)
    return SearchResult(
        best=grid.point(best),
        best_loss=losses[best],
        results=[(grid.point(i), losses[i]) for i in order],
        new_runs=len(order) - resumed,
        certified=certified,
        at_bound=at_bound,
    )


def point_name(point: Mapping) -> str:
    """A point as a directory name: `epochs=16_lr=0.003_weight_decay=0.8` (axes sorted)."""
    return "_".join(f"{k}={point[k]}" for k in sorted(point))


def final_eval_loss(summary: Mapping, val_set: str) -> float:
    """The final loss on `val_set` from a training summary.json ({"eval": {name: loss}})."""
    evals = summary.get("eval") or {}
    if val_set not in evals:
        raise KeyError(f"summary.json has no final eval loss for {val_set!r}; it has "
                       f"{sorted(evals)} (pass --val={val_set}=STORE to the training runs)")
    return float(evals[val_set])
