"""Certified hyper-parameter search: hill-climb the papers' grid with experiments.train runs
until the best point's one-step neighbours are all run and none is better. search.json says
`certified` only when that point is also interior; else `at_bound` lists the axes to widen.

    python -m experiments.search --grid=synthetic --root=gs://b/search/stitched \\
        --start=lr=3e-3,weight_decay=0.8,epochs=8,mix=0.75 --val_set=iid \\
        --train_flags="--preset=300m --real=gs://b/stores/real --synthetic=gs://b/stores/stitched \\
                       --val=iid=gs://b/stores/val"

Runs go one after another (or --parallel at once), each in <root>/<point>; every finished run is appended to
<root>/results.jsonl, so rerunning the command resumes the search (and an interrupted training
run resumes from its own checkpoint). Writes <root>/search.json and <root>/search.png.
"""
from __future__ import annotations

import json
import shlex

from absl import app, flags

from megadoc import cli

# Own FlagValues: see experiments/ensemble.py.
FLAGS = flags.FlagValues()
flags.DEFINE_string("grid", "synthetic", "grid preset: real (lr, weight_decay, epochs) | synthetic "
                    "(+ mix) | synthetic-only (mix 1, epochs over the synthetic store: the "
                    "megadocs paper's no-real-data ablation, Appendix D.1) | toy-real | "
                    "toy-synthetic (2 values an axis)", flag_values=FLAGS)
flags.DEFINE_multi_string("axis", [], "NAME=V1,V2,... replaces one axis's values (repeatable)", flag_values=FLAGS)
flags.DEFINE_string("start", None, "the first guess, NAME=VALUE,... for every axis", flag_values=FLAGS)
flags.DEFINE_string("root", None, "directory for the runs and results (local or gs://)", flag_values=FLAGS)
flags.DEFINE_string("val_set", "iid", "the --val NAME whose final loss is minimised", flag_values=FLAGS)
flags.DEFINE_string("train_flags", "", "flags passed to every experiments.train run", flag_values=FLAGS)
flags.DEFINE_integer("parallel", 1, "training runs at once (each neighbour of the best point is one run)",
                     flag_values=FLAGS)


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def build_grid(preset: str, overrides):
    from megadoc.analysis import search

    axes = dict(search.grid_preset(preset).axes)
    for item in overrides:
        name, sep, values = item.partition("=")
        if not sep or name not in axes:
            raise app.UsageError(f"--axis={item!r}: expected NAME=V1,V2,... with NAME in {sorted(axes)}")
        axes[name] = tuple(_number(v) for v in values.split(","))
    return search.Grid(tuple(axes.items()))


def parse_point(text: str) -> dict:
    point = {}
    for item in (text or "").split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise app.UsageError(f"--start={text!r}: expected NAME=VALUE,...")
        point[name.strip()] = _number(value)
    return point


def run_search(grid, start: dict, root: str, launcher, parallel: int = 1) -> dict:
    from megadoc import fs
    from megadoc.analysis import plots, search

    result = search.search(grid, start, launcher, fs.join(root, "results.jsonl"), parallel)
    summary = {"best": result.best, "best_loss": result.best_loss, "certified": result.certified,
               "at_bound": list(result.at_bound), "runs": len(result.results),
               "grid": {name: list(v) for name, v in grid.axes}}
    fs.write_text(fs.join(root, "search.json"), json.dumps(summary, indent=1) + "\n")
    plots.plot_search(grid, result.results, fs.join(root, "search.png"),
                      x_axis=grid.names[0], y_axis=grid.names[1], best=result.best)
    return summary


def main(argv):
    del argv
    from megadoc.analysis import search

    if not FLAGS.root or not FLAGS.start:
        raise app.UsageError("--root and --start are required")
    grid = build_grid(FLAGS.grid, FLAGS.axis)
    launcher = search.TrainLauncher(FLAGS.root, tuple(shlex.split(FLAGS.train_flags)), FLAGS.val_set)
    run_search(grid, parse_point(FLAGS.start), FLAGS.root, launcher, FLAGS.parallel)


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
