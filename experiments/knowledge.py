"""Knowledge acquisition end to end (Synthetic Mixed Training / EntiGraph): synthesize from a
small corpus, continue pre-training the base model on it, evaluate closed-book and with RAG,
and plot accuracy against synthetic tokens.

    python -m experiments.knowledge --generator=SmolLM2-135M-Instruct.gguf \\
        --quality=quality_dev.jsonl --workdir=/tmp/knowledge --methods=qa,focal_rewrite \\
        --volumes=1,2,4 --seq_len=512 --epochs=2 --lr=1e-4

The corpus is the QuALITY file's articles (default: the fixture megadoc ships). Synthesis runs
once at the largest volume: `qa` writes V question–answer pairs per article and
`focal_rewrite` one rewrite per question; `entigraph` writes 3·V entity groups (EntiGraph's
order: every pair, then triples). Volume v trains on the QA pairs with sample < v and the
rewrites of their questions (the first 3·v groups for EntiGraph), so smaller volumes are exact
subsets of larger ones. Each volume gets a `simple` store (the articles and every generation) and a CPT run from
--base (default: the generator); --replay=STORE mixes generic text at --replay_mix (10% in both
papers). Rerunning resumes every stage. Writes <workdir>/results.json (per mode, for the base
model and each volume: accuracy and n; each stage's wall seconds) and accuracy.png.
"""
from __future__ import annotations

import json
import time

from absl import app, flags

from megadoc import cli

FLAGS = flags.FlagValues()
_IN = {"flag_values": FLAGS}
flags.DEFINE_string("generator", None, "synthesis model: .gguf or Hugging Face directory", **_IN)
flags.DEFINE_string("base", None, "model to continue pre-training (default: --generator)", **_IN)
flags.DEFINE_string("quality", None, "QuALITY-format JSONL (default: the shipped fixture)", **_IN)
flags.DEFINE_string("workdir", None, "output directory (local or gs://)", **_IN)
flags.DEFINE_list("methods", ["qa", "focal_rewrite"], "qa, focal_rewrite (needs qa), entigraph",
                  **_IN)
flags.DEFINE_list("volumes", ["1", "2", "4"], "synthetic volumes (QA pairs per article)", **_IN)
flags.DEFINE_integer("max_new_tokens", 256, "per generation", **_IN)
flags.DEFINE_integer("batch_size", 8, "sequences decoded together", **_IN)
flags.DEFINE_integer("seq_len", 512, "CPT window length", **_IN)
flags.DEFINE_integer("epochs", 2, "CPT passes over the synthetic store", **_IN)
flags.DEFINE_float("lr", 1e-4, "CPT peak learning rate", **_IN)
flags.DEFINE_float("weight_decay", 0.01, "CPT weight decay", **_IN)
flags.DEFINE_integer("global_batch", 16, "CPT windows per step", **_IN)
flags.DEFINE_string("replay", None, "store of generic text replayed during CPT (same "
                    "tokenizer)", **_IN)
flags.DEFINE_float("replay_mix", 0.1, "fraction of each CPT batch from --replay", **_IN)
flags.DEFINE_integer("top_k", 8, "RAG chunks in the prompt (retrieved from every article)",
                     **_IN)
flags.DEFINE_enum("split", "all", ["all", "dev", "test"], "questions evaluated: dev (a fixed "
                  "fifth of the articles, by id; tune on it), test (the rest) or all; synthesis "
                  "and retrieval use every article", **_IN)
flags.DEFINE_integer("seed", 0, "seed of synthesis, data order and entity sampling", **_IN)


def _synthesize(f, docs: str, synth_dir: str, max_volume: int) -> dict[str, str]:
    """{method: records dir}, every method run (or resumed) at the largest volume."""
    from megadoc import fs
    from megadoc.synth import job

    common = dict(generator=f.generator, docs=docs, max_new_tokens=f.max_new_tokens,
                  seed=f.seed, batch_size=f.batch_size, shard_size=64)
    out = {}
    if "focal_rewrite" in f.methods and "qa" not in f.methods:
        raise app.UsageError("--methods=focal_rewrite rewrites for the questions of qa: add qa")
    if "qa" in f.methods:
        out["qa"] = fs.join(synth_dir, "qa")
        job.run(job.JobConfig(method="qa", output=out["qa"], generations=max_volume,
                              temperature=1.0, **common))
    if "focal_rewrite" in f.methods:
        out["focal_rewrite"] = fs.join(synth_dir, "focal_rewrite")
        job.run(job.JobConfig(method="focal_rewrite", output=out["focal_rewrite"],
                              questions=out["qa"], temperature=0.7, top_p=0.95, **common))
    if "entigraph" in f.methods:
        entities = out["entigraph_entities"] = fs.join(synth_dir, "entigraph_entities")
        out["entigraph"] = fs.join(synth_dir, "entigraph_relations")
        job.run(job.JobConfig(method="entigraph_entities", output=entities, **common))
        job.run(job.JobConfig(method="entigraph_relations", output=out["entigraph"],
                              entities=entities, relations=3 * max_volume,
                              **common))
    unknown = set(f.methods) - {"qa", "focal_rewrite", "entigraph"}
    if unknown:
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}")
    return out


def _volume(records: list[dict], volume: int, max_volume: int) -> list[dict]:
    """The records of volume v: qa samples < v; the focal rewrites of those QA pairs'
    questions; the first 3v groups of EntiGraph's seeded order, and every
    stage-1 summary."""
    qa = [r for r in records if r["method"] == "qa" and r["sample"] < volume]
    questions = {(r["doc_id"], r.get("question")) for r in qa}

    def kept(r):
        s = r["sample"]
        if r["method"] == "focal_rewrite":
            return (r["doc_id"], r.get("question")) in questions
        if r["method"] == "entigraph_relation":
            return s < 3 * volume
        return r["method"] == "entigraph_entities"

    return qa + [r for r in records if r["method"] != "qa" and kept(r)]


