"""Distil trained runs into one (smaller) student, as in the infinite-compute paper: by
token-level KL to an ensemble (`distill`), or by training on texts a teacher sampled
(`train_on_texts`). Either way the run is `megadoc.train.loop.train`'s.

The student minimises `kl_weight · KL(teacher ‖ student) + (1 − kl_weight) · next-token loss`
per position, where the teacher is the ensemble's averaged next-token distribution (temperature 1).
This module only defines that objective: the run is `megadoc.train.loop.train`'s (the same batch
schedule and loader, AdamW with the cosine schedule, orbax checkpoints in <workdir>/checkpoints
with automatic and bit-exact resume, NaN guard, metrics.jsonl with `kl` and `data_loss`,
summary.json, multi-host). The teacher's logits are computed inside the step and never
differentiated.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import jax
import jax.numpy as jnp

from megadoc import fs
from megadoc.analysis import ensemble
from megadoc.data import docs, prepare
from megadoc.data import store as store_lib
from megadoc.models import llama
from megadoc.train import config as config_lib
from megadoc.train import loop, metrics
from megadoc.train import step as step_lib

AVERAGES = ensemble.AVERAGES


@dataclasses.dataclass(frozen=True)
class DistillConfig(config_lib.TrainConfig):
    """A training run of the student (`model`) whose objective is the teacher's distribution."""
    teacher: tuple[str, ...] = ()
    """training runs (workdirs) whose newest checkpoints form the teacher"""
    kl_weight: float = 1.0
    """loss = w · KL(teacher ‖ student) + (1 − w) · data loss"""
    teacher_average: str = "logits"
    """how the members' distributions are combined: logits | probs"""

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.kl_weight <= 1.0:
            raise ValueError(f"kl_weight must be in [0, 1], got {self.kl_weight}")
        if self.teacher_average not in AVERAGES:
            raise ValueError(f"teacher_average must be one of {AVERAGES}, got "
                             f"{self.teacher_average!r}")


def distill_losses(student_config, student_params, teacher_logits_BxTxV, tokens_BxW,
                   segment_ids_BxW):
    """(KL(teacher ‖ student), student's next-token loss), each a mean over positions."""
    student_BxTxV = llama.forward(student_config, student_params, tokens_BxW[:, :-1],
                                  segment_ids_BxW[:, :-1])
    s_logp_BxTxV = jax.nn.log_softmax(student_BxTxV, axis=-1)
    t_logp_BxTxV = jax.nn.log_softmax(teacher_logits_BxTxV, axis=-1)
    kl_BxT = jnp.sum(jnp.exp(t_logp_BxTxV) * (t_logp_BxTxV - s_logp_BxTxV), axis=-1)
    nll_BxT = -jnp.take_along_axis(s_logp_BxTxV, tokens_BxW[:, 1:, None], axis=-1)[..., 0]
    return jnp.mean(kl_BxT), jnp.mean(nll_BxT)


def objective(cfg: DistillConfig, teacher_config: llama.LlamaConfig, teacher_stacked: dict,
              seq_len: int) -> step_lib.Objective:
    """The distillation loss, with the teacher's stacked params as the step's frozen input."""
    def loss(params, teacher, tokens_BxW, segment_ids_BxW):
        teacher_BxTxV = ensemble.ensemble_logits(
            teacher_config, teacher, tokens_BxW[:, :-1], segment_ids_BxW[:, :-1],
            average=cfg.teacher_average)
        kl, nll = distill_losses(cfg.model, params, teacher_BxTxV, tokens_BxW, segment_ids_BxW)
        return cfg.kl_weight * kl + (1.0 - cfg.kl_weight) * nll, {"kl": kl, "data_loss": nll}

    members = ensemble.num_members(teacher_stacked)
    return step_lib.Objective(
        loss, metric_names=("kl", "data_loss"), frozen=teacher_stacked,
        frozen_shardings=functools.partial(ensemble.stacked_shardings, teacher_config),
        record={"teacher_model": config_lib.to_dict(teacher_config), "teacher_members": members},
        flops_per_token=members * metrics.flops_per_token(teacher_config, seq_len) / 3)


def distill(cfg: DistillConfig, teacher_config: llama.LlamaConfig, teacher_stacked: dict) -> dict:
    """Train the student against the teacher ensemble; resumes from <workdir>/checkpoints."""
    if teacher_config.vocab_size != cfg.model.vocab_size:
        raise ValueError(f"teacher vocab {teacher_config.vocab_size} != student vocab "
                         f"{cfg.model.vocab_size}: distillation needs one vocabulary")
    seq_len = store_lib.open(cfg.data.real).seq_len
    return loop.train(cfg, objective(cfg, teacher_config, teacher_stacked, seq_len))


def texts_store_path(workdir: str) -> str:
    return fs.join(workdir, "texts", "store")


def texts_store(texts: str, workdir: str, real: str, seed: int) -> str:
    """The generation records at `texts` as a window store under <workdir>/texts: each record one
    stream document, tokenized as the real store was. The texts are part of the run's identity:
    a workdir started on other texts (by content, wherever they live) is refused, since its
    student has trained on those."""
    bad = docs.BadRecords()
    documents = fs.join(workdir, "texts", "docs.jsonl")
    rows = [{"id": f"{g['doc_id']}/{g['method']}/{g['sample']}", "text": g["text"]}
            for g in docs.read_generations(texts, bad) if g["text"]]
    source = fs.join(workdir, "texts", "source.json")
    if fs.exists(documents):
        if _digest(docs.read_docs(documents)) != _digest(rows):
            was = (json.loads(fs.read_text(source))["texts"] if fs.exists(source)
                   else "other texts")
            raise ValueError(f"--texts={texts}: {workdir} was started on other texts ({was}) "
                             f"and its student has trained on them; use a new --workdir for "
                             f"these texts, or --texts={was} to continue that run")
    else:
        fs.write_text(source, json.dumps({"texts": texts, "records": len(rows)}) + "\n")
        docs.write_jsonl(documents, rows)
    real_store = store_lib.open(real)
    output = texts_store_path(workdir)
    prepare.prepare(prepare.PrepareConfig(
        docs=documents, recipe="real", tokenizer=store_lib.recorded_tokenizer_path(real_store),
        seq_len=real_store.seq_len, seed=seed, output=output))
    return output


def _digest(records) -> str:
    """sha256 over the (id, text) of documents, in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["id"], r["text"]]).encode("utf-8") + b"\n")
    return h.hexdigest()


def train_on_texts(cfg: config_lib.TrainConfig, texts: str) -> dict:
    """The student trained by the ordinary loop on the real store mixed (at `cfg.data.mix`)
    with the texts at `texts` (e.g. experiments.synthesize --method=unconditional)."""
    store = texts_store(texts, cfg.workdir, cfg.data.real, cfg.data.seed)
    plain = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(config_lib.TrainConfig)}
    return loop.train(config_lib.TrainConfig(
        **plain | {"data": dataclasses.replace(cfg.data, synthetic=store)}))
