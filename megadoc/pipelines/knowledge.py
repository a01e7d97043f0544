"""Knowledge acquisition end to end (Synthetic Mixed Training / EntiGraph): synthesize from a
small corpus, continue pre-training the base model on it, evaluate closed-book and with RAG,
and plot accuracy against synthetic tokens.

Synthesis runs once at the largest volume: `qa` writes V question–answer pairs per article and
`focal_rewrite` one rewrite per question; `entigraph` writes 3·V entity groups (EntiGraph's
order: every pair, then triples). Volume v trains on the QA pairs with sample < v and the
rewrites of their questions (the first 3·v groups for EntiGraph), so smaller volumes are exact
subsets of larger ones. Each volume
gets a `simple` store (the articles and every generation) and a CPT run from the base model
(`runs.train`, in this process). Every stage resumes on a rerun.
"""
from __future__ import annotations

import dataclasses
import json
import time

from megadoc import compile_cache, fs
from megadoc.analysis import benchmarks, plots, quality
from megadoc.data import docs as docs_lib
from megadoc.data import methods as methods_lib
from megadoc.data import prepare as prepare_lib
from megadoc.data import store as store_lib
from megadoc.pipelines import runs
from megadoc.synth import job

# Methods that write from the articles alone run at the largest volume's sample count.
METHODS = (*methods_lib.from_documents("simple"), "focal_rewrite", *methods_lib.STAGED)


@dataclasses.dataclass(frozen=True)
class KnowledgeConfig:
    """The corpus, the synthesis, the CPT runs and the evaluation of one knowledge experiment."""
    generator: str
    """synthesis model: .gguf or Hugging Face directory"""
    workdir: str
    """output directory (local or gs://)"""
    base: str | None = None
    """model to continue pre-training (default: --generator)"""
    quality: str | None = None
    """QuALITY-format JSONL (default: the shipped fixture)"""
    methods: tuple[str, ...] = ("qa", "focal_rewrite")
    """synthesis methods (methods_lib: qa, focal_rewrite, which needs qa, entigraph, ...)"""
    volumes: tuple[int, ...] = (1, 2, 4)
    """synthetic volumes (QA pairs per article)"""
    max_new_tokens: int = 256
    """per generation"""
    batch_size: int = 8
    """sequences decoded together"""
    seq_len: int = 512
    """CPT window length"""
    epochs: int = 2
    """CPT passes over the synthetic store"""
    lr: float = 1e-4
    """CPT peak learning rate"""
    weight_decay: float = 0.01
    """CPT weight decay"""
    global_batch: int = 16
    """CPT windows per step"""
    replay: str | None = None
    """store of generic text replayed during CPT (same tokenizer)"""
    replay_mix: float = 0.1
    """fraction of each CPT batch from --replay"""
    rag_chunks: int = 8
    """RAG: chunks in the prompt, retrieved from every article"""
    split: str = "all"
    """questions evaluated: dev (a fixed fifth of the articles, by id; tune on it), test (the
    rest) or all; synthesis and retrieval use every article"""
    seed: int = 0
    """seed of synthesis, data order and entity sampling"""

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods: unknown {sorted(unknown)}; known: {', '.join(METHODS)}")
        if "focal_rewrite" in self.methods and "qa" not in self.methods:
            raise ValueError("methods: focal_rewrite rewrites for the questions of qa: add qa")
        if self.split not in quality.SPLITS:
            raise ValueError(f"split {self.split!r}: expected one of {quality.SPLITS}")
        if not self.volumes or min(self.volumes) < 1:
            raise ValueError(f"volumes {self.volumes}: positive integers")


@dataclasses.dataclass(frozen=True)
class KnowledgeResult:
    """Accuracy per mode for the base model and each volume (also results.json)."""
    base: dict
    volumes: tuple[dict, ...]
    fits: dict
    stage_seconds: dict

    def as_dict(self) -> dict:
        return {"base": self.base, "volumes": list(self.volumes), "fits": self.fits,
                "stage_seconds": self.stage_seconds}


def synthesize(cfg: KnowledgeConfig, docs: str, synth_dir: str, max_volume: int) -> dict[str, str]:
    """{method: records dir}, every method run (or resumed) at the largest volume."""
    common = dict(generator=cfg.generator, docs=docs, max_new_tokens=cfg.max_new_tokens,
                  seed=cfg.seed, batch_size=cfg.batch_size, shard_size=64)
    out = {}
    for method in [m for m in cfg.methods if m in methods_lib.from_documents("simple")]:
        out[method] = fs.join(synth_dir, method)
        job.run(job.JobConfig(method=method, output=out[method], generations=max_volume,
                              temperature=1.0, **common))
    if "focal_rewrite" in cfg.methods:
        out["focal_rewrite"] = fs.join(synth_dir, "focal_rewrite")
        job.run(job.JobConfig(method="focal_rewrite", output=out["focal_rewrite"],
                              questions=out["qa"], temperature=0.7, top_p=0.95, **common))
    if "entigraph" in cfg.methods:
        entities = out["entigraph_entities"] = fs.join(synth_dir, "entigraph_entities")
        out["entigraph"] = fs.join(synth_dir, "entigraph_relations")
        job.run(job.JobConfig(method="entigraph_entities", output=entities, **common))
        job.run(job.JobConfig(method="entigraph_relations", output=out["entigraph"],
                              entities=entities, relations=3 * max_volume, **common))
    return out


