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

from experiments import cli, own_flags

# Its own flag namespace: other experiment modules define --seed, --docs, ... in the global one.
FLAGS = flags.FlagValues()
_IN = {"flag_values": FLAGS}
flags.DEFINE_enum("method", None, ["rephrase", "latent_thoughts"], "what to generate", **_IN)
flags.DEFINE_string("generator", None, "Hugging Face Llama dir with its tokenizer (local/gs://)",
                    **_IN)
flags.DEFINE_string("docs", None, "source docs {id, text}: JSONL(.gz)/Parquet file, dir or glob",
                    **_IN)
flags.DEFINE_string("output", None, "output directory (local or gs://)", **_IN)
flags.DEFINE_integer("generations", 1, "rephrase: samples per document", **_IN)
flags.DEFINE_integer("splits", 1, "latent_thoughts: split points per document (k+1 pieces)", **_IN)
flags.DEFINE_integer("max_new_tokens", None, "default: 1024 (rephrase) / 512 (latent_thoughts)",
                     **_IN)
flags.DEFINE_float("temperature", 1.0, "sampling temperature (0: greedy)", **_IN)
flags.DEFINE_integer("seed", 0, "seed of every (document, sample) random stream", **_IN)
flags.DEFINE_integer("batch_size", 64, "sequences decoded together (slots)", **_IN)
flags.DEFINE_integer("shard_size", 256, "documents per output shard", **_IN)
flags.DEFINE_string("template", None, "prompt template file (default: the one shipped)", **_IN)
flags.DEFINE_integer("tensor_parallel", 1, "devices each model copy is split over", **_IN)
flags.DEFINE_integer("process_id", None, "this process's index (default: jax.process_index())",
                     **_IN)
flags.DEFINE_integer("num_processes", None, "processes (default: jax.process_count())", **_IN)

def build_config(f=FLAGS):
    from megadoc.synth import job

    missing = [n for n in ("method", "generator", "docs", "output") if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join('--' + n for n in missing)}")
    if f.method == "rephrase" and f["splits"].present:
        raise app.UsageError("--splits is for --method=latent_thoughts; use --generations")
    if f.method == "latent_thoughts" and f["generations"].present:
        raise app.UsageError("--generations is for --method=rephrase; use --splits")
    return job.JobConfig(
        method=f.method, generator=f.generator, docs=f.docs, output=f.output,
        generations=f.generations, splits=f.splits, max_new_tokens=f.max_new_tokens,
        temperature=f.temperature, seed=f.seed, batch_size=f.batch_size,
        shard_size=f.shard_size, template=f.template, tensor_parallel=f.tensor_parallel,
        process_id=f.process_id, num_processes=f.num_processes)


def main(argv):
    del argv
    from megadoc.synth import job

    job.run(build_config())


if __name__ == "__main__":
    cli.run(main, flags_parser=own_flags.parser(FLAGS))
