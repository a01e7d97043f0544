"""The certified hyper-parameter search with real training runs: every point of the grid is a
run of `runs.train` in <root>/<point>, in this process; a run that diverges counts as the worst
loss. Finished points are kept in <root>/results.jsonl and each run resumes from its own
checkpoints, so rerunning the same search continues it (megadoc.analysis.search)."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, Mapping

from megadoc import cli, fs
from megadoc.analysis import plots, search
from megadoc.pipelines import runs
from megadoc.train import config as config_lib


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """A search: the grid, where it starts, and the run every point changes."""
    root: str
    """directory for the runs and results (local or gs://)"""
    start: str
    """the first guess, NAME=VALUE,... for every axis"""
    train: config_lib.TrainConfig
    """the run every point starts from: a point sets its axes (lr, weight_decay, epochs, mix) and
    its workdir"""
    grid: str = "synthetic"
    """grid preset: real (lr, weight_decay, epochs) | synthetic (+ mix) | synthetic-only (mix 1,
    epochs over the synthetic store: the megadocs paper's no-real-data ablation, Appendix D.1) |
    toy-real | toy-synthetic (2 values an axis)"""
    axis: tuple[tuple[str, str], ...] = ()
    """NAME=V1,V2,... replaces one axis's values"""
    val_set: str = "iid"
    """the validation set (a --val NAME of the runs) whose final loss is minimised"""

    def search_grid(self) -> search.Grid:
        axes = dict(search.grid_preset(self.grid).axes)
        for name, values in self.axis:
            if name not in axes:
                raise ValueError(f"--axis={name}={values}: expected NAME=V1,V2,... with NAME in "
                                 f"{sorted(axes)}")
            axes[name] = tuple(number(v) for v in values.split(","))
        return search.Grid(tuple(axes.items()))

    def start_point(self) -> dict:
        return parse_point(self.start)


@dataclasses.dataclass(frozen=True)
class SearchSummary:
    """What a search found (also <root>/search.json)."""
    best: dict
    best_loss: float
    certified: bool
    at_bound: tuple[str, ...]
    runs: int
    new_runs: int
    grid: tuple[tuple[str, tuple], ...]

    def as_dict(self) -> dict:
        return {"best": self.best, "best_loss": self.best_loss, "certified": self.certified,
                "at_bound": list(self.at_bound), "runs": self.runs, "new_runs": self.new_runs,
                "grid": {name: list(v) for name, v in self.grid}}


def number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_point(text: str) -> dict:
    point = {}
    for item in (text or "").split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--start={text!r}: expected NAME=VALUE,...")
        point[name.strip()] = number(value)
    return point


def launcher(train: config_lib.TrainConfig, root: str,
             val_set: str) -> Callable[[Mapping], float]:
    """point -> final loss on `val_set` of `train` with the point's values, trained in this
    process in <root>/<point> (a rerun resumes it); NaN for a run that diverged."""
    def run(point: Mapping) -> float:
        workdir = fs.join(root, search.point_name(point))
        try:
            summary = runs.train(cli.replace(train, workdir=workdir, **point))
        except runs.Diverged as e:
            print(f"[search]   diverged: {e}", flush=True)
            return math.nan
        return search.final_eval_loss(summary, val_set)

    return run


def run_search(grid: search.Grid, start: Mapping, root: str,
               launch: Callable[[Mapping], float]) -> SearchSummary:
    """Search with any launcher; writes <root>/search.json and search.png."""
    result = search.search(grid, start, launch, fs.join(root, "results.jsonl"))
    summary = SearchSummary(best=result.best, best_loss=result.best_loss,
                            certified=result.certified, at_bound=tuple(result.at_bound),
                            runs=len(result.results), new_runs=result.new_runs, grid=grid.axes)
    fs.write_text(fs.join(root, "search.json"), json.dumps(summary.as_dict(), indent=1) + "\n")
    plots.plot_search(grid, result.results, fs.join(root, "search.png"),
                      x_axis=grid.names[0], y_axis=grid.names[1], best=result.best)
    return summary


def run(cfg: SearchConfig) -> SearchSummary:
    return run_search(cfg.search_grid(), cfg.start_point(), cfg.root,
                      launcher(cfg.train, cfg.root, cfg.val_set))
