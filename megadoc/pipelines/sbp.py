"""Synthetic Bootstrapped Pretraining (Yang, Zhang, Liu, Hashimoto, Candès, Wang, Pang) end to
end: learn the augmentation from nearest-neighbour documents instead of prompting an external
generator, then train students on real + synthetic data.

    1. pairs      embed every real document with the base model, pair nearest neighbours whose
                  score clears a threshold (analysis/neighbours.py)
    2. conditional continue training the base model as p(x2 | x1) on a loss-masked pair store
                  (data/pairs.py; runs.train with the masked objective, from `init=base`)
    3. synthesis  sample one document per real document from the conditional model given it as
                  x1 (synth/job.py method "sbp"), and train students at equal compute:
                  real only · real + SBP at synthetic fraction `mix` (the talk's 1:3 is 0.25) ·
                  an oracle whose extra unique real documents take the synthetic data's place
                  (real_docs / (1 - mix) of them, when `docs` holds that many), each scored on
                  the held-out documents

Every stage writes a done marker (pipelines.demo.Stages), so a rerun skips what finished and
resumes what did not (training from checkpoints, embedding and synthesis from finished shards).
Every run starts through `runs.train`, in this process. Output: results.json, results.md (the
table) and val_loss.png under `workdir` (megadoc/analysis/sbp.py).
"""
from __future__ import annotations

import dataclasses

from megadoc import fs
from megadoc.analysis import neighbours
from megadoc.analysis import sbp as sbp_analysis
from megadoc.data import docs as docs_lib
from megadoc.data import pairs as pairs_lib
from megadoc.data import prepare as prepare_lib
from megadoc.data import store as store_lib
from megadoc.models import llama
from megadoc.pipelines import demo, runs
from megadoc.synth import job as job_lib
from megadoc.train import config as config_lib
from megadoc.train import pretrained


