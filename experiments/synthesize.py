"""Generate synthetic text from source documents with a generator LLM.

    python -m experiments.synthesize --method=rephrase --generator=HF_DIR --docs=DOCS \\
        --output=DIR --generations=4 [--max_new_tokens=1024 --temperature=1.0 --seed=0]
    python -m experiments.synthesize --method=latent_thoughts --generator=HF_DIR --docs=DOCS \\
        --output=DIR --splits=8 [--max_new_tokens=512 ...]
    python -m experiments.synthesize --method=qa --generator=HF_DIR --docs=DOCS --output=QA \\
        --generations=8
    python -m experiments.synthesize --method=focal_rewrite --questions=QA --generator=HF_DIR \\
        --docs=DOCS --output=FOCAL --generations=2 --temperature=0.7 --top_p=0.95
    python -m experiments.synthesize --method=entigraph --generator=HF_DIR --docs=DOCS \\
        --output=EG --pairs=16 --triples=8     # EG/entities (stage 1), then EG/relations

The entigraph stages also run alone: --method=entigraph_entities, and --method=
entigraph_relations --entities=EG/entities (each takes its own --template).

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
flags.DEFINE_enum("method", None, ["rephrase", "latent_thoughts", "qa", "focal_rewrite",
                                    "entigraph", "entigraph_entities", "entigraph_relations"],
                  "what to generate", **_IN)
flags.DEFINE_string("generator", None, "Hugging Face Llama dir with its tokenizer (local/gs://)",
                    **_IN)
flags.DEFINE_string("docs", None, "source docs {id, text}: JSONL(.gz)/Parquet file, dir or glob",
                    **_IN)
flags.DEFINE_string("output", None, "output directory (local or gs://)", **_IN)
flags.DEFINE_integer("generations", 1, "rephrase, qa: samples per document; focal_rewrite: "
                     "rewrites per question", **_IN)
flags.DEFINE_string("questions", None, "focal_rewrite: records with a question per document "
                    "(qa output)", **_IN)
flags.DEFINE_string("entities", None, "entigraph_relations: entigraph_entities output", **_IN)
flags.DEFINE_integer("pairs", 0, "entigraph: entity pairs per document (seeded sample)", **_IN)
flags.DEFINE_integer("triples", 0, "entigraph: entity triples per document (seeded sample)",
                     **_IN)
flags.DEFINE_integer("splits", 1, "latent_thoughts: split points per document (k+1 pieces)", **_IN)
flags.DEFINE_integer("max_new_tokens", None, "default: the method's (megadoc/synth/job.py "
                     "PAPER_MAX_NEW_TOKENS)", **_IN)
flags.DEFINE_float("temperature", 1.0, "sampling temperature (0: greedy)", **_IN)
flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1: off)", **_IN)
flags.DEFINE_integer("seed", 0, "seed of every (document, sample) random stream", **_IN)
flags.DEFINE_integer("batch_size", 64, "sequences decoded together (slots)", **_IN)
flags.DEFINE_integer("shard_size", 256, "documents per output shard", **_IN)
flags.DEFINE_string("template", None, "prompt template file (default: the one shipped)", **_IN)
flags.DEFINE_integer("tensor_parallel", 1, "devices each model copy is split over", **_IN)
flags.DEFINE_integer("process_id", None, "this process's index (default: jax.process_index())",
                     **_IN)
flags.DEFINE_integer("num_processes", None, "processes (default: jax.process_count())", **_IN)

# Flags that only some methods read; any other method refuses them.
_METHOD_FLAGS = {"generations": ("rephrase", "qa", "focal_rewrite"),
                 "splits": ("latent_thoughts",), "questions": ("focal_rewrite",),
                 "entities": ("entigraph_relations",),
                 "pairs": ("entigraph", "entigraph_relations"),
                 "triples": ("entigraph", "entigraph_relations")}


def build_configs(f=FLAGS) -> list:
    """The job(s) the flags describe: one, or EntiGraph's two stages in order."""
    from megadoc.synth import job
    from megadoc import fs

    missing = [n for n in ("method", "generator", "docs", "output") if not getattr(f, n)]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join('--' + n for n in missing)}")
    for name, methods in _METHOD_FLAGS.items():
        if f[name].present and f.method not in methods:
            raise app.UsageError(f"--{name} is for --method={'|'.join(methods)}, not "
                                 f"--method={f.method}")
    if f.method == "entigraph" and f.template:
        raise app.UsageError("--method=entigraph uses the shipped templates; run its stages "
                             "(entigraph_entities, entigraph_relations) to pass --template")
    common = dict(generator=f.generator, docs=f.docs, max_new_tokens=f.max_new_tokens,
                  temperature=f.temperature, top_p=f.top_p, seed=f.seed,
                  batch_size=f.batch_size, shard_size=f.shard_size,
                  tensor_parallel=f.tensor_parallel, process_id=f.process_id,
                  num_processes=f.num_processes)
    try:
        if f.method == "entigraph":
            entities = fs.join(f.output, "entities")
            return [job.JobConfig(method="entigraph_entities", output=entities, **common),
                    job.JobConfig(method="entigraph_relations", output=fs.join(f.output,
                                  "relations"), entities=entities, pairs=f.pairs,
                                  triples=f.triples, **common)]
        return [job.JobConfig(method=f.method, output=f.output, generations=f.generations,
                              splits=f.splits, questions=f.questions, entities=f.entities,
                              pairs=f.pairs, triples=f.triples, template=f.template, **common)]
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def build_config(f=FLAGS):
    """The single job the flags describe (every method but entigraph, which has two)."""
    configs = build_configs(f)
    if len(configs) != 1:
        raise app.UsageError(f"--method={f.method} runs {len(configs)} jobs")
    return configs[0]


def main(argv):
    del argv
    from megadoc.synth import job

    for cfg in build_configs():
        job.run(cfg)


if __name__ == "__main__":
    cli.run(main, flags_parser=own_flags.parser(FLAGS))
