"""Generate synthetic text from source documents with a generator LLM.

    python -m experiments.synthesize --method=rephrase --generator=HF_DIR --docs=DOCS \\
        --output=DIR --generations=4 [--max_new_tokens=1024 --temperature=1.0 --seed=0]
    python -m experiments.synthesize --method=latent_thoughts --generator=HF_DIR --docs=DOCS \\
        --output=DIR --splits=8 [--max_new_tokens=512 ...]

HF_DIR is a Hugging Face Llama directory with its tokenizer (e.g. Llama 3.1 8B Instruct).
Rerunning the same command resumes: finished shards are kept, unfinished ones redone. Several
hosts: run the same command on each with --process_id=i --num_processes=n (or under
jax.distributed, whose process index and count are the defaults). Records, layout and finish
reasons: megadoc/synth/job.py.
"""
from __future__ import annotations


from absl import app, flags

from megadoc import cli
from megadoc.synth import job

# Its own flag namespace: other experiment modules define --seed, --docs, ... in the global one.
FLAGS = flags.FlagValues()
cli.define_fields(job.JobConfig, FLAGS, choices={"method": list(job.RECORD_METHOD)})


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
    job.run(build_config())


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
