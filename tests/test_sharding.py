"""Sharding: same loss and gradients on every mesh shape; params placed as the rules say."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from megadoc.models import llama, sharding
from megadoc.train import config, optimizer, state

TINY = dataclasses.replace(llama.preset("tiny"), dtype="float32")
TOKENS = np.random.default_rng(0).integers(0, TINY.vocab_size, (8, 33)).astype(np.int32)


def _loss(params, tokens):
    logits = llama.forward(TINY, params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


@pytest.fixture(scope="module")
def reference():
    params = jax.jit(llama.init, static_argnums=0)(TINY, jax.random.key(0))
    return jax.jit(jax.value_and_grad(_loss))(params, TOKENS)


def sharded_params(mesh):
    """The params as a training run creates them: born in their sharding (state.create)."""
    adamw = optimizer.make(config.OptimizerConfig(lr=1e-3, weight_decay=0.0), num_steps=10)
    return state.create(TINY, adamw, mesh, jax.random.key(0))["params"]


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_same_loss_and_grads_on_every_mesh(reference, shape):
    mesh = sharding.make_mesh(*shape)
    params = sharded_params(mesh)
    tokens = jax.device_put(TOKENS, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        loss, grads = jax.jit(jax.value_and_grad(_loss),
                              out_shardings=(None, llama.param_shardings(TINY, mesh)))(
            params, tokens)
    ref_loss, ref_grads = reference
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, atol=1e-6)


def test_params_are_sharded_as_the_rules_say():
    mesh = sharding.make_mesh(2, 2, 2)
    params = sharded_params(mesh)
    expected = {  # full shape -> per-device shard shape
        "q": (P(None, "fsdp", "tensor", None), (2, 32, 2, 16)),
        "k": (P(None, "fsdp", "tensor", None), (2, 32, 1, 16)),
        "o": (P(None, "tensor", None, "fsdp"), (2, 2, 16, 32)),
        "gate": (P(None, "fsdp", "tensor"), (2, 32, 96)),
        "down": (P(None, "tensor", "fsdp"), (2, 96, 32)),
        "attn_norm": (P(None, None), (2, 64)),
    }
    for name, (spec, shard_shape) in expected.items():
        array = params["layers"][name]
        assert array.sharding.spec == spec, name
        assert array.addressable_shards[0].data.shape == shard_shape, name
    assert params["embed"].sharding.spec == P(None, "fsdp")
    assert params["lm_head"].sharding.spec == P("fsdp", "tensor")
    assert params["lm_head"].addressable_shards[0].data.shape == (32, 128)


def test_axes_that_do_not_divide_are_dropped():
    mesh = sharding.make_mesh(1, 4, 2)
    # kv_heads=2 splits over tensor=2; an embed dim of 6 cannot split over fsdp=4.
    assert sharding.spec(("layers", "embed", "kv_heads", "head_dim"), (2, 6, 2, 16), mesh) == \
        P(None, None, "tensor", None)
    # batch 4 over data=1 x fsdp=4; a batch of 2 keeps only the axes that divide it.
    assert sharding.spec(("batch", "seq"), (4, 8), mesh) == P(("data", "fsdp"), None)
    assert sharding.spec(("batch", "seq"), (2, 8), mesh) == P("data", None)


def test_batch_sharding_and_mesh_shape():
    mesh = sharding.make_mesh(fsdp=2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="does not cover 8 devices"):
        sharding.make_mesh(3, 2, 1)
