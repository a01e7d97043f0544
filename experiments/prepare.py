"""Tokenize documents (+ generations) into a window store for training.

    python -m experiments.prepare --docs=gs://b/docs --recipe=real \\
        --tokenizer=gs://b/tok/tokenizer.json --seq_len=4096 --seed=0 --output=gs://b/stores/real
    python -m experiments.prepare --docs=gs://b/docs --generation_records=gs://b/rephrases \\
        --recipe=stitched --real_position=last --tokenizer=... --seq_len=4096 --seed=0 \\
        --output=gs://b/stores/stitched [--max_generations=8]

The store's metadata.json (written last) records settings, counts and skipped records.
"""
from absl import flags

from megadoc import cli
from megadoc.data import megadocs
from megadoc.data.prepare import PrepareConfig, prepare

FLAGS = cli.command_flags(PrepareConfig, defaults={"seed": 0}, choices={
    "recipe": megadocs.RECIPES, "real_position": megadocs.REAL_POSITIONS})
flags.mark_flags_as_required(["docs", "recipe", "tokenizer", "seq_len", "output"], FLAGS)


def config_from_flags() -> PrepareConfig:
    return cli.build(PrepareConfig, FLAGS)


if __name__ == "__main__":
    cli.run_flags(lambda: prepare(config_from_flags()), FLAGS)
