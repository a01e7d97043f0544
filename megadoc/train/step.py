"""The jitted SPMD train and eval steps, for any objective.

An objective is a loss function of the params and a batch (see `Objective`); the language-model
loss is the default and distillation is another. Token losses are fp32
`logsumexp(logits) - logit[target]`: ~24% faster on CPU than integer-label cross-entropy, whose
backward scatters over all logits. A global batch of B windows is split into `microbatches`
slices accumulated under `lax.scan`, so the papers' 64 × 4096 batch fits a small slice; each
slice stays spread over every device.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.data import host_rows
from megadoc.models import llama, sharding
from megadoc.train import config, metrics


def next_token_losses(logits_BxTxV, targets_BxT):
    """fp32 [B, T]: −log p(target) under `logits`, as logsumexp minus the target's logit."""
    target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BxTxV, axis=-1) - target_BxT


def token_losses(model_config, params, tokens_BxW, segment_ids_BxW):
    """Next-token loss per position, fp32 [B, W-1]; windows hold W = seq_len + 1 tokens."""
    hidden_BxTxH = llama.hidden_states(model_config, params, tokens_BxW[:, :-1],
                                       segment_ids_BxW[:, :-1])
    logits_BxTxV = llama.output_logits(model_config, params, hidden_BxTxH)
    return next_token_losses(logits_BxTxV, tokens_BxW[:, 1:])


def mean_loss(model_config, params, tokens_BxW, segment_ids_BxW):
    return jnp.mean(token_losses(model_config, params, tokens_BxW, segment_ids_BxW))


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a run minimises.

    `loss(params, frozen, tokens_BxW, segment_ids_BxW) -> (loss, {name: scalar})` is
    differentiated in `params` only; `frozen` is a pytree the loss reads but never trains (a
    teacher), placed as `frozen_shardings(mesh)` says and passed to every step. `record` joins the run's
    identity (a resume with a different objective is refused); `flops_per_token` adds the
    frozen part's compute to the MFU count."""
    loss: Callable
    metric_names: tuple[str, ...] = ()
    frozen: Any = None
    frozen_shardings: Callable | None = None
    record: dict = dataclasses.field(default_factory=dict)
    flops_per_token: float = 0.0


def language_model(model_config) -> Objective:
    """The next-token loss of the model on the batch."""
    def loss(params, frozen, tokens_BxW, segment_ids_BxW):
        return mean_loss(model_config, params, tokens_BxW, segment_ids_BxW), {}
    return Objective(loss)


def _split_microbatches(x_BxW, microbatches, mesh):
    """[B, W] → [M, B/M, W] with row b going to slice b % M, so each slice keeps the batch's
    device layout (a block of rows per device) instead of landing on 1/M of the devices."""
    b, w = x_BxW.shape
    config.check_batch_split(b, microbatches, host_rows.num_shards(sharding.batch_sharding(mesh)))
    x_MxBmxW = x_BxW.reshape(b // microbatches, microbatches, w).swapaxes(0, 1)
    spec = P(None, *sharding.batch_sharding(mesh).spec)
    return jax.lax.with_sharding_constraint(x_MxBmxW, NamedSharding(mesh, spec))


def grads_and_loss(objective, params, frozen, batch, microbatches, mesh):
    """((loss, metrics), grads) averaged over the microbatches."""
    loss_and_grad = jax.value_and_grad(objective.loss, has_aux=True)
    if microbatches == 1:
        return loss_and_grad(params, frozen, batch["tokens"], batch["segment_ids"])
    slices = (_split_microbatches(batch["tokens"], microbatches, mesh),
              _split_microbatches(batch["segment_ids"], microbatches, mesh))

    def accumulate(total, mb):
        return jax.tree.map(jnp.add, total, loss_and_grad(params, frozen, *mb)), None

    zeros = jax.eval_shape(loss_and_grad, params, frozen, *[s[0] for s in slices])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    total, _ = jax.lax.scan(accumulate, zeros, slices)
    return jax.tree.map(lambda x: x / microbatches, total)


def make_train_step(model_config, optimizer, schedule, state_shardings, mesh, microbatches=1,
                    objective: Objective | None = None):
    """`train_step(state, batch, step) -> (state, metrics)`; state is donated.

    An update happens only when the loss and the gradient norm are finite and
    `state["step"] == step`; otherwise the state passes through unchanged, so after a NaN the
    loop still holds the state that caused it (the step dispatched after the NaN one is skipped
    too), never parameters an infinite gradient already poisoned."""
    objective = objective or language_model(model_config)

    def train_step(state, frozen, batch, step):
        (loss, extra), grads = grads_and_loss(objective, state["params"], frozen, batch,
                                              microbatches, mesh)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state["step"] == step)
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step),
               "data_fingerprint": metrics.batch_fingerprint(batch["tokens"]), **extra}
        return new, out

    frozen, frozen_sh = objective.frozen, None
    if frozen is not None:
        frozen_sh = objective.frozen_shardings(mesh)
        frozen = jax.device_put(frozen, frozen_sh)
    batch_sh = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(train_step, donate_argnums=(0,),
                     in_shardings=(state_shardings, frozen_sh,
                                   {"tokens": batch_sh, "segment_ids": batch_sh}, replicated),
                     out_shardings=(state_shardings, replicated))

    return _under_mesh(jitted, mesh, lambda state, batch, step: (state, frozen, batch,
                                                                 _step_index(step)))


