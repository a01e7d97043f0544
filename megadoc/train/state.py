"""Train state: {"step", "params", "opt_state"}, created directly in its sharding.

`step` counts completed updates; a step whose loss is not finite leaves the whole state unchanged
(see step.py), so after a NaN the state is the one that produced it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from megadoc.models import llama


def shardings(model_config: llama.LlamaConfig, optimizer: optax.GradientTransformation, mesh):
    """NamedShardings for every leaf of the state: params per the model's rules, optimizer
    moments like their params, optimizer scalars replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sh = llama.param_shardings(model_config, mesh)
    abstract_params = jax.eval_shape(lambda k: llama.init(model_config, k), jax.random.key(0))
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    return {"step": replicated, "params": param_sh, "opt_state": opt_sh}


def abstract(model_config, optimizer, mesh):
    """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
    shapes = jax.eval_shape(lambda: create_unsharded(model_config, optimizer, jax.random.key(0)))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings(model_config, optimizer, mesh))


def create_unsharded(model_config, optimizer, key):
    params = llama.init(model_config, key)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def create(model_config, optimizer, mesh, key):
    """A fresh state, every array born in its sharding (no host-side copy of the full model)."""
    out = shardings(model_config, optimizer, mesh)
    return jax.jit(lambda k: create_unsharded(model_config, optimizer, k), out_shardings=out)(key)


def from_params(model_config, optimizer, mesh, params):
    """A fresh state around given params (continued pre-training): step 0, new optimizer
    moments, every array in its sharding."""
    out = shardings(model_config, optimizer, mesh)
    want = jax.tree.map(lambda s: s.shape, jax.eval_shape(lambda: llama.init(model_config,
                                                                               jax.random.key(0))))
    got = jax.tree.map(lambda x: x.shape, params)
    if got != want:
        raise ValueError(f"params do not fit the model config: got shapes {got}, expected {want}")
    params = jax.device_put(params, out["params"])
    return jax.jit(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p,
                              "opt_state": optimizer.init(p)}, out_shardings=out)(params)
