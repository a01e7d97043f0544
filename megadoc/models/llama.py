"""Llama: RMSNorm, RoPE (plain or llama3-scaled), grouped-query attention, SwiGLU, no biases.

Params are a plain dict of fp32 arrays; the layer params are stacked on a leading layer axis and
the trunk runs them under `jax.lax.scan`, so a model compiles one layer whatever its depth.
Compute runs in `config.dtype` with fp32 accumulation; logits are fp32.

Param tree (shapes; L layers, H hidden, N heads, K kv heads, Dh head dim, F ffn, V vocab):
  embed [V, H]; final_norm [H]; lm_head [H, V]
  layers/{attn_norm [L, H], q [L, H, N, Dh], k [L, H, K, Dh], v [L, H, K, Dh], o [L, N, Dh, H],
          mlp_norm [L, H], gate [L, H, F], up [L, H, F], down [L, F, H]}
q/k use the rotate-half RoPE layout of Hugging Face checkpoints, so HF weights copy unpermuted.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding

from megadoc.models import attention
from megadoc.models import matmul
from megadoc.models import platform
from megadoc.models import sharding

REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 ("llama3") RoPE frequency scaling."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Model shape and numerics. `head_dim` defaults to hidden // heads (fixed at construction:
    when replacing `hidden` or `heads` of a derived config, pass head_dim=None too)."""

    vocab_size: int
    """tokens in the vocabulary"""
    hidden: int
    """width of the residual stream"""
    ffn: int
    """width of the SwiGLU feed-forward layer"""
    layers: int
    """transformer blocks"""
    heads: int
    """query heads"""
    kv_heads: int
    """key/value heads (grouped-query attention)"""
    head_dim: int | None = None
    """width of a head (None: hidden // heads)"""
    max_seq_len: int = 4096
    """longest sequence the model takes"""
    rope_theta: float = 10000.0
    """RoPE base"""
    rope_scaling: RopeScaling | None = None
    """Llama 3.1 RoPE scaling, or none"""
    norm_eps: float = 1e-5
    """RMSNorm epsilon"""
    dtype: str = "bfloat16"
    """compute dtype (params stay fp32, logits are fp32)"""
    cross_document_attention: bool = True
    """attend across document boundaries in a window"""
    remat: str = "none"
    """rematerialisation of each layer in the backward pass: none | full | dots"""
    attention: str = "auto"
    """attention implementation (see attention.IMPLEMENTATIONS)"""

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention not in attention.IMPLEMENTATIONS:
            raise ValueError(
                f"attention must be one of {attention.IMPLEMENTATIONS}, got {self.attention!r}")
        jnp.dtype(self.dtype)  # fails early on an unknown dtype name

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def _student(hidden, ffn, layers, heads, kv_heads):
    return LlamaConfig(vocab_size=128256, hidden=hidden, ffn=ffn, layers=layers, heads=heads,
                       kv_heads=kv_heads, max_seq_len=4096)


# The papers' students (hidden/ffn/layers/heads/kv heads, Llama 3 vocab, context 4096) with a
# published optimum, and the generator. The paper's size table also lists a 1.4B (2048/7168/16/
# 16/8) that no published run, training preset or command uses: no preset here. llama3-8b's
# max_seq_len is 8192 rather than the released 131072: the RoPE scaling keeps long-context
# behaviour, and 8192 is what the synthesis jobs (≤ 1024 new tokens after a document) ever need;
# raise it with dataclasses.replace for longer prompts.
PRESETS = {
    "tiny": LlamaConfig(vocab_size=256, hidden=64, ffn=192, layers=2, heads=4, kv_heads=2,
                        max_seq_len=256),
    "150m": _student(512, 1792, 6, 8, 8),
    "300m": _student(768, 2688, 12, 12, 12),
    "600m": _student(1024, 3584, 24, 16, 8),
    "1.5b": _student(1536, 5376, 36, 16, 8),
    "llama3-8b": LlamaConfig(vocab_size=128256, hidden=4096, ffn=14336, layers=32, heads=32,
                             kv_heads=8, max_seq_len=8192, rope_theta=500000.0,
                             rope_scaling=RopeScaling()),
}


def preset(name: str) -> LlamaConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


