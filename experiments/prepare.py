"""Tokenize documents (+ generations) into a window store for training.

    python -m experiments.prepare --docs=gs://b/docs --recipe=real \\
        --tokenizer=gs://b/tok/tokenizer.json --seq_len=4096 --seed=0 --output=gs://b/stores/real
    python -m experiments.prepare --docs=gs://b/docs --generations=gs://b/rephrases \\
        --recipe=stitched --real_position=last --tokenizer=... --seq_len=4096 --seed=0 \\
        --output=gs://b/stores/stitched

The store's metadata.json (written last) records settings, counts and skipped records.
"""
from absl import flags

from experiments import cli

from megadoc.data import megadocs
from megadoc.data.prepare import PrepareConfig, prepare

flags.DEFINE_string("docs", None, "Source documents {id, text}: JSONL(.gz)/Parquet file, dir or glob.")
flags.DEFINE_string("generations", None, "Generation records (synthetic recipes only): files, "
                    "dirs or globs, comma-separated (e.g. qa,focal: any methods mixed).")
flags.DEFINE_enum("recipe", None, list(megadocs.RECIPES), "Which stream to build.")
flags.DEFINE_enum("real_position", "last", list(megadocs.REAL_POSITIONS),
                  "stitched only: where the real text sits in the megadoc.")
flags.DEFINE_bool("include_real", True, "Also put the real document in the synthetic stream.")
flags.DEFINE_string("tokenizer", None, "sentencepiece .model, tokenizer.json, a dir with one, or "
                    "the base model's .gguf / HF dir (continued pre-training).")
flags.DEFINE_integer("seq_len", None, "Window length; windows hold seq_len+1 tokens.")
flags.DEFINE_integer("seed", 0, "Seed of the document permutation.")
flags.DEFINE_string("output", None, "Store directory (local or gs://).")
flags.DEFINE_integer("workers", 1, "Tokenizer processes.")
flags.DEFINE_integer("buckets", 64, "Spill buckets; memory holds one bucket (~corpus/buckets).")
flags.mark_flags_as_required(["docs", "recipe", "tokenizer", "seq_len", "output"])
FLAGS = flags.FLAGS


def config_from_flags() -> PrepareConfig:
    return PrepareConfig(
        docs=FLAGS.docs, generations=FLAGS.generations, recipe=FLAGS.recipe,
        real_position=FLAGS.real_position, include_real=FLAGS.include_real,
        tokenizer=FLAGS.tokenizer, seq_len=FLAGS.seq_len, seed=FLAGS.seed, output=FLAGS.output,
        workers=FLAGS.workers, buckets=FLAGS.buckets)


def main(argv):
    del argv
    prepare(config_from_flags())


if __name__ == "__main__":
    cli.run(main)
