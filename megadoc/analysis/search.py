"""Certified locally-optimal hyper-parameter search on a grid.

Start at a guess; run every untried one-step neighbour (one axis moved by one grid step) of the
best point so far; move to the best; repeat. The search stops when every neighbour of the best
point has been run and none is better: that point is *certified* locally optimal, as in the
papers. Every finished run is appended to a JSONL file, so a restarted search re-runs nothing.
The launcher is any callable `run(point) -> loss`; `TrainLauncher` runs `experiments.train`.
Neighbours may run concurrently (`parallel`), e.g. one cluster job each.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import subprocess
import sys
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

    def neighbours(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        out = []
        for axis, (_, values) in enumerate(self.axes):
            for step in (-1, 1):
                j = index[axis] + step
                if 0 <= j < len(values):
                    out.append(index[:axis] + (j,) + index[axis + 1:])
        return out


# The papers' grids. The real-only baseline searches lr / weight decay / epochs; synthetic runs add
# the fraction of each batch that is synthetic.
PAPER_LR = (1e-3, 3e-3, 1e-2)
PAPER_WEIGHT_DECAY = (0.1, 0.4, 0.8, 1.6)
PAPER_EPOCHS = (1, 2, 4, 8, 16, 32)
PAPER_MIX = (0.5, 0.75, 0.9)
GRIDS = {
    "real": Grid.of(lr=PAPER_LR, weight_decay=PAPER_WEIGHT_DECAY, epochs=PAPER_EPOCHS),
    "synthetic": Grid.of(lr=PAPER_LR, weight_decay=PAPER_WEIGHT_DECAY, epochs=PAPER_EPOCHS,
                         mix=PAPER_MIX),
}


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


def load_results(path: str) -> list[tuple[Point, float]]:
    """Finished runs from a results file; a non-finite loss (diverged run) is stored as null."""
    if not fs.exists(path):
        return []
    out = []
    for lineno, line in enumerate(fs.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
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
    per call and waits for it). Returns only once the best point is certified: all its
    neighbours run, none better.
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
            fs.append_text(results_path, json.dumps(row) + "\n")
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
    print(f"[search] certified {grid.point(best)} loss {losses[best]:.5f} after {len(order)} runs",
          flush=True)
    return SearchResult(
        best=grid.point(best),
        best_loss=losses[best],
        results=[(grid.point(i), losses[i]) for i in order],
        new_runs=len(order) - resumed,
    )


@dataclasses.dataclass(frozen=True)
class TrainLauncher:
    """Runs `python -m experiments.train` once per point, one after another, and returns the
    final loss on validation set `val_set` (one of the runs' --val names) from summary.json.

    Each point gets its own workdir under `root`, so an interrupted run resumes from its own
    checkpoint when the search is restarted. A run that stops on a non-finite loss counts as
    diverged (worst); any other failure stops the search.
    """

    root: str
    base_flags: tuple[str, ...]  # e.g. ("--preset=tiny", "--real=...", "--val=val=...")
    val_set: str = "val"

    def workdir(self, point: Mapping) -> str:
        name = "_".join(f"{k}={point[k]}" for k in sorted(point))
        return fs.join(self.root, name)

    def __call__(self, point: Mapping) -> float:
        workdir = self.workdir(point)
        flags = [f"--{k}={v}" for k, v in point.items()]
        cmd = [sys.executable, "-m", "experiments.train", *self.base_flags, *flags,
               f"--workdir={workdir}"]
        print(f"[search] $ {' '.join(cmd)}", flush=True)
        # stderr is captured (and echoed) to tell a diverged run from a crash.
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            if "FloatingPointError" in proc.stderr:
                print(f"[search]   diverged (non-finite loss): {workdir}", flush=True)
                return math.nan
            raise RuntimeError(f"experiments.train failed (exit {proc.returncode}) for "
                               f"{dict(point)} in {workdir}:\n{proc.stderr[-2000:]}")
        summary = json.loads(fs.read_text(fs.join(workdir, "summary.json")))
        return final_eval_loss(summary, self.val_set)


def final_eval_loss(summary: Mapping, val_set: str) -> float:
    """The final loss on `val_set` from a training summary.json ({"eval": {name: loss}})."""
    evals = summary.get("eval") or {}
    if val_set not in evals:
        raise KeyError(f"summary.json has no final eval loss for {val_set!r}; it has "
                       f"{sorted(evals)} (pass --val={val_set}=STORE to the training runs)")
    return float(evals[val_set])
