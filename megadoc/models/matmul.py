"""Mixed-precision einsum whose backward also runs on the fast path.

Operands are rounded to the compute dtype and products accumulated in fp32, forward and
backward. Autodiff of a plain `einsum(..., preferred_element_type=float32)` would feed the
transposed products an fp32 cotangent against a bf16 operand, which XLA:CPU runs on a slow
single-threaded path; here the cotangent is rounded to the compute dtype too.

On XLA:CPU the dot itself runs in fp32 on the rounded operands (`dot_dtype`): the products of
two bf16 values are exact in fp32 and both forms accumulate in fp32, so only the summation
order can differ, but a CPU without bf16 units runs fp32 dots faster (1.1-1.4x at the train
step's shapes; decode 1.17x at batch 64, unchanged at batch 32 over 640 cached positions where
attention dominates; measured with jax 0.10).
"""
import functools

import jax
import jax.numpy as jnp

from megadoc.models import platform


def dot_dtype(dtype):
    """The dtype a dot of `dtype`-rounded operands reads: fp32 for bf16 on XLA:CPU."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.bfloat16 and platform.name() == "cpu":
        return jnp.dtype(jnp.float32)
    return dtype


def operand(a, dtype):
    """`a` rounded to `dtype`, in the dtype the dot reads. For fp32 dots of bf16 values the
    rounding is a same-size reduce_precision, not a convert pair: inside a decode loop XLA
    hoists it out of the loop for loop-invariant weights already held in fp32."""
    dtype = jnp.dtype(dtype)
    if dot_dtype(dtype) == dtype:
        return a.astype(dtype)
    finfo = jnp.finfo(dtype)
    return jax.lax.reduce_precision(a.astype(jnp.float32), exponent_bits=finfo.nexp,
                                    mantissa_bits=finfo.nmant)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def einsum(spec: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """`spec` is "X,W->Y" with every index of each operand also in the other or in Y."""
    return jnp.einsum(spec, operand(x, dtype), operand(w, dtype),
                      preferred_element_type=jnp.float32)


def _fwd(spec, x, w, dtype):
    return einsum(spec, x, w, dtype), (x, w)


def _bwd(spec, dtype, residuals, g):
    x, w = residuals
    inputs, y = spec.split("->")
    xs, ws = inputs.split(",")
    g = operand(g, dtype)
    dx = jnp.einsum(f"{y},{ws}->{xs}", g, operand(w, dtype), preferred_element_type=jnp.float32)
    dw = jnp.einsum(f"{xs},{y}->{ws}", operand(x, dtype), g, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


einsum.defvjp(_fwd, _bwd)
