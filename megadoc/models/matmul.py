"""Mixed-precision einsum whose backward also runs on the fast path.

Operands are rounded to the compute dtype and products accumulated in fp32, forward and
backward. Autodiff of a plain `einsum(..., preferred_element_type=float32)` would feed the
transposed products an fp32 cotangent against a bf16 operand, which XLA:CPU runs on a slow
single-threaded path; here the cotangent is rounded to the compute dtype too.

On XLA:CPU the dot may run in fp32 on the rounded operands (`dot_dtype`): the products of two
bf16 values are exact in fp32 and both forms accumulate in fp32, so only the summation order can
differ. Which form is faster depends on the CPU: without bf16 units fp32 dots are 1.1-1.4x faster
at the train step's shapes; with them (avx512_bf16, amx_bf16) bf16 dots are (1.28x on an AMD EPYC
with avx512_bf16, 1.50x on an Intel Xeon with AMX; hidden 256, 2 layers, batch 8 x 256). The choice reads the CPU's flags rather than timing a probe: a flag is the same
on every start, so a resumed run takes the same path (and summation order) as the run it
continues, where a timing on a shared machine could flip between restarts.
"""
import functools
import os

import jax
import jax.numpy as jnp

from megadoc.models import platform


OVERRIDE_ENV = "MEGADOC_CPU_DOTS"
"""Environment variable that forces the XLA:CPU dot form: "bf16" or "fp32" (tests, benches)."""
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of bf16 dot units: x86's AVX512-BF16 and AMX-BF16, arm64's BF16."""


@functools.lru_cache(maxsize=None)
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bf16 dot flags this CPU reports (empty where /proc/cpuinfo is absent)."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def cpu_dot_choice() -> tuple[str, str]:
    """("bf16" or "fp32", why) for bf16 dots on XLA:CPU: the override, else the CPU's flags."""
    forced = os.environ.get(OVERRIDE_ENV, "")
    if forced:
        if forced not in ("bf16", "fp32"):
            raise ValueError(f"{OVERRIDE_ENV}={forced!r}: expected bf16 or fp32")
        return forced, f"{OVERRIDE_ENV}={forced}"
    flags = cpu_bf16_flags()
    if flags:
        return "bf16", f"CPU has bf16 dot units ({', '.join(flags)})"
    return "fp32", "CPU has no bf16 dot units (no avx512_bf16, amx_bf16 or bf16 flag)"


def dot_dtype(dtype):
    """The dtype a dot of `dtype`-rounded operands reads: fp32 for bf16 on XLA:CPU unless the
    CPU has bf16 dot units (`cpu_dot_choice`)."""
    dtype = jnp.dtype(dtype)
    if (dtype == jnp.bfloat16 and platform.name() == "cpu"
            and cpu_dot_choice()[0] == "fp32"):
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