@dataclasses.dataclass(frozen=True)
class SBPConfig:
    """One SBP experiment: base model, documents, and the size of every stage."""
    base: str
    """the base model (.gguf, Hugging Face Llama directory or megadoc workdir): it embeds the
    documents and is continued as the conditional model; its tokenizer is every store's"""
    docs: str
    """real documents {id, text}; the first `real_docs` are the students' real data"""
    val: str
    """held-out documents every student is scored on"""
    workdir: str
    """where every stage writes (local or gs://)"""
    real_docs: int = 0
    """documents the students see as real data (0: all of docs, and no oracle); the oracle
    trains on the first real_docs / (1 - mix) of docs, when there are that many"""
    seq_len: int = 256
    """window length of every store (pairs and students)"""
    threshold: float = 0.75
    """pair documents whose score (cosine of centred embeddings) is at least this"""
    duplicate_above: float = 0.98
    """and below this (near-duplicates excluded)"""
    neighbours: int = 8
    """nearest neighbours looked up per document"""
    cpt_epochs: int = 2
    """passes of the conditional training over the pair store"""
    cpt_lr: float = 1e-3
    """peak learning rate of the conditional training"""
    max_new_tokens: int = 256
    """tokens sampled per synthetic document"""
    temperature: float = 1.0
    """sampling temperature of the synthesis"""
    synth_batch: int = 32
    """sequences the sampler decodes together"""
    mix: float = 0.25
    """synthetic fraction of each batch of the SBP student (synthetic:real 1:3 = 0.25)"""
    student_epochs: int = 3
    """real epochs of the SBP student; the others take as many steps"""
    student_hidden: int = 128
    """students: hidden size (a Llama with ffn 3x hidden, heads of 32)"""
    student_layers: int = 4
    """students: layers"""
    lr: float = 3e-3
    """students' peak learning rate"""
    weight_decay: float = 0.1
    """students' weight decay"""
    global_batch: int = 16
    """windows per step (conditional training and students)"""
    eval_every: int = 0
    """students evaluate every N steps (0: at the end only)"""
    seed: int = 0
    """seed of the data orders, the students' init and the samples"""

    def __post_init__(self):
        if not 0 < self.mix < 1:
            raise ValueError(f"mix must be in (0, 1), got {self.mix}")
        for name in ("seq_len", "cpt_epochs", "max_new_tokens", "student_epochs",
                     "student_hidden", "student_layers", "global_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.real_docs < 0:
            raise ValueError(f"real_docs must be >= 0, got {self.real_docs}")


@dataclasses.dataclass(frozen=True)
class SBPResult:
    """What each stage found and the students' table (also results.json; results.md and
    val_loss.png beside it)."""
    corpus: dict
    pairs: dict
    conditional: dict
    synthesis: dict
    students: tuple[dict, ...]


def _path(cfg: SBPConfig, *parts: str) -> str:
    return fs.join(cfg.workdir, *parts)


def split_corpus(cfg: SBPConfig) -> dict:
    """corpus/real.jsonl: the students' real documents; corpus/oracle.jsonl: the oracle's, as
    many more as the SBP student's batches hold synthetic windows (0 where docs has too few)."""
    bad = docs_lib.BadRecords()
    docs = [{"id": d["id"], "text": d["text"]} for d in docs_lib.read_docs(cfg.docs, bad)]
    real = docs[:cfg.real_docs] if cfg.real_docs else docs
    wanted = round(len(real) / (1 - cfg.mix))
    oracle = docs[:wanted] if len(docs) >= wanted else []
    docs_lib.write_jsonl(_path(cfg, "corpus", "real.jsonl"), real)
    docs_lib.write_jsonl(_path(cfg, "corpus", "oracle.jsonl"), oracle)
    return {"real_docs": len(real), "oracle_docs": len(oracle), "bad_input": bad.as_dict()}


def prepare_store(cfg: SBPConfig, name: str, docs: str, generations: str | None = None) -> dict:
    meta = prepare_lib.prepare(prepare_lib.PrepareConfig(
        docs=docs, recipe="simple" if generations else "real", generations=generations,
        include_real=not generations, tokenizer=pretrained.tokenizer_path(cfg.base),
        seq_len=cfg.seq_len, seed=cfg.seed, output=_path(cfg, "stores", name)))
    return {"windows": meta["num_windows"], "tokens": meta["num_tokens"]}


def pair_documents(cfg: SBPConfig) -> dict:
    return neighbours.run(neighbours.PairsConfig(
        model=cfg.base, docs=_path(cfg, "corpus", "real.jsonl"), output=_path(cfg, "pairs"),
        threshold=cfg.threshold, duplicate_above=cfg.duplicate_above, neighbours=cfg.neighbours))


def build_pair_store(cfg: SBPConfig) -> dict:
    meta = pairs_lib.build(pairs_lib.PairStoreConfig(
        docs=_path(cfg, "corpus", "real.jsonl"), pairs=_path(cfg, "pairs", "pairs.jsonl"),
        tokenizer=pretrained.tokenizer_path(cfg.base), seq_len=cfg.seq_len,
        output=_path(cfg, "stores", "pairs")))
    return {"windows": meta["num_windows"], **meta["counts"]}


def train_conditional(cfg: SBPConfig) -> dict:
    """The base model continued on the pair store: the masked objective (the store carries
    the mask), started from `base` with its architecture."""
    model = pretrained.load_config(cfg.base)
    if model.max_seq_len < cfg.seq_len:
        raise ValueError(f"{cfg.base}: context {model.max_seq_len} is shorter than seq_len "
                         f"{cfg.seq_len}")
    workdir = _path(cfg, "conditional")
    summary = runs.train(config_lib.TrainConfig(
        model=model, init=cfg.base, workdir=workdir,
        data=config_lib.DataConfig(real=_path(cfg, "stores", "pairs"), epochs=cfg.cpt_epochs,
                                   seed=cfg.seed, global_batch=cfg.global_batch),
        optimizer=config_lib.OptimizerConfig(lr=cfg.cpt_lr, weight_decay=0.01, warmup_frac=0.05),
        checkpoint_every_minutes=0, log_every=10))
    losses = [row["loss"] for _, row in fs.read_jsonl_log(fs.join(workdir, "metrics.jsonl"))
              if "loss" in row]
    return {"path": workdir, "steps": summary["final_step"], "first_loss": losses[0],
            "last_loss": losses[-1]}


def synthesize(cfg: SBPConfig) -> dict:
    summary = job_lib.run(job_lib.JobConfig(
        method="sbp", generator=_path(cfg, "conditional"), docs=_path(cfg, "corpus", "real.jsonl"),
        output=_path(cfg, "synth"), max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.synth_batch))
    return {"records": summary["records"], "generated_tokens": summary["generated_tokens"],
            "finish_reason": summary["finish_reason"]}


def student_model(cfg: SBPConfig) -> llama.LlamaConfig:
    vocab = int(store_lib.open(_path(cfg, "stores", "real")).metadata["vocab_size"])
    heads = max(1, cfg.student_hidden // 32)
    return dataclasses.replace(
        llama.preset("tiny"), vocab_size=vocab, max_seq_len=cfg.seq_len, head_dim=None,
        hidden=cfg.student_hidden, ffn=3 * cfg.student_hidden, layers=cfg.student_layers,
        heads=heads, kv_heads=heads)


def train_student(cfg: SBPConfig, name: str, real: str, epochs: int,
                  synthetic: str | None = None) -> dict:
    summary = runs.train(config_lib.TrainConfig(
        model=student_model(cfg), workdir=_path(cfg, "students", name),
        data=config_lib.DataConfig(real=_path(cfg, "stores", real), epochs=epochs,
                                   synthetic=synthetic and _path(cfg, "stores", synthetic),
                                   mix=cfg.mix if synthetic else 0.0, seed=cfg.seed,
                                   global_batch=cfg.global_batch),
        optimizer=config_lib.OptimizerConfig(lr=cfg.lr, weight_decay=cfg.weight_decay),
        val=(("iid", _path(cfg, "stores", "val")),), eval_every=cfg.eval_every,
        checkpoint_every_minutes=0, checkpoint_every_steps=100, log_every=20))
    return {"steps": summary["final_step"], "tokens": summary["tokens"],
            "windows": summary["windows"], "val_loss": summary["eval"]["iid"]}


def run(cfg: SBPConfig) -> SBPResult:
    """All stages (each skipped when done before); returns what they found and the table."""
    stages = demo.Stages(cfg.workdir)
    corpus = stages.run("corpus", lambda: split_corpus(cfg))
    stores = {"real": stages.run("store_real", lambda: prepare_store(
        cfg, "real", _path(cfg, "corpus", "real.jsonl"))),
        "val": stages.run("store_val", lambda: prepare_store(cfg, "val", cfg.val))}
    pairs = stages.run("pairs", lambda: pair_documents(cfg))
    pair_store = stages.run("store_pairs", lambda: build_pair_store(cfg))
    conditional = stages.run("conditional", lambda: train_conditional(cfg))
    synthesis = stages.run("synthesize", lambda: synthesize(cfg))
    stores["sbp"] = stages.run("store_sbp", lambda: prepare_store(
        cfg, "sbp", _path(cfg, "corpus", "real.jsonl"), _path(cfg, "synth")))
    with_oracle = corpus["oracle_docs"] > 0
    if with_oracle:
        stores["oracle"] = stages.run("store_oracle", lambda: prepare_store(
            cfg, "oracle", _path(cfg, "corpus", "oracle.jsonl")))
    epochs = sbp_analysis.student_epochs(cfg.student_epochs, cfg.mix)
    students = {
        "real": stages.run("student_real", lambda: train_student(cfg, "real", "real",
                                                                 epochs["real"])),
        "sbp": stages.run("student_sbp", lambda: train_student(cfg, "sbp", "real", epochs["sbp"],
                                                               synthetic="sbp"))}
    if with_oracle:
        students["oracle"] = stages.run("student_oracle", lambda: train_student(
            cfg, "oracle", "oracle", epochs["oracle"]))
    results = {"config": dataclasses.asdict(cfg), "corpus": corpus, "pairs": pairs,
               "pair_store": pair_store, "conditional": conditional, "synthesis": synthesis,
               "stores": stores, "students": [
                   {"student": name, "real_docs": corpus["oracle_docs" if name == "oracle"
                                                         else "real_docs"],
                    "real_epochs": epochs[name], "synthetic_fraction": cfg.mix if name == "sbp"
                    else 0.0, **students[name],
                    "delta_vs_real": students[name]["val_loss"] - students["real"]["val_loss"]}
                   for name in sbp_analysis.STUDENTS if name in students]}
    sbp_analysis.write_results(cfg.workdir, results)
    return SBPResult(corpus, pairs, conditional, synthesis, tuple(results["students"]))