def volume_records(records: list[dict], volume: int) -> list[dict]:
    """The records of volume v: samples < v of the methods that write from the articles alone
    (qa; EntiGraph's one stage-1 summary); the focal rewrites of those QA pairs' questions;
    the first 3v groups of EntiGraph's seeded order (its pairs, then triples)."""
    questions = {(r["doc_id"], r.get("question")) for r in records
                 if r["method"] == "qa" and r["sample"] < volume}

    def kept(r):
        s = r["sample"]
        if r["method"] == "focal_rewrite":
            return (r["doc_id"], r.get("question")) in questions
        if r["method"] == "entigraph_relations":
            return s < 3 * volume
        return s < volume

    return [r for r in records if kept(r)]


def cpt_config(cfg: KnowledgeConfig, base: str, store: str, run_dir: str):
    """The continued pre-training run of one volume: preset cpt from `base`."""
    replay = {"synthetic": cfg.replay, "mix": cfg.replay_mix} if cfg.replay else {}
    return runs.train_config(dict(
        init=base, workdir=run_dir, real=store, epochs=cfg.epochs, lr=cfg.lr,
        weight_decay=cfg.weight_decay, global_batch=cfg.global_batch, seed=cfg.seed,
        checkpoint_every_minutes=0.0, mesh=(1, -1, 1), **replay))


def run(cfg: KnowledgeConfig) -> KnowledgeResult:
    from megadoc.models import sharding
    from megadoc.train import pretrained

    volumes = sorted(set(cfg.volumes))
    compile_cache.use_workdir_cache(cfg.workdir)
    base, path = cfg.base or cfg.generator, cfg.quality or quality.FIXTURE
    articles = quality.read_quality(path)
    docs = fs.join(cfg.workdir, "corpus", "articles.jsonl")
    docs_lib.write_jsonl(docs, [{"id": a.id, "text": a.text} for a in articles])
    seconds, start = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[stage] = round(now - start, 1)
        start = now
        print(f"[knowledge] {stage}: {seconds[stage]:.0f} s", flush=True)

    synth = synthesize(cfg, docs, fs.join(cfg.workdir, "synth"), volumes[-1])
    lap("synthesis")
    records = [r for d in synth.values() for r in docs_lib.read_generations(d)]

    mesh = sharding.make_mesh()
    tokenizer = pretrained.load_tokenizer(base)

    def evaluate(model: str) -> dict:
        config, params = pretrained.load(model, mesh)
        ll = benchmarks.model_loglikelihood(config, params, tokenizer, batch_size=8, mesh=mesh)
        return {mode: quality.evaluate(articles, mode, ll, top_k=cfg.rag_chunks,
                                      split=cfg.split)
                for mode in quality.MODES}

    def scores(evals: dict) -> dict:
        return {mode: {"accuracy": e["accuracy"], "n": e["n"]} for mode, e in evals.items()}

    base_scores, rows = scores(evaluate(base)), []
    lap("base evaluation")
    for v in volumes:
        gens = fs.join(cfg.workdir, "generations", f"volume-{v}.jsonl")
        kept = [{k: x for k, x in r.items() if k != "where"}
                for r in volume_records(records, v)]
        docs_lib.write_jsonl(gens, kept)
        tokens = sum(len(tokenizer.encode(r["text"])) + 1 for r in kept if r["text"])
        store = fs.join(cfg.workdir, "stores", f"volume-{v}")
        prepare_lib.prepare(prepare_lib.PrepareConfig(
            docs=docs, generations=gens, recipe="simple", include_real=True, tokenizer=base,
            seq_len=cfg.seq_len, seed=cfg.seed, output=store))
        lap(f"volume {v} prepare")
        run_dir = fs.join(cfg.workdir, "runs", f"volume-{v}")
        runs.train(cpt_config(cfg, base, store, run_dir))
        lap(f"volume {v} CPT")
        evals = evaluate(run_dir)
        lap(f"volume {v} evaluation")
        rows.append({"volume": v, "synthetic_tokens": tokens, "records": len(kept),
                     "records_with_text": sum(1 for r in kept if r["text"]),
                     "store_tokens": int(store_lib.open(store).metadata["num_tokens"]),
                     **scores(evals)})
        fs.write_text(fs.join(run_dir, "qa_eval.json"), json.dumps(evals, indent=1))
        print(f"[knowledge] volume {v}: {tokens} tokens, closed-book "
              f"{evals['closed_book']['accuracy']:.3f}, RAG {evals['rag']['accuracy']:.3f}",
              flush=True)
    curves = {mode: ([r["synthetic_tokens"] for r in rows], [r[mode]["accuracy"] for r in rows])
              for mode in quality.MODES}
    fits = plots.plot_accuracy_vs_tokens(
        curves, {mode: a["accuracy"] for mode, a in base_scores.items()},
        fs.join(cfg.workdir, "accuracy.png"),
        title=f"{'+'.join(cfg.methods)} on {len(articles)} articles")
    result = KnowledgeResult(base_scores, tuple(rows), fits, seconds)
    written = dict(result.as_dict(), generator=cfg.generator, base_model=base, quality=path,
                   split=cfg.split, methods=list(cfg.methods))
    fs.write_text(fs.join(cfg.workdir, "results.json"), json.dumps(written, indent=1) + "\n")
    print("[knowledge] " + json.dumps({"base": base_scores, "volumes": rows}), flush=True)
    return result
