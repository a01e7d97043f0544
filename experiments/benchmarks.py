"""Multiple-choice accuracy (PIQA, SciQ, ARC-Easy; lm-eval-harness scoring) of a trained run,
or of an ensemble of runs (several --workdirs: members' logits averaged).

    python -m experiments.benchmarks --workdirs=gs://b/runs/stitched --tokenizer=gs://b/tok \\
        --piqa=piqa_validation.jsonl --sciq=sciq_test.jsonl --arc_easy=arc_easy_test.jsonl
    python -m experiments.benchmarks --workdirs=gs://b/ens/member_0,...,gs://b/ens/member_7 \\
        --tokenizer=gs://b/tok --piqa=... --sciq=... --arc_easy=... --output=gs://b/ens/benchmarks.json

Each file is local JSONL in the dataset's own layout (as exported from Hugging Face datasets).
Choices are scored after the tokenizer's EOS, the document separator the students train with.
Prints and writes {"piqa": {"acc", "acc_norm", "n"}, ..., "average": {"acc", "acc_norm"}}.
"""
from __future__ import annotations

import json

from absl import app, flags

from experiments import cli, own_flags

# Own FlagValues: see experiments/ensemble.py.
FLAGS = flags.FlagValues()
flags.DEFINE_list("workdirs", [], "training run(s) whose newest checkpoints are scored; several = "
                  "an ensemble", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "checkpoint step of a single run (default: the newest)", flag_values=FLAGS)
flags.DEFINE_enum("average", "logits", ["logits", "probs"], "how ensemble members are combined",
                  flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "the run's tokenizer (.model, tokenizer.json or a dir)", flag_values=FLAGS)
flags.DEFINE_string("piqa", None, "PIQA JSONL {goal, sol1, sol2, label}", flag_values=FLAGS)
flags.DEFINE_string("sciq", None, "SciQ JSONL {question, distractor1-3, correct_answer, support}", flag_values=FLAGS)
flags.DEFINE_string("arc_easy", None, "ARC-Easy JSONL (nested or flat Hugging Face layout)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "sequences per forward pass", flag_values=FLAGS)
flags.DEFINE_string("output", None, "JSON results path (default for one run: <workdir>/benchmarks.json)",
                    flag_values=FLAGS)


def run(f=FLAGS) -> dict:
    from experiments.ensemble import load_members
    from megadoc import fs
    from megadoc.analysis import benchmarks
    from megadoc.data import tokenizer as tokenizer_lib
    from megadoc.models import sharding
    from megadoc.train import checkpoint

    if not f.workdirs or not f.tokenizer:
        raise app.UsageError("--workdirs and --tokenizer are required")
    if len(f.workdirs) > 1 and (f.step is not None or not f.output):
        raise app.UsageError("an ensemble (several --workdirs) takes --output and no --step")
    paths = {task: getattr(f, task) for task in benchmarks.READERS if getattr(f, task)}
    if not paths:
        raise app.UsageError(f"pass at least one of --{', --'.join(benchmarks.READERS)}")
    tokenizer = tokenizer_lib.load(f.tokenizer)
    for workdir in f.workdirs:
        checkpoint.check_tokenizer(workdir, tokenizer)
    if len(f.workdirs) == 1:
        config, params = checkpoint.load_params(f.workdirs[0], f.step)
        average = None
    else:
        config, params = load_members(f.workdirs)
        average = f.average
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{f.tokenizer}: vocab {tokenizer.vocab_size} exceeds the model's {config.vocab_size}")
    loglikelihood = benchmarks.model_loglikelihood(config, params, tokenizer, batch_size=f.batch_size,
                                                   mesh=sharding.make_mesh(), ensemble_average=average)
    results = benchmarks.evaluate(paths, loglikelihood)
    results["workdirs"], results["step"] = list(f.workdirs), f.step
    fs.write_text(f.output or fs.join(f.workdirs[0], "benchmarks.json"), json.dumps(results, indent=1) + "\n")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run()


if __name__ == "__main__":
    cli.run(main, flags_parser=own_flags.parser(FLAGS))