# Logical axes of each param, by leaf name (see the tree above); the rules in sharding.py map them to mesh axes.
PARAM_AXES = {
    "embed": ("embed_vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "attn_norm": ("layers", "norm"),
    "mlp_norm": ("layers", "norm"),
    "q": ("layers", "embed", "heads", "head_dim"),
    "k": ("layers", "embed", "kv_heads", "head_dim"),
    "v": ("layers", "embed", "kv_heads", "head_dim"),
    "o": ("layers", "heads", "head_dim", "embed"),
    "gate": ("layers", "embed", "ffn"),
    "up": ("layers", "embed", "ffn"),
    "down": ("layers", "ffn", "embed"),
}


def param_shardings(config: LlamaConfig, mesh) -> dict:
    """NamedShardings of every param, from its logical axes and the mesh's rules."""
    return jax.tree.map_with_path(
        lambda path, shape: NamedSharding(mesh, sharding.spec(PARAM_AXES[path[-1].key], shape,
                                                                mesh)),
        param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))


def param_shapes(config: LlamaConfig) -> dict:
    c = config
    L, H, N, K, Dh, F, V = c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, c.vocab_size
    return {
        "embed": (V, H),
        "layers": {
            "attn_norm": (L, H), "q": (L, H, N, Dh), "k": (L, H, K, Dh), "v": (L, H, K, Dh),
            "o": (L, N, Dh, H), "mlp_norm": (L, H), "gate": (L, H, F), "up": (L, H, F),
            "down": (L, F, H),
        },
        "final_norm": (H,),
        "lm_head": (H, V),
    }


def num_params(config: LlamaConfig) -> int:
    return sum(math.prod(s) for s in jax.tree.leaves(param_shapes(config),
                                                     is_leaf=lambda x: isinstance(x, tuple)))


# Haliax's initialisers (src/haliax/nn/linear.py, nn/embedding.py at f41e7d4), which the papers'
# Levanter runs used: every linear weight, the untied output layer included, is truncated-normal(±3)
# × 1/sqrt(fan_in); the token embedding is truncated-normal(±3) × 1/hidden; norm scales are 1.
def _fan_in(name, config):
    return {"o": config.heads * config.head_dim, "down": config.ffn}.get(name, config.hidden)


def init(config: LlamaConfig, key: jax.Array) -> dict:
    shapes = param_shapes(config)
    flat, treedef = jax.tree.flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(flat))
    leaves = []
    for (path, shape), k in zip(flat, keys):
        name = path[-1].key
        if name.endswith("norm"):
            leaves.append(jnp.ones(shape, jnp.float32))
            continue
        scale = 1.0 / config.hidden if name == "embed" else 1.0 / math.sqrt(_fan_in(name, config))
        leaves.append(scale * jax.random.truncated_normal(k, -3.0, 3.0, shape, jnp.float32))
    return jax.tree.unflatten(treedef, leaves)


def cache_dtype(config: LlamaConfig):
    """The KV cache's storage dtype: the compute dtype, but fp32 on XLA:CPU. XLA:CPU has no
    bf16 kernel for attention's batched dots and converts the whole cache to fp32 in every
    layer of every decode step (at the SmolLM2-135M shape, batch 8, 384 cached positions: ~40%
    of a step). Keys and values are written already rounded to the compute dtype, and attention
    rounds its probabilities to it too, so fp32 storage changes no result, only the bytes. The
    conversion is XLA:CPU's batched-dot code, not a trait of one chip, so this is not a per-CPU
    choice (unlike `matmul.dot_dtype`; not re-measured on a CPU with bf16 units)."""
    return jnp.dtype(jnp.float32) if platform.name() == "cpu" else config.compute_dtype


def init_cache(config: LlamaConfig, batch_size: int, max_len: int) -> dict:
    shape = (config.layers, batch_size, max_len, config.kv_heads, config.head_dim)
    dtype = cache_dtype(config)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def rope_frequencies(config: LlamaConfig) -> jax.Array:
    """Inverse frequencies [Dh/2], with llama3 scaling when configured."""
    dh = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (> original/low) are slowed by `factor`, short ones (< original/high) kept,
    # and the band between interpolates smoothly.
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smooth = jnp.clip(smooth, 0.0, 1.0)
    return (1 - smooth) * inv_freq / s.factor + smooth * inv_freq


def rope_angles(config: LlamaConfig, positions_BxT):
    """(cos, sin), each [B, T, 1, Dh/2]: computed once, shared by every layer."""
    angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * rope_frequencies(config)
    return jnp.cos(angles_BxTxF)[:, :, None, :], jnp.sin(angles_BxTxF)[:, :, None, :]


def apply_rope(x_BxTxNxDh, rope):
    """Rotate-half RoPE (the pairing HF checkpoints use: dim i with dim i + Dh/2)."""
    cos, sin = rope
    x = x_BxTxNxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxNxDh.dtype)


