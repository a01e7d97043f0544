"""The main job: the whole megadoc pipeline at toy scale on CPU.

    make demo                                   # = python -m experiments.demo
    python -m experiments.demo --scale=smoke --workdir=/tmp/megadoc-smoke

Rerunning skips finished stages and resumes one cut short. Results land in
<workdir>/results.md, results.json and val_loss.png.
"""
import os

from absl import app, flags

from experiments import cli

flags.DEFINE_string("workdir", "workdir/demo", "where every stage writes (local or gs://)")
flags.DEFINE_enum("scale", "small", ["smoke", "small"], "smoke: ~2 min; small: the demo, ~15 min")
flags.DEFINE_integer("seed", 0, "seed of the split, the data order and every model")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    from megadoc import demo

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    demo.run(FLAGS.workdir, FLAGS.scale, FLAGS.seed)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cli.run(main)
