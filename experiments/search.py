"""Certified hyper-parameter search: hill-climb the papers' grid with training runs until the
best point's one-step neighbours are all run and none is better. search.json says `certified`
only when that point is also interior; else `at_bound` lists the axes to widen.

    python -m experiments.search --grid=synthetic --root=gs://b/search/stitched \\
        --start=lr=3e-3,weight_decay=0.8,epochs=8,mix=0.75 --val_set=iid \\
        --train_flags="--preset=300m --real=gs://b/stores/real --synthetic=gs://b/stores/stitched \\
                       --val=iid=gs://b/stores/val"

Runs go one after another in this process (megadoc.pipelines.search), each in <root>/<point>;
every finished run is appended to <root>/results.jsonl, so rerunning the command resumes the
search (and an interrupted run resumes from its own checkpoint). Writes <root>/search.json and
<root>/search.png.
"""
from __future__ import annotations

import shlex

from absl import flags

from megadoc import cli
from megadoc.pipelines import runs, search

FLAGS = cli.command_flags(search.SearchConfig, skip=("train",))
flags.DEFINE_string("train_flags", "", "experiments.train flags of the run every point starts "
                    "from", flag_values=FLAGS)


def build_config(f=FLAGS) -> search.SearchConfig:
    start = search.parse_point(f.start)
    train = runs.train_config_from_argv(shlex.split(f.train_flags), workdir=f.root, **start)
    return cli.build(search.SearchConfig, f, train=train)


if __name__ == "__main__":
    cli.run_flags(lambda: search.run(build_config()), FLAGS)
