"""AdamW as in the papers: clip 1.0, cosine to 0 after a linear warmup, decoupled weight decay.

Weight decay follows optax semantics (decay term multiplied by the learning rate), so the large
values the papers tune (0.1 … 3.2) mean the same thing here as there. The decay mask excludes
parameters whose path contains any of `no_decay`: by default the token embedding and the norm
scales, as Levanter's `reasonable_default` mask does (src/levanter/optim/config.py: no decay for
Embedding, LayerNorm/RMSNorm and biases — megadoc's Llama has no biases). The untied output layer
is an ordinary linear weight and is decayed, like every other matrix.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from megadoc.train.config import OptimizerConfig


def lr_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """lr of update k = count + 1 (1-based): k/w·lr over the w = round(warmup_frac·N) warmup
    updates, then a cosine from lr down to exactly 0 at the last update N."""
    warmup = min(num_steps - 1, max(1, round(config.warmup_frac * num_steps))) \
        if config.warmup_frac > 0 else 0
    decay = max(1, num_steps - warmup)

    def schedule(count):
        k = jnp.asarray(count, jnp.float32) + 1
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip((k - warmup) / decay, 0.0, 1.0)))
        return config.lr * jnp.where(k <= warmup, k / max(warmup, 1), cosine)

    return schedule


def path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def decay_mask(config: OptimizerConfig, params):
    """True for parameters that get weight decay."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(s in path_name(path) for s in config.no_decay), params)


def make(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(lr_schedule(config, num_steps), b1=config.b1, b2=config.b2, eps=config.eps,
                    weight_decay=config.weight_decay,
                    mask=lambda params: decay_mask(config, params)),
    )