def make_eval_step(token_losses_fn, param_shardings, mesh):
    """`eval_step(params, batch, weights_B) -> (sum of weighted window losses, sum of weights)`;
    `token_losses_fn(params, tokens_BxW, segment_ids_BxW)` gives [B, W-1] losses; weight 0
    marks padding rows of the last batch."""

    def eval_step(params, batch, weights_B):
        per_window_B = jnp.mean(
            token_losses_fn(params, batch["tokens"], batch["segment_ids"]), axis=-1)
        return jnp.sum(per_window_B * weights_B), jnp.sum(weights_B)

    batch_sh = sharding.batch_sharding(mesh)
    jitted = jax.jit(eval_step, in_shardings=(
        param_shardings, {"tokens": batch_sh, "segment_ids": batch_sh},
        NamedSharding(mesh, P(batch_sh.spec[0]))))

    return _under_mesh(jitted, mesh, lambda *args: args)


def make_row_scorer(score_fn, param_shardings, mesh):
    """`scorer(params, rows) -> [B]`: a jitted `score_fn(params, rows) -> [B]` whose `rows` (a
    tuple of [B, ...] arrays) are split as the batch is; the result is whole on every process."""
    jitted = jax.jit(score_fn, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                     out_shardings=NamedSharding(mesh, P()))
    return _under_mesh(jitted, mesh, lambda *args: args)


def _under_mesh(jitted, mesh, arguments):
    """`run(*args)`: `jitted` under the mesh. For arguments given as ShapeDtypeStructs (with
    shardings) instead of arrays, `run.trace(*args)` gives the traced program (a plan counts
    its FLOPs and compiles it for a slice it does not have: train/plan.py) and
    `run.compile(*args)` compiles it ahead of the first call, so its memory is known before any
    data is read; later calls run that executable. `arguments(*args)` is what `run` passes
    the jitted function."""
    ahead = {}

    def call(*args):
        with jax.set_mesh(mesh):
            return ahead.get("compiled", jitted)(*arguments(*args))

    def trace(*args):
        with jax.set_mesh(mesh):
            return jitted.trace(*arguments(*args))

    def compile_ahead(*args):
        with jax.set_mesh(mesh):
            ahead["compiled"] = jitted.trace(*arguments(*args)).lower().compile()
        return ahead["compiled"]

    call.trace, call.compile = trace, compile_ahead
    return call


def _step_index(step):
    """The step as the jitted function takes it: an int32 (or the abstract value a plan
    passes)."""
    if isinstance(step, jax.ShapeDtypeStruct):
        return step
    return jnp.int32(step)
