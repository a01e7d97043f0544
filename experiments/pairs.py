"""Pair each document with its nearest neighbours (Synthetic Bootstrapped Pretraining's step 1).

    python -m experiments.pairs --model=BASE --docs=DOCS --output=DIR [--threshold=0.75 \\
        --duplicate_above=0.98 --neighbours=8 --max_tokens=512]

BASE is a .gguf file, a Hugging Face Llama directory or a megadoc workdir: documents are
embedded as its mean-pooled final hidden states, in shards a rerun resumes (DIR/embeddings,
the synthesis job's layout). DIR/pairs.jsonl then holds {"x1", "x2", "score"} for every
document and each neighbour whose score (cosine of the centred embeddings) is at least
--threshold and below --duplicate_above (near-duplicates); DIR/summary.json the distribution of
the scores. Several hosts: the same command with --process_id=i --num_processes=n; a rerun after
all are done writes the pairs. Details: megadoc/analysis/neighbours.py.
"""
from megadoc import cli
from megadoc.analysis import neighbours

FLAGS = cli.command_flags(neighbours.PairsConfig)


def main():
    neighbours.run(cli.build(neighbours.PairsConfig, FLAGS))


if __name__ == "__main__":
    cli.run_flags(main, FLAGS)
