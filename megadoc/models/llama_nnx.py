"""The Llama as a `flax.nnx` module over the functional core in llama.py.

Its Params hold exactly `llama.init`'s arrays, each annotated with its logical axes
(`llama.PARAM_AXES`, the names the rules in sharding.py place), and calling it runs
`llama.forward`. So `nnx.split(model)[1].to_pure_dict()` is today's params pytree (a checkpoint
stays a plain orbax tree), `Llama(config, params=...)` wraps any such pytree (a checkpoint, an
HF import), and nnx transforms (`nnx.jit`, `nnx.grad`, optimizers) compose with it.

    model = Llama(config, rngs=nnx.Rngs(params=0))
    logits_BxTxV = model(tokens_BxT)
    graphdef, state = nnx.split(model)
"""
from __future__ import annotations

import jax
from flax import nnx

from megadoc.models import llama

TOP_LEVEL = ("embed", "final_norm", "lm_head")


def _param(name: str, value) -> nnx.Param:
    # eager_sharding off: placement follows sharding.py's rules (`shardings`), which also fall
    # back to replication where a mesh axis does not divide a dimension.
    return nnx.Param(value, sharding_names=llama.PARAM_AXES[name], eager_sharding=False)


class Llama(nnx.Module):
    def __init__(self, config: llama.LlamaConfig, *, rngs: nnx.Rngs | None = None,
                 params: dict | None = None):
        if params is None:
            if rngs is None:
                raise ValueError("Llama needs rngs (a fresh init) or params (existing weights)")
            params = llama.init(config, rngs.params())
        self.config = config
        for name in TOP_LEVEL:
            setattr(self, name, _param(name, params[name]))
        self.layers = nnx.data({name: _param(name, v) for name, v in params["layers"].items()})

    @property
    def params(self) -> dict:
        """The functional core's params pytree (the Params' current arrays)."""
        return {**{name: getattr(self, name)[...] for name in TOP_LEVEL},
                "layers": {name: p[...] for name, p in self.layers.items()}}

    def shardings(self, mesh) -> dict:
        """NamedShardings of `params` on `mesh`, by the same logical-axis rules as training."""
        return llama.param_shardings(self.config, mesh)

    def __call__(self, tokens_BxT: jax.Array, segment_ids_BxT=None, *, positions=None):
        """Logits float32 [B, T, V], as `llama.forward`."""
        return llama.forward(self.config, self.params, tokens_BxT, segment_ids_BxT,
                             positions=positions)
