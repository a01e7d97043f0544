"""AdamW as in the papers: clip 1.0, cosine to 0 after a linear warmup, decoupled weight decay.

Weight decay follows optax semantics (decay term multiplied by the learning rate), so the large
values the papers tune (0.1 … 3.2) mean the same thing here as there. The decay mask excludes
parameters whose path contains any of `no_decay` (norm scales by default). Embedding and output
matrices ARE decayed: the papers' Levanter runs decay every matrix, and with untied embeddings
the output head is an ordinary projection.
"""
from __future__ import annotations

import jax
import optax

from megadoc.train.config import OptimizerConfig


def lr_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_frac` of the steps, then cosine to exactly 0 at the end."""
    warmup = max(1, round(config.warmup_frac * num_steps)) if config.warmup_frac > 0 else 0
    if warmup == 0:
        return optax.cosine_decay_schedule(config.lr, decay_steps=max(1, num_steps), alpha=0.0)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=0.0)


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
