"""The flax.nnx Llama is the functional core: same params pytree, same logits and gradients."""
import dataclasses

import jax
import numpy as np
import optax
from flax import nnx

from megadoc.models import llama, llama_nnx, sharding

CONFIG = dataclasses.replace(llama.preset("tiny"), dtype="float32", vocab_size=64,
                             max_seq_len=16, layers=2)
TOKENS = np.random.default_rng(0).integers(0, 64, (4, 9)).astype(np.int32)


def test_split_gives_exactly_the_functional_params():
    params = llama.init(CONFIG, nnx.Rngs(params=3).params())  # the key the module draws
    model = llama_nnx.Llama(CONFIG, rngs=nnx.Rngs(params=3))
    _, state = nnx.split(model)
    pure = state.to_pure_dict()
    assert jax.tree.structure(pure) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(pure), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, want)
    assert state["layers"]["q"].get_metadata()["out_sharding"] == llama.PARAM_AXES["q"]


def test_call_and_gradients_match_the_functional_core():
    params = llama.init(CONFIG, jax.random.key(0))
    model = llama_nnx.Llama(CONFIG, params=params)
    np.testing.assert_allclose(model(TOKENS), llama.forward(CONFIG, params, TOKENS), atol=1e-6)

    def loss(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], TOKENS[:, 1:]).mean()

    grads = nnx.grad(lambda m: loss(m(TOKENS)))(model).to_pure_dict()
    want = jax.grad(lambda p: loss(llama.forward(CONFIG, p, TOKENS)))(params)
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_merge_wraps_a_params_pytree_and_places_it_by_the_rules():
    params = llama.init(CONFIG, jax.random.key(1))
    graphdef, state = nnx.split(llama_nnx.Llama(CONFIG, params=params))
    mesh = sharding.make_mesh(2, 2, 2)
    placed = jax.device_put(state.to_pure_dict(), llama.param_shardings(CONFIG, mesh))
    state.replace_by_pure_dict(placed)
    model = nnx.merge(graphdef, state)
    assert model.layers["gate"][...].sharding == model.shardings(mesh)["layers"]["gate"]
    tokens = jax.device_put(TOKENS, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    np.testing.assert_allclose(logits, llama.forward(CONFIG, params, TOKENS), atol=1e-5)
