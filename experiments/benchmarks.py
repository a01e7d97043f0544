"""Multiple-choice accuracy (PIQA, SciQ, ARC-Easy; lm-eval-harness scoring) of a model: a
megadoc training run, a Hugging Face Llama directory or a GGUF file (--model), or an ensemble of
runs (several --workdirs: members' logits averaged). The tokenizer is the model's own (a run's:
the one its stores were prepared with) unless --tokenizer overrides it.

    python -m experiments.benchmarks --model=gs://b/runs/stitched \\
        --piqa=piqa_validation.jsonl --sciq=sciq_test.jsonl --arc_easy=arc_easy_test.jsonl
    python -m experiments.benchmarks --model=gs://b/llama-hf --piqa=... --output=gs://b/llama.json
    python -m experiments.benchmarks --workdirs=gs://b/ens/member_0,...,gs://b/ens/member_7 \\
        --piqa=... --sciq=... --arc_easy=... --output=gs://b/ens/benchmarks.json

Each file is local JSONL in the dataset's own layout (as exported from Hugging Face datasets).
Scoring matches lm-evaluation-harness's HF backend: float32 by default, the tokenizer's BOS
before each context, special-token text read as lm-eval reads it (megadoc.analysis.benchmarks).
Prints and writes {"piqa": {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}, ...,
"average": {"acc", "acc_norm"}}.
"""
from __future__ import annotations

import json

from absl import app, flags

from megadoc import cli

# Own FlagValues: see experiments/ensemble.py.
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "a megadoc training run (its newest checkpoint), a Hugging Face "
                    "Llama directory or a GGUF file", flag_values=FLAGS)
flags.DEFINE_list("workdirs", [], "training run(s) whose newest checkpoints are scored; several = "
                  "an ensemble", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype of the scoring "
                  "forward pass (lm-eval scores in float32)", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "checkpoint step of a single run (default: the newest)", flag_values=FLAGS)
flags.DEFINE_enum("average", "logits", ["logits", "probs"], "how ensemble members are combined",
                  flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "override the model's own tokenizer (default: the GGUF "
                    "file's, the Hugging Face directory's, or the one a run's stores were "
                    "prepared with)", flag_values=FLAGS)
flags.DEFINE_string("piqa", None, "PIQA JSONL {goal, sol1, sol2, label}", flag_values=FLAGS)
flags.DEFINE_string("sciq", None, "SciQ JSONL {question, distractor1-3, correct_answer, support}", flag_values=FLAGS)
flags.DEFINE_string("arc_easy", None, "ARC-Easy JSONL (nested or flat Hugging Face layout)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "sequences per forward pass", flag_values=FLAGS)
flags.DEFINE_string("output", None, "JSON results path (default for one run: <workdir>/benchmarks.json)",
                    flag_values=FLAGS)


def run(f=FLAGS) -> dict:
    from megadoc import fs
    from megadoc.analysis import benchmarks, ensemble
    from megadoc.models import sharding
    from megadoc.train import pretrained

    import dataclasses

    if bool(f.model) == bool(f.workdirs):
        raise app.UsageError("pass --model (a run, a Hugging Face directory or a GGUF file) or "
                             "--workdirs")
    workdirs = [f.model] if f.model else list(f.workdirs)
    if len(workdirs) > 1 and (f.step is not None or not f.output):
        raise app.UsageError("an ensemble (several --workdirs) takes --output and no --step")
    if pretrained.kind(workdirs[0]) != "workdir" and (f.step is not None or not f.output):
        raise app.UsageError("a Hugging Face or GGUF --model takes --output and no --step")
    paths = {task: getattr(f, task) for task in benchmarks.READERS if getattr(f, task)}
    if not paths:
        raise app.UsageError(f"pass at least one of --{', --'.join(benchmarks.READERS)}")
    tokenizer = pretrained.load_tokenizer(workdirs[0], f.tokenizer)
    for member in workdirs[1:]:
        pretrained.check_tokenizer(member, tokenizer)
    average = None
    if len(workdirs) == 1:
        config, params = pretrained.load(workdirs[0], step=f.step)
    else:
        config, params = ensemble.load_members(workdirs)
        average = f.average
    config = dataclasses.replace(config, dtype=f.dtype)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{tokenizer.path}: vocab {tokenizer.vocab_size} exceeds the model's {config.vocab_size}")
    loglikelihood = benchmarks.model_loglikelihood(config, params, tokenizer, batch_size=f.batch_size,
                                                   mesh=sharding.make_mesh(), ensemble_average=average)
    results = benchmarks.evaluate(paths, loglikelihood)
    results["model"], results["workdirs"], results["step"] = f.model, workdirs, f.step
    results["dtype"] = f.dtype
    fs.write_text(f.output or fs.join(workdirs[0], "benchmarks.json"), json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    cli.run_flags(run, FLAGS)
