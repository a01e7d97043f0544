"""Llama model: shapes, presets, KV cache, segment masking, attention backends, remat."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from megadoc.models import attention, llama, sharding

TINY = dataclasses.replace(llama.preset("tiny"), dtype="float32")
init = jax.jit(llama.init, static_argnums=0)
PARAMS = init(TINY, jax.random.key(0))
forward32 = jax.jit(lambda params, tokens, segs=None: llama.forward(TINY, params, tokens, segs))


def _tokens(shape, seed=1):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, shape).astype(np.int32)


@pytest.mark.parametrize("name,count", [("150m", 154_147_328), ("300m", 299_649_792),
                                        ("600m", 602_457_088), ("1.5b", 1_540_732_416)])
def test_preset_param_counts(name, count):
    assert llama.num_params(llama.preset(name)) == count


def test_num_params_matches_init_tree():
    config = llama.preset("150m")
    shapes = jax.eval_shape(lambda k: llama.init(config, k), jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == llama.num_params(config)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
    assert shapes["layers"]["q"].shape == (6, 512, 8, 64)


def test_presets_have_the_papers_shapes():
    gen = llama.preset("llama3-8b")
    assert (gen.hidden, gen.ffn, gen.layers, gen.heads, gen.kv_heads) == (4096, 14336, 32, 32, 8)
    assert gen.rope_theta == 500000.0 and gen.rope_scaling.factor == 8.0
    for name in ("150m", "300m", "600m", "1.5b"):  # the students: Llama 3 vocabulary, 4096 context
        assert (llama.preset(name).vocab_size, llama.preset(name).max_seq_len) == (128256, 4096)


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match=r"'7b'.*150m.*tiny"):
        llama.preset("7b")


def test_init_variance_scales_with_width():
    wide = dataclasses.replace(TINY, hidden=256, head_dim=None)
    params = init(wide, jax.random.key(0))
    assert np.std(params["layers"]["gate"]) == pytest.approx(1 / 16, rel=0.05)
    assert np.std(PARAMS["layers"]["gate"]) == pytest.approx(1 / 8, rel=0.05)


def test_init_is_haliax_truncated_normal_with_embedding_over_hidden():
    wide = dataclasses.replace(TINY, hidden=256, head_dim=None)
    params = init(wide, jax.random.key(0))
    truncated_std = 0.9866  # std of a standard normal truncated at ±3
    for name, scale in (("embed", 1 / 256), ("lm_head", 1 / 16)):
        w = np.asarray(params[name])
        assert np.std(w) == pytest.approx(truncated_std * scale, rel=0.03), name
        assert np.abs(w).max() <= 3 * scale * (1 + 1e-6), name
    assert np.abs(params["layers"]["down"]).max() <= 3 / np.sqrt(wide.ffn) * (1 + 1e-6)


def test_forward_is_hidden_states_then_output_logits_and_bf16_is_close():
    tokens = _tokens((2, 16))
    bf16 = llama.preset("tiny")

    @jax.jit
    def run(params, tokens):
        hidden = llama.hidden_states(TINY, params, tokens)
        return (hidden, llama.output_logits(TINY, params, hidden),
                llama.hidden_states(bf16, params, tokens), llama.forward(bf16, params, tokens))

    logits = forward32(PARAMS, tokens)
    assert logits.shape == (2, 16, TINY.vocab_size) and logits.dtype == jnp.float32
    hidden, logits_from_hidden, hidden_bf16, logits_bf16 = run(PARAMS, tokens)
    assert hidden.shape == (2, 16, TINY.hidden)
    np.testing.assert_allclose(logits_from_hidden, logits, atol=1e-5)
    assert hidden_bf16.dtype == jnp.bfloat16 and logits_bf16.dtype == jnp.float32
    np.testing.assert_allclose(logits_bf16, logits, atol=0.1)


def test_prefill_and_decode_match_full_forward():
    """Rows at different positions: row 0 has a 5-token prompt, row 1 a 9-token one, both
    right-padded into one prefill chunk, then decoded one token at a time."""
    full_tokens = _tokens((2, 14))
    full = forward32(PARAMS, full_tokens)
    lengths = np.array([5, 9])
    prompt = np.where(np.arange(9)[None] < lengths[:, None], full_tokens[:, :9], 0)
    step = jax.jit(lambda p, t, pos, c: llama.forward(TINY, p, t, positions=pos, cache=c))
    cache = llama.init_cache(TINY, 2, 16)
    assert cache["k"].shape == (2, 2, 16, 2, 16) and cache["k"].dtype == jnp.float32
    logits, cache = step(PARAMS, prompt, jnp.broadcast_to(jnp.arange(9), (2, 9)), cache)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(logits[row, :n], full[row, :n], atol=1e-5)
    pos = lengths.copy()
    for _ in range(5):
        tok = full_tokens[np.arange(2), pos][:, None]
        logits, cache = step(PARAMS, tok, pos[:, None], cache)
        for row in range(2):
            np.testing.assert_allclose(logits[row, 0], full[row, pos[row]], atol=1e-5)
        pos += 1


def test_cache_requires_positions():
    with pytest.raises(ValueError, match="positions"):
        llama.forward(TINY, PARAMS, _tokens((1, 4)), cache=llama.init_cache(TINY, 1, 8))


@pytest.mark.parametrize("cross_document", [False, True])
def test_segment_masking(cross_document):
    config = dataclasses.replace(TINY, cross_document_attention=cross_document)
    fwd = jax.jit(lambda p, t, s: llama.forward(config, p, t, s))
    segs = np.array([[1] * 8 + [2] * 8])  # doc A then doc B
    tokens = _tokens((1, 16))
    changed = tokens.copy()
    changed[0, :8] = (tokens[0, :8] + 7) % TINY.vocab_size
    diff_b = np.abs(fwd(PARAMS, tokens, segs)[0, 8:] - fwd(PARAMS, changed, segs)[0, 8:]).max()
    if cross_document:
        assert diff_b > 1e-3
    else:
        assert diff_b == 0.0


def _gqa_inputs():
    rng = np.random.default_rng(3)
    return [rng.standard_normal(s).astype(np.float32) for s in [(2, 12, 4, 8), (2, 12, 2, 8),
                                                                 (2, 12, 2, 8)]]


@pytest.mark.parametrize("with_segments", [False, True])
def test_attention_fallback_matches_jax_reference(with_segments):
    q, k, v = _gqa_inputs()
    segs = np.array([[0] * 5 + [1] * 7, [0] * 12]) if with_segments else None
    ours = jax.jit(lambda q, k, v, s: attention.causal_attention(q, k, v, s))(q, k, v, segs)
    mask = None if segs is None else (segs[:, :, None] == segs[:, None, :])[:, None]
    ref = jax.jit(lambda q, k, v, m: jax.nn.dot_product_attention(
        q, k, v, mask=m, is_causal=True, implementation="xla"))(q, k, v, mask)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_attention_backend_choice_on_cpu():
    q = jax.ShapeDtypeStruct((2, 12, 4, 8), jnp.bfloat16)
    for impl in ("auto", "xla", "splash", "cudnn"):
        assert attention.resolve(impl, q) == "xla"
    with pytest.raises(ValueError, match="attention"):
        dataclasses.replace(TINY, attention="flash3")


def test_remat_policies_give_same_gradients(capsys):
    tokens = _tokens((2, 16))

    def grads(remat, params):
        config = dataclasses.replace(TINY, remat=remat)
        return jax.grad(lambda p: llama.forward(config, p, tokens).mean())(params)

    ref, full, dots = jax.jit(lambda p: [grads(r, p) for r in ("none", "full", "dots")])(PARAMS)
    saved = {}
    for remat in ("none", "full", "dots"):
        config = dataclasses.replace(TINY, remat=remat)
        print_saved_residuals(lambda p: llama.forward(config, p, tokens).sum(), PARAMS)
        saved[remat] = len(capsys.readouterr().out.splitlines())
    assert saved["full"] < saved["dots"] < saved["none"]  # "dots" keeps the matmul outputs
    for a, b, c in zip(jax.tree.leaves(ref), jax.tree.leaves(full), jax.tree.leaves(dots)):
        np.testing.assert_allclose(b, a, atol=1e-6)
        np.testing.assert_allclose(c, a, atol=1e-6)


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2), (2, 1, 4)])
def test_splash_kernel_matches_fallback(mesh_shape):
    """The TPU kernel, run in the Pallas interpreter: forward and gradients, GQA, segments,
    and under a mesh through shard_map (on (2, 1, 4) the 4 query heads could split over tensor
    but the 2 kv heads cannot)."""
    rng = np.random.default_rng(4)
    q, k, v = [rng.standard_normal((2, 128, h, 16)).astype(np.float32) for h in (4, 2, 2)]
    segs = np.array([[0] * 50 + [1] * 78, [0] * 128], np.int32)

    def loss(fn, q, k, v):
        out = fn(q, k, v, segs)
        return (out * np.arange(16)).sum(), out

    splash = jax.jit(jax.value_and_grad(
        lambda *a: loss(functools.partial(attention.splash_attention, interpret=True), *a),
        argnums=(0, 1, 2), has_aux=True))
    ref = jax.jit(jax.value_and_grad(lambda *a: loss(attention.causal_attention, *a),
                                     argnums=(0, 1, 2), has_aux=True))
    if mesh_shape is None:
        got = splash(q, k, v)
    else:
        with jax.set_mesh(sharding.make_mesh(*mesh_shape)):
            got = splash(q, k, v)
    want = ref(q, k, v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-4)