def run(f=FLAGS) -> dict:
    from megadoc import compile_cache, fs
    from megadoc.analysis import benchmarks, plots, quality
    from megadoc.data import docs as docs_lib
    from megadoc.data import prepare as prepare_lib
    from megadoc.data import store as store_lib
    from megadoc.models import sharding
    from megadoc.train import loop, pretrained
    from experiments import train as train_main

    if not f.generator or not f.workdir:
        raise app.UsageError("--generator and --workdir are required")
    volumes = sorted({int(v) for v in f.volumes})
    if not volumes or volumes[0] < 1:
        raise app.UsageError("--volumes: positive integers")
    compile_cache.use_workdir_cache(f.workdir)
    base, path = f.base or f.generator, f.quality or quality.FIXTURE
    articles = quality.read_quality(path)
    docs = fs.join(f.workdir, "corpus", "articles.jsonl")
    docs_lib.write_jsonl(docs, [{"id": a.id, "text": a.text} for a in articles])
    seconds, start = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[stage] = round(now - start, 1)
        start = now
        print(f"[knowledge] {stage}: {seconds[stage]:.0f} s", flush=True)

    synth = _synthesize(f, docs, fs.join(f.workdir, "synth"), volumes[-1])
    lap("synthesis")
    records = [r for d in synth.values() for r in docs_lib.read_generations(d)]

    mesh = sharding.make_mesh()
    tokenizer = pretrained.load_tokenizer(base)

    def evaluate(model: str) -> dict:
        config, params = pretrained.load(model, mesh)
        ll = benchmarks.model_loglikelihood(config, params, tokenizer, batch_size=8, mesh=mesh)
        return {mode: quality.evaluate(articles, mode, ll, top_k=f.top_k, split=f.split)
                for mode in quality.MODES}

    def scores(evals: dict) -> dict:
        return {mode: {"accuracy": e["accuracy"], "n": e["n"]} for mode, e in evals.items()}

    results = {"base": scores(evaluate(base)), "volumes": []}
    lap("base evaluation")
    for v in volumes:
        gens = fs.join(f.workdir, "generations", f"volume-{v}.jsonl")
        kept = [{k: x for k, x in r.items() if k != "where"}
                for r in _volume(records, v, volumes[-1])]
        docs_lib.write_jsonl(gens, kept)
        tokens = sum(len(tokenizer.encode(r["text"])) + 1 for r in kept if r["text"])
        store = fs.join(f.workdir, "stores", f"volume-{v}")
        prepare_lib.prepare(prepare_lib.PrepareConfig(
            docs=docs, generations=gens, recipe="simple", include_real=True, tokenizer=base,
            seq_len=f.seq_len, seed=f.seed, output=store))
        lap(f"volume {v} prepare")
        run_dir = fs.join(f.workdir, "runs", f"volume-{v}")
        train_main.FLAGS.unparse_flags()
        train_main.FLAGS(["train", f"--init={base}", f"--workdir={run_dir}", f"--real={store}",
                          f"--epochs={f.epochs}", f"--lr={f.lr}",
                          f"--weight_decay={f.weight_decay}", f"--global_batch={f.global_batch}",
                          f"--seed={f.seed}", "--checkpoint_every_minutes=0", "--mesh=1,-1,1"]
                         + ([f"--synthetic={f.replay}", f"--mix={f.replay_mix}"]
                            if f.replay else []))
        try:
            loop.train(train_main.build_config())
        finally:  # back to defaults: parsed, so absl's own error handler can read its flags
            train_main.FLAGS.unparse_flags()
            train_main.FLAGS(["train"])
        lap(f"volume {v} CPT")
        evals = evaluate(run_dir)
        lap(f"volume {v} evaluation")
        results["volumes"].append({"volume": v, "synthetic_tokens": tokens,
                                   "records": len(kept),
                                   "records_with_text": sum(1 for r in kept if r["text"]),
                                   "store_tokens": int(store_lib.open(store).metadata["num_tokens"]),
                                   **scores(evals)})
        fs.write_text(fs.join(run_dir, "qa_eval.json"), json.dumps(evals, indent=1))
        print(f"[knowledge] volume {v}: {tokens} tokens, closed-book "
              f"{evals['closed_book']['accuracy']:.3f}, RAG {evals['rag']['accuracy']:.3f}",
              flush=True)
    curves = {mode: ([r["synthetic_tokens"] for r in results["volumes"]],
                     [r[mode]["accuracy"] for r in results["volumes"]]) for mode in quality.MODES}
    results["fits"] = plots.plot_accuracy_vs_tokens(
        curves, {mode: a["accuracy"] for mode, a in results["base"].items()},
        fs.join(f.workdir, "accuracy.png"),
        title=f"{'+'.join(f.methods)} on {len(articles)} articles")
    results.update(generator=f.generator, base_model=base, quality=path, split=f.split,
                   methods=list(f.methods),
                   stage_seconds=seconds)
    fs.write_text(fs.join(f.workdir, "results.json"), json.dumps(results, indent=1) + "\n")
    print("[knowledge] " + json.dumps({k: results[k] for k in ("base", "volumes")}), flush=True)
    return results


if __name__ == "__main__":
    cli.run_flags(run, FLAGS)
