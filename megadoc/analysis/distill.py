"""Distil an ensemble into one (smaller) student, as in the infinite-compute paper.

The student minimises `kl_weight · KL(teacher ‖ student) + (1 − kl_weight) · next-token loss`
per position, where the teacher is the ensemble's averaged next-token distribution (temperature 1).
Everything else is the training loop's: the same batch schedule and loader, AdamW with the cosine
schedule, orbax checkpoints in <workdir>/checkpoints with automatic resume (so
`megadoc.train.checkpoint.load_params(workdir)` returns the student), metrics.jsonl and
summary.json. The teacher's logits are computed inside the step and never differentiated.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import optax

from megadoc import fs
from megadoc.analysis import ensemble
from megadoc.data import loader as loader_lib
from megadoc.data import schedule as schedule_lib
from megadoc.data import store as store_lib
from megadoc.data import validation
from megadoc.models import llama, sharding
from megadoc.train import checkpoint, evaluate, metrics
from megadoc.train import config as config_lib
from megadoc.train import loop as loop_lib
from megadoc.train import optimizer as optimizer_lib
from megadoc.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    model: llama.LlamaConfig  # the student
    data: config_lib.DataConfig
    optimizer: config_lib.OptimizerConfig
    workdir: str
    teacher: tuple[str, ...]  # the teacher members' names (workdirs), recorded with the run
    kl_weight: float = 1.0
    teacher_average: str = "logits"  # how the members' distributions are combined
    mesh: tuple[int, int, int] = (1, -1, 1)
    microbatches: int = 1  # gradient-accumulation slices per step (teacher run per slice)
    val: tuple[tuple[str, str], ...] = ()  # (name, store path), evaluated at the end
    eval_batch_size: int = 0  # 0 = the global batch
    checkpoint_every_steps: int = 0  # 0 = only at the end
    log_every: int = 10


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


def _microbatches(x_BxW, m, mesh):
    """[B, W] → [M, B/M, W], row b to slice b % M: every slice stays spread over all devices."""
    b, w = x_BxW.shape
    x = x_BxW.reshape(b // m, m, w).swapaxes(0, 1)
    spec = jax.sharding.PartitionSpec(None, *sharding.batch_sharding(mesh).spec)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


def _make_step(cfg, teacher_config, optimizer, lr, state_sh, teacher_sh, mesh):
    def grads(params, teacher, tokens_BxW, segment_ids_BxW):
        teacher_BxTxV = ensemble.ensemble_logits(
            teacher_config, teacher, tokens_BxW[:, :-1], segment_ids_BxW[:, :-1],
            average=cfg.teacher_average)

        def loss_fn(params):
            kl, nll = distill_losses(cfg.model, params, teacher_BxTxV, tokens_BxW, segment_ids_BxW)
            return cfg.kl_weight * kl + (1.0 - cfg.kl_weight) * nll, (kl, nll)

        (loss, (kl, nll)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return (loss, kl, nll), g

    def step_fn(state, teacher, batch, step):
        if cfg.microbatches == 1:
            (loss, kl, nll), g = grads(state["params"], teacher, batch["tokens"],
                                       batch["segment_ids"])
        else:
            def accumulate(carry, mb):
                out, g = grads(state["params"], teacher, *mb)
                return jax.tree.map(jnp.add, carry, (out, g)), None

            zeros = ((jnp.zeros(()),) * 3, jax.tree.map(jnp.zeros_like, state["params"]))
            slices = (_microbatches(batch["tokens"], cfg.microbatches, mesh),
                      _microbatches(batch["segment_ids"], cfg.microbatches, mesh))
            total, _ = jax.lax.scan(accumulate, zeros, slices)
            (loss, kl, nll), g = jax.tree.map(lambda x: x / cfg.microbatches, total)
        updates, opt_state = optimizer.update(g, state["opt_state"], state["params"])
        new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
               "opt_state": opt_state}
        return new, {"loss": loss, "kl": kl, "data_loss": nll, "lr": lr(step),
                     "grad_norm": optax.global_norm(g)}

    batch_sh = sharding.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step_fn, donate_argnums=(0,),
                     in_shardings=(state_sh, teacher_sh,
                                   {"tokens": batch_sh, "segment_ids": batch_sh}, replicated),
                     out_shardings=(state_sh, replicated))

    def run(state, teacher, batch, step):
        with jax.set_mesh(mesh):
            return jitted(state, teacher, batch, jnp.int32(step))

    return run


def distill(cfg: DistillConfig, teacher_config: llama.LlamaConfig, teacher_stacked: dict) -> dict:
    """Train the student against the teacher ensemble; resumes from <workdir>/checkpoints."""
    if teacher_config.vocab_size != cfg.model.vocab_size:
        raise ValueError(f"teacher vocab {teacher_config.vocab_size} != student vocab "
                         f"{cfg.model.vocab_size}: distillation needs one vocabulary")
    if cfg.data.global_batch % cfg.microbatches:
        raise ValueError(f"global_batch {cfg.data.global_batch} is not a multiple of "
                         f"microbatches {cfg.microbatches}")
    if not 0.0 <= cfg.kl_weight <= 1.0:
        raise ValueError(f"kl_weight must be in [0, 1], got {cfg.kl_weight}")
    loop_lib.check_writable(cfg.workdir)
    real = store_lib.open(cfg.data.real)
    synthetic = store_lib.open(cfg.data.synthetic) if cfg.data.synthetic else None
    val = validation.open_sets(cfg.val, real)
    schedule = schedule_lib.MixSchedule(
        len(real), len(synthetic) if synthetic else 0, cfg.data.global_batch, cfg.data.mix,
        cfg.data.epochs, cfg.data.seed)
    num_steps = schedule.num_steps
    mesh = loop_lib.make_mesh(cfg.mesh)
    optimizer = optimizer_lib.make(cfg.optimizer, num_steps)
    lr = optimizer_lib.lr_schedule(cfg.optimizer, num_steps)
    state_sh = state_lib.shardings(cfg.model, optimizer, mesh)
    teacher_sh = ensemble.stacked_shardings(teacher_config, mesh)
    teacher = jax.device_put(teacher_stacked, teacher_sh)
    run = config_lib.to_dict(cfg) | {"teacher_model": config_lib.to_dict(teacher_config),
                                     "num_steps": num_steps}

    mgr = checkpoint.manager(cfg.workdir, keep=2)
    start = mgr.latest_step()
    if start is None:
        state = state_lib.create(cfg.model, optimizer, mesh, jax.random.key(cfg.data.seed))
        start = 0
    else:
        where = checkpoint.directory(cfg.workdir)
        checkpoint.check_run(checkpoint.read_run(mgr, start), run, where)
        state = checkpoint.restore_state(mgr, start, state_lib.abstract(cfg.model, optimizer, mesh))
        print(f"[distill] resumed from {where} at step {start}", flush=True)

    writer = metrics.Writer(cfg.workdir, num_steps, cfg.log_every)
    writer.truncate_after(start)
    seq_len = real.seq_len
    tokens_per_step = cfg.data.global_batch * seq_len
    members = ensemble.num_members(teacher_stacked)
    teacher_flops = members * metrics.flops_per_token(teacher_config, seq_len) / 3  # forward only
    flops_per_step = tokens_per_step * (metrics.flops_per_token(cfg.model, seq_len) + teacher_flops)
    peak = metrics.total_peak_flops()
    step_fn = _make_step(cfg, teacher_config, optimizer, lr, state_sh, teacher_sh, mesh)
    loader = loader_lib.BatchLoader(schedule, real, synthetic, mesh, start_step=start)
    stop = loop_lib._Stop()  # SIGTERM (preemption): save and exit, as the trainer does
    t_last = time.perf_counter()
    try:
        for batch_index, batch in loader:
            state, out = step_fn(state, teacher, batch, batch_index)
            step = batch_index + 1
            out = jax.device_get(out)
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            if not (math.isfinite(out["loss"]) and math.isfinite(out["kl"])):
                raise FloatingPointError(
                    f"distillation loss is {out['loss']} (KL {out['kl']}) at step {step}")
            writer.write({"step": step, **{name: float(v) for name, v in out.items()},
                          "tokens_per_s": tokens_per_step / dt, "mfu": flops_per_step / dt / peak})
            preempted = stop(step)
            if (step == num_steps or preempted
                    or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)):
                writer.flush()
                checkpoint.save(mgr, state, run, loader.get_state())
            if preempted:
                mgr.wait_until_finished()
                print(f"[distill] SIGTERM: saved checkpoint at step {step}; exiting", flush=True)
                return {"status": "preempted", "step": step}
            if step == num_steps:
                break
    finally:
        stop.close()
        writer.flush()
        mgr.wait_until_finished()
        mgr.close()
    evaluator = evaluate.Evaluator(cfg.model, mesh, cfg.eval_batch_size or cfg.data.global_batch)
    evals = {name: evaluator(state["params"], s) for name, s in val.items()}
    if evals:
        writer.write({"step": num_steps, **{f"eval/{n}/loss": v for n, v in evals.items()}})
        print("[distill] eval: " + ", ".join(f"{n} {v:.4f}" for n, v in evals.items()), flush=True)
    writer.flush()
    summary = {"status": "finished", "config": run, "final_step": num_steps, "eval": evals,
               **{f"val/{k}": v for k, v in evals.items()}, "windows": schedule.counts(),
               "teacher_members": members, "num_params": llama.num_params(cfg.model)}
    checkpoint.save_json(fs.join(cfg.workdir, "summary.json"), summary)
    return summary