def rms_norm(x, scale, eps):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale).astype(x.dtype)


def _mm(spec, x, w, dtype):
    """einsum in the compute dtype, accumulated in fp32, result back in the compute dtype;
    named so the "dots" remat policy can keep it (it cannot see inside matmul's custom_vjp)."""
    return checkpoint_name(matmul.einsum(spec, x, w, dtype).astype(dtype), "matmul")


def _layer(config, rope, x_BxTxH, p, positions_BxT, segment_ids_BxT, cache=None):
    """One block; returns the new residual stream and this chunk's (k, v), or, with `cache` =
    (k [B, S, K, Dh], v, mask over cache slots [B, T, S]), the updated cache: the chunk's keys and
    values are written at their positions first, then queries attend over the cache alone (a
    write before the reads lets XLA update a loop-carried cache in place)."""
    dt = config.compute_dtype
    h = rms_norm(x_BxTxH, p["attn_norm"], config.norm_eps)
    q_BxTxNxDh = sharding.constrain(_mm("bth,hnd->btnd", h, p["q"], dt), sharding.ACT_HEADS)
    k_BxTxKxDh = sharding.constrain(_mm("bth,hkd->btkd", h, p["k"], dt), sharding.ACT_KV_HEADS)
    v_BxTxKxDh = sharding.constrain(_mm("bth,hkd->btkd", h, p["v"], dt), sharding.ACT_KV_HEADS)
    q_BxTxNxDh = apply_rope(q_BxTxNxDh, rope)
    k_BxTxKxDh = apply_rope(k_BxTxKxDh, rope)
    if cache is None:
        segs = None if config.cross_document_attention else segment_ids_BxT
        att_BxTxNxDh = attention.causal_attention(q_BxTxNxDh, k_BxTxKxDh, v_BxTxKxDh, segs,
                                                  implementation=config.attention)
    else:
        cache_k_BxSxKxDh, cache_v_BxSxKxDh, mask_BxTxS = cache
        rows_Bx1 = jnp.arange(x_BxTxH.shape[0])[:, None]
        cache_k_BxSxKxDh = cache_k_BxSxKxDh.at[rows_Bx1, positions_BxT].set(
            k_BxTxKxDh.astype(cache_k_BxSxKxDh.dtype))
        cache_v_BxSxKxDh = cache_v_BxSxKxDh.at[rows_Bx1, positions_BxT].set(
            v_BxTxKxDh.astype(cache_v_BxSxKxDh.dtype))
        att_BxTxNxDh = attention.cached_attention(q_BxTxNxDh, cache_k_BxSxKxDh, cache_v_BxSxKxDh,
                                                  mask_BxTxS)
    x_BxTxH = x_BxTxH + _mm("btnd,ndh->bth", att_BxTxNxDh, p["o"], dt)
    x_BxTxH = sharding.constrain(x_BxTxH, sharding.ACT_EMBED)

    h = rms_norm(x_BxTxH, p["mlp_norm"], config.norm_eps)
    gate_BxTxF = sharding.constrain(_mm("bth,hf->btf", h, p["gate"], dt), sharding.ACT_FFN)
    up_BxTxF = sharding.constrain(_mm("bth,hf->btf", h, p["up"], dt), sharding.ACT_FFN)
    x_BxTxH = x_BxTxH + _mm("btf,fh->bth", jax.nn.silu(gate_BxTxF) * up_BxTxF, p["down"], dt)
    kv = (k_BxTxKxDh, v_BxTxKxDh) if cache is None else (cache_k_BxSxKxDh, cache_v_BxSxKxDh)
    return sharding.constrain(x_BxTxH, sharding.ACT_EMBED), kv


def _remat(fn, policy):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names("matmul"))


def unstack_layers(stacked) -> tuple:
    """The per-layer slices of a tree whose leaves carry a leading layer axis (the layer params,
    a cache's "k" or "v"). A decode loop passes params and cache this way: each layer then reads
    its own buffers (no slicing copy per step) and its cache is updated in place."""
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    return tuple(jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers))


def _embed(config: LlamaConfig, params: dict, tokens_BxT) -> jax.Array:
    # Gather the (FSDP-sharded) table whole first, so the lookup is local to each batch shard.
    embed_VxH = sharding.constrain(params["embed"].astype(config.compute_dtype),
                                   sharding.GATHERED_EMBED)
    return sharding.constrain(embed_VxH[tokens_BxT], sharding.ACT_EMBED)


