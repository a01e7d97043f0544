"""matmul.einsum: operands rounded to the compute dtype, products accumulated in fp32, forward
and backward, whichever dtype the dot itself runs in (`dot_dtype`: fp32 on XLA:CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megadoc.models import matmul


def _rounded64(a):
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("dot_dtype", ["platform", "bfloat16"])
def test_value_and_gradients_are_products_of_bf16_rounded_operands(dot_dtype, monkeypatch):
    if dot_dtype == "bfloat16":  # the form TPU and GPU run
        monkeypatch.setattr(matmul, "dot_dtype", lambda d: jnp.dtype(d))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32, 96)).astype(np.float32)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    g = rng.standard_normal((4, 32, 80)).astype(np.float32)

    y, vjp = jax.vjp(lambda x, w: matmul.einsum("btk,kn->btn", x, w, jnp.bfloat16), x, w)
    dx, dw = vjp(jnp.asarray(g))

    # Exact products of the rounded operands, summed in float64: fp32 accumulation is all
    # that may differ. Unrounded operands would miss by ~1e-3 relative.
    xr, wr, gr = _rounded64(x), _rounded64(w), _rounded64(g)
    np.testing.assert_allclose(y, np.einsum("btk,kn->btn", xr, wr), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dx, np.einsum("btn,kn->btk", gr, wr), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dw, np.einsum("btk,btn->kn", xr, gr), rtol=2e-5, atol=1e-4)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fp32 dot form is XLA:CPU's")
def test_fp32_rounding_is_the_bf16_cast_bit_for_bit():
    """On XLA:CPU operands are rounded by reduce_precision (XLA hoists it out of a decode loop,
    which it does not do for a convert pair); it must be the bf16 round trip exactly."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1 << 16) * 10.0 ** rng.integers(-44, 38, 1 << 16)).astype(np.float32)
    edges = [np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1.1754942e-38, 1.1754944e-38]
    x = jnp.asarray(np.concatenate([x, np.array(edges, np.float32)]))
    rounded = np.asarray(matmul.operand(x, jnp.bfloat16))
    assert rounded.dtype == np.float32
    expected = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(rounded.view(np.uint32), expected.view(np.uint32))
