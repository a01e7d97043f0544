import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megadoc.analysis import ensemble
from megadoc.models import llama, sharding
from megadoc.train import evaluate

CONFIG = dataclasses.replace(llama.preset("tiny"), dtype="float32")
init = jax.jit(llama.init, static_argnums=0)
forward = jax.jit(llama.forward, static_argnums=0)


class MemoryStore:
    """The part of a window store that evaluation reads."""

    def __init__(self, tokens, segment_ids):
        self.tokens, self.segment_ids = tokens, segment_ids
        self.seq_len = tokens.shape[1] - 1

    def __len__(self):
        return len(self.tokens)

    def read(self, idx):
        return {"tokens": self.tokens[idx], "segment_ids": self.segment_ids[idx]}


def windows(n, width, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, (n, width)).astype(np.int32)
    segs = np.ones((n, width), np.int32)
    segs[:, width // 2:] = 2  # two documents per window
    return tokens, segs


# 11 windows of 17 tokens: evaluated in batches of 8, the last one padded.
TOKENS, SEGS = windows(11, 17)


@pytest.fixture(scope="module")
def members():
    return [init(CONFIG, jax.random.key(i)) for i in range(3)]


@pytest.fixture(scope="module")
def member_logits(members):
    return np.stack([np.asarray(forward(CONFIG, p, TOKENS[:, :-1], SEGS[:, :-1])) for p in members])


def loss_of(logits):
    target = np.take_along_axis(logits, TOKENS[:, 1:, None], axis=-1)[..., 0]
    return float(np.mean(jax.nn.logsumexp(logits, axis=-1) - target))


def test_logit_average_equals_averaging_members_by_hand(members, member_logits):
    tokens, segs = TOKENS[:, :-1], SEGS[:, :-1]
    stacked = ensemble.stack_params(members)
    got = jax.jit(ensemble.ensemble_logits, static_argnums=0)(CONFIG, stacked, tokens, segs)
    each = member_logits
    np.testing.assert_allclose(got, each.mean(0), rtol=1e-5, atol=1e-5)

    probs = jax.jit(ensemble.ensemble_logits, static_argnums=0, static_argnames="average")(
        CONFIG, stacked, tokens, segs, average="probs")
    mean_p = jax.nn.softmax(each, axis=-1).mean(0)
    np.testing.assert_allclose(jnp.exp(probs), mean_p, rtol=1e-4, atol=1e-7)


def test_members_are_scanned_one_at_a_time(members):
    """ARCHITECTURE.md's design note: a scan over members (one member's activations live at a
    time), not a vmap that batches every member's forward pass."""
    jaxpr = jax.make_jaxpr(lambda s: ensemble.ensemble_logits(CONFIG, s, TOKENS[:, :-1]))(
        ensemble.stack_params(members))
    primitives = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert "scan" in primitives
    scanned = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
    assert scanned.params["length"] == len(members)


def test_one_member_ensemble_loss_equals_the_single_model_loss(members, member_logits):
    store = MemoryStore(TOKENS, SEGS)
    mesh = sharding.make_mesh(data=4, fsdp=2)
    one = ensemble.ensemble_loss(CONFIG, ensemble.stack_params(members[:1]), store, batch_size=8, mesh=mesh)
    assert one == pytest.approx(loss_of(member_logits[0]), rel=1e-5)
    assert one == pytest.approx(evaluate.eval_loss(CONFIG, members[0], store, batch_size=8, mesh=mesh), rel=1e-5)
    three = ensemble.ensemble_loss(CONFIG, ensemble.stack_params(members), store, batch_size=8, mesh=mesh)
    assert three == pytest.approx(loss_of(member_logits.mean(0)), rel=1e-5)


def test_members_of_different_shapes_are_refused(members):
    other = jax.eval_shape(lambda: llama.init(dataclasses.replace(CONFIG, ffn=96), jax.random.key(9)))
    with pytest.raises(ValueError, match=r"member 'b'.*\['layers'\]\['down'\] has shape \(2, 96, 64\).*'a' has \(2, 192, 64\)"):
        ensemble.stack_params([members[0], other], names=["a", "b"])
    with pytest.raises(ValueError, match="at least one member"):
        ensemble.stack_params([])
