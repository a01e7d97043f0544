"""Mixed-precision einsum whose backward also runs on the fast path.

Forward: operands cast to the compute dtype, products accumulated in fp32. Autodiff of a plain
`einsum(..., preferred_element_type=float32)` feeds the transposed products an fp32 cotangent
against a bf16 operand; XLA:CPU runs that mixed-dtype dot on a slow single-threaded path (the
MLP backward measured ~3x slower than this). Here the cotangent is cast to the compute dtype,
so every backward product is again compute-dtype inputs with fp32 accumulation.
"""
import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def einsum(spec: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """`spec` is "X,W->Y" with every index of each operand also in the other or in Y."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _fwd(spec, x, w, dtype):
    return einsum(spec, x, w, dtype), (x, w)


def _bwd(spec, dtype, residuals, g):
    x, w = residuals
    inputs, y = spec.split("->")
    xs, ws = inputs.split(",")
    g = g.astype(dtype)
    dx = jnp.einsum(f"{y},{ws}->{xs}", g, w.astype(dtype), preferred_element_type=jnp.float32)
    dw = jnp.einsum(f"{xs},{y}->{ws}", x.astype(dtype), g, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


einsum.defvjp(_fwd, _bwd)
