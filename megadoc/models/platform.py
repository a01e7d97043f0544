"""The platform the model is traced for: where its compiled code will run.

That is jax's default backend, except while a plan compiles for hardware this host does not have
(a TPU slice, from a CPU machine: `megadoc.compiled`), when `target("tpu")` says so. Everything
chosen per platform (the dot's dtype, the KV cache's, the fused attention kernel, whether the
layer scan is unrolled) asks here, so a planned step is the step that will run.
"""
import contextlib
import contextvars

import jax

_TARGET = contextvars.ContextVar("megadoc_target_platform", default=None)


def name() -> str:
    """"cpu", "tpu" or "gpu": the target set by `target`, else jax's default backend."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def target(platform: str):
    """Trace for `platform` inside this block (lowering only: nothing runs there)."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)
