"""matmul.einsum: operands rounded to the compute dtype, products accumulated in fp32, forward
and backward, whichever dtype the dot itself runs in (`dot_dtype`: on XLA:CPU fp32 unless the CPU
has bf16 dot units); and the choice of that dtype."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megadoc.models import matmul


def _rounded64(a):
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("cpu_dots", ["bf16", "fp32"])
def test_value_and_gradients_are_products_of_bf16_rounded_operands(cpu_dots, monkeypatch):
    monkeypatch.setenv(matmul.OVERRIDE_ENV, cpu_dots)  # bf16: also the form TPU and GPU run
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


def _cpuinfo(tmp_path, flags_line):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\n{flags_line}\n\n")
    return str(path)


@pytest.mark.parametrize("flags_line, want", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16", ("avx512_bf16",)),  # AMD Zen 4
    ("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile", ("avx512_bf16", "amx_bf16")),
    ("Features\t: fp asimd sve bf16 i8mm", ("bf16",)),  # arm64 with BF16
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni", ()),  # no bf16 units
])
def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path, flags_line, want):
    assert matmul.cpu_bf16_flags(_cpuinfo(tmp_path, flags_line)) == want


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the dot form is chosen on XLA:CPU")
@pytest.mark.parametrize("flags, want", [(("avx512_bf16",), jnp.bfloat16), ((), jnp.float32)])
def test_dot_dtype_flips_with_the_cpus_bf16_units(monkeypatch, flags, want):
    monkeypatch.delenv(matmul.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(matmul, "cpu_bf16_flags", lambda: flags)
    assert matmul.dot_dtype(jnp.bfloat16) == want
    assert matmul.cpu_dot_choice()[0] == ("bf16" if flags else "fp32")
    monkeypatch.setenv(matmul.OVERRIDE_ENV, "fp32" if flags else "bf16")  # the override wins
    assert matmul.dot_dtype(jnp.bfloat16) != want
    assert matmul.dot_dtype(jnp.float32) == jnp.float32


def test_a_bad_override_is_named(monkeypatch):
    monkeypatch.setenv(matmul.OVERRIDE_ENV, "fp16")
    with pytest.raises(ValueError, match="MEGADOC_CPU_DOTS='fp16'"):
        matmul.cpu_dot_choice()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fp32 dot form is XLA:CPU's")
def test_fp32_rounding_is_the_bf16_cast_bit_for_bit(monkeypatch):
    """With fp32 dots operands are rounded by reduce_precision (XLA hoists it out of a decode
    loop, which it does not do for a convert pair); it must be the bf16 round trip exactly."""
    monkeypatch.setenv(matmul.OVERRIDE_ENV, "fp32")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1 << 16) * 10.0 ** rng.integers(-44, 38, 1 << 16)).astype(np.float32)
    edges = [np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1.1754942e-38, 1.1754944e-38]
    x = jnp.asarray(np.concatenate([x, np.array(edges, np.float32)]))
    rounded = np.asarray(matmul.operand(x, jnp.bfloat16))
    assert rounded.dtype == np.float32
    expected = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(rounded.view(np.uint32), expected.view(np.uint32))
