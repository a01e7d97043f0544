"""Multiple-choice accuracy (PIQA, SciQ, ARC-Easy; lm-eval-harness scoring) of a model: a
megadoc training run or a Hugging Face Llama directory (--model), or an ensemble of runs
(several --workdirs: members' logits averaged).

    python -m experiments.benchmarks --model=gs://b/runs/stitched --tokenizer=gs://b/tok \\
        --piqa=piqa_validation.jsonl --sciq=sciq_test.jsonl --arc_easy=arc_easy_test.jsonl
    python -m experiments.benchmarks --model=gs://b/llama-hf --piqa=... --output=gs://b/llama.json
    python -m experiments.benchmarks --workdirs=gs://b/ens/member_0,...,gs://b/ens/member_7 \\
        --tokenizer=gs://b/tok --piqa=... --sciq=... --arc_easy=... --output=gs://b/ens/benchmarks.json

Each file is local JSONL in the dataset's own layout (as exported from Hugging Face datasets).
Scoring matches lm-evaluation-harness's HF backend: float32 by default, the tokenizer's BOS
before each context, special-token text read as lm-eval reads it (megadoc.analysis.benchmarks).
Prints and writes {"piqa": {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}, ...,
"average": {"acc", "acc_norm"}}.
"""
from megadoc import cli
from megadoc.analysis import ensemble
from megadoc.pipelines import benchmarks

FLAGS = cli.command_flags(benchmarks.BenchmarksConfig,
                          choices={"dtype": benchmarks.DTYPES, "average": ensemble.AVERAGES})


def run(f=FLAGS) -> dict:
    return benchmarks.run(cli.build(benchmarks.BenchmarksConfig, f))


if __name__ == "__main__":
    cli.run_flags(run, FLAGS)