def _unroll_layers() -> bool:
    """Whether the layer scan is unrolled: on XLA:CPU only, where a rolled scan copies each
    layer's weight slice and stacks every layer's residuals (the attention probabilities
    among them) through dynamic slices; unrolled, the demo's students train ~20% faster. TPU
    and GPU keep the rolled scan, whose compile time does not grow with depth. The copies are
    XLA:CPU's code for a rolled scan, not a trait of one chip, so this is not a per-CPU choice
    (unlike `matmul.dot_dtype`)."""
    return platform.name() == "cpu"


def hidden_states(config: LlamaConfig, params: dict, tokens: jax.Array, segment_ids=None, *,
                  positions=None):
    """Trunk output after the final norm, [B, T, H] in the compute dtype. Attention is causal by
    index (and within documents when segment ids are given and cross-document attention is
    off); `positions` (default 0..T-1) only sets RoPE. The layers run under one scan, unrolled
    on XLA:CPU (see `_unroll_layers`)."""
    B, T = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    rope = rope_angles(config, positions)

    def step(x, p):
        return _layer(config, rope, x, p, positions, segment_ids)[0], None

    x_BxTxH, _ = jax.lax.scan(_remat(step, config.remat), _embed(config, params, tokens),
                              params["layers"], unroll=_unroll_layers())
    return rms_norm(x_BxTxH, params["final_norm"], config.norm_eps)


def cached_hidden_states(config: LlamaConfig, params: dict, tokens: jax.Array, positions,
                         cache: dict):
    """(trunk output [B, T, H], updated cache) for tokens at `positions` [B, T] (distinct within
    a row): their keys/values are written there and each attends to cache slots 0..position.
    The cache's "k"/"v" are stacked [layers, B, S, K, Dh] arrays (the layers run under a scan,
    as for a prefill) or tuples of per-layer [B, S, K, Dh] arrays (`unstack_layers`; the layers
    run unrolled and the cache comes back per layer, as a decode loop wants);
    `params["layers"]` may be unstacked too."""
    rope = rope_angles(config, positions)
    x_BxTxH = _embed(config, params, tokens)
    layers = params["layers"]
    per_layer = isinstance(cache["k"], (list, tuple))
    slots_S = jnp.arange((cache["k"][0] if per_layer else cache["k"]).shape[-3])
    mask_BxTxS = slots_S[None, None, :] <= positions[:, :, None]
    if per_layer:
        if not isinstance(layers, (list, tuple)):
            layers = unstack_layers(layers)
        new_k, new_v = [], []
        for p, k, v in zip(layers, cache["k"], cache["v"]):
            x_BxTxH, (k, v) = _layer(config, rope, x_BxTxH, p, positions, None,
                                     (k, v, mask_BxTxS))
            new_k.append(k)
            new_v.append(v)
        cache = {"k": tuple(new_k), "v": tuple(new_v)}
    else:
        def step(x, layer_in):
            p, k, v = layer_in
            return _layer(config, rope, x, p, positions, None, (k, v, mask_BxTxS))

        x_BxTxH, (k_LxBxSxKxDh, v_LxBxSxKxDh) = jax.lax.scan(
            step, x_BxTxH, (layers, cache["k"], cache["v"]))
        cache = {"k": k_LxBxSxKxDh, "v": v_LxBxSxKxDh}
    return rms_norm(x_BxTxH, params["final_norm"], config.norm_eps), cache


def output_logits(config: LlamaConfig, params: dict, hidden_BxTxH: jax.Array) -> jax.Array:
    dt = config.compute_dtype
    logits = matmul.einsum("bth,hv->btv", hidden_BxTxH, params["lm_head"], dt)
    return sharding.constrain(logits, sharding.ACT_VOCAB)


def forward(config: LlamaConfig, params: dict, tokens: jax.Array, segment_ids=None, *,
            positions=None, cache=None):
    """Logits float32 [B, T, V]; `(logits, cache)` when a cache is given (then `positions` is
    required and segment ids are not supported: see `cached_hidden_states`)."""
    if cache is None:
        return output_logits(config, params, hidden_states(config, params, tokens, segment_ids,
                                                           positions=positions))
    if positions is None:
        raise ValueError("forward with a cache needs positions [batch, seq]")
    if segment_ids is not None and not config.cross_document_attention:
        raise ValueError("segment-id masking is not supported with a KV cache")
    hidden, cache = cached_hidden_states(config, params, tokens, positions, cache)
    return output_logits(config, params, hidden), cache
