"""Attention behind one function: XLA dot-product everywhere, fused kernels where they exist.

"auto" picks splash attention on TPU, cuDNN flash attention on GPU (bf16/fp16 compute), and the
plain XLA dot-product elsewhere. Inputs are q [B, T, N, Dh], k/v [B, S, K, Dh] with N a multiple
of K (grouped-query attention); outputs are [B, T, N, Dh] in q's dtype.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from megadoc.models import platform, sharding

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
_SPLASH_BLOCK = 128


def resolve(implementation, q_BxTxNxDh):
    """The backend that will actually run: fused kernels only where they apply."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, "
                         f"got {implementation!r}")
    target = platform.name()
    if implementation == "auto":
        implementation = {"tpu": "splash", "gpu": "cudnn"}.get(target, "xla")
    T, Dh = q_BxTxNxDh.shape[1], q_BxTxNxDh.shape[3]
    if implementation == "splash" and (target != "tpu" or T % _SPLASH_BLOCK):
        return "xla"
    if implementation == "cudnn" and (
            target != "gpu" or q_BxTxNxDh.dtype not in (jnp.bfloat16, jnp.float16)
            or Dh % 8 or Dh > 128):
        return "xla"
    return implementation


def masked_attention(q_BxTxNxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS):
    """Dot-product attention where query t may see key s iff mask[b, t, s]; fp32 softmax, its
    probabilities rounded to q's (the compute) dtype, whatever dtype a KV cache stores."""
    B, T, N, Dh = q_BxTxNxDh.shape
    K = k_BxSxKxDh.shape[2]
    q_BxTxKxGxDh = q_BxTxNxDh.reshape(B, T, K, N // K, Dh)
    scores_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxDh, k_BxSxKxDh,
                                  preferred_element_type=jnp.float32) / math.sqrt(Dh)
    scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS,
                                 jnp.finfo(jnp.float32).min)
    probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(q_BxTxNxDh.dtype)
    out_BxTxKxGxDh = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, v_BxSxKxDh,
                                preferred_element_type=jnp.float32)
    return out_BxTxKxGxDh.reshape(B, T, N, Dh).astype(q_BxTxNxDh.dtype)


def cached_attention(q_BxTxNxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS):
    """Queries over a KV cache that already holds their own keys; query t sees slot s iff
    mask[b, t, s]. A single-token chunk (decode) multiplies a block-diagonal query [N, K*Dh]
    with the cache viewed as [S, K*Dh]: K times the (tiny) flops, but plain batched matmuls that
    read the cache in its stored layout, where per-kv-head batching makes XLA:CPU transpose the
    whole cache every step."""
    B, T, N, Dh = q_BxTxNxDh.shape
    S, K = k_BxSxKxDh.shape[1:3]
    if T > 1:
        return masked_attention(q_BxTxNxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS)
    eye_KxK = jnp.eye(K, dtype=q_BxTxNxDh.dtype)
    q_BxNxE = (q_BxTxNxDh.reshape(B, K, N // K, 1, Dh) * eye_KxK[:, None, :, None]).reshape(
        B, N, K * Dh)
    scores_BxSxN = jnp.einsum("bse,bne->bsn", k_BxSxKxDh.reshape(B, S, K * Dh), q_BxNxE,
                              preferred_element_type=jnp.float32) / math.sqrt(Dh)
    scores_BxNxS = jnp.where(mask_BxTxS, jnp.swapaxes(scores_BxSxN, 1, 2),
                             jnp.finfo(jnp.float32).min)
    probs_BxNxS = jax.nn.softmax(scores_BxNxS, axis=-1).astype(q_BxTxNxDh.dtype)
    out_BxNxE = jnp.einsum("bns,bse->bne", probs_BxNxS, v_BxSxKxDh.reshape(B, S, K * Dh),
                           preferred_element_type=jnp.float32)
    # Each query head keeps the block of its own kv head.
    out_BxGxDhxK = jnp.diagonal(out_BxNxE.reshape(B, K, N // K, K, Dh), axis1=1, axis2=3)
    out_BxNxDh = jnp.moveaxis(out_BxGxDhxK, -1, 1)
    return out_BxNxDh.reshape(B, T, N, Dh).astype(q_BxTxNxDh.dtype)


def causal_mask(T, segment_ids_BxT=None):
    """[B or 1, T, T]: causal, and within one document when segment ids are given."""
    mask_TxT = jnp.tril(jnp.ones((T, T), bool))[None]
    if segment_ids_BxT is None:
        return mask_TxT
    return mask_TxT & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])


def causal_attention(q_BxTxNxDh, k_BxTxKxDh, v_BxTxKxDh, segment_ids_BxT=None, *,
                     implementation="auto"):
    """Causal self-attention; with segment ids, tokens attend only inside their segment."""
    backend = resolve(implementation, q_BxTxNxDh)
    if backend == "splash":
        return splash_attention(q_BxTxNxDh, k_BxTxKxDh, v_BxTxKxDh, segment_ids_BxT)
    if backend == "cudnn":
        mask = None if segment_ids_BxT is None else causal_mask(q_BxTxNxDh.shape[1],
                                                                segment_ids_BxT)[:, None]
        return jax.nn.dot_product_attention(q_BxTxNxDh, k_BxTxKxDh, v_BxTxKxDh, mask=mask,
                                            is_causal=True, implementation="cudnn")
    return masked_attention(q_BxTxNxDh, k_BxTxKxDh, v_BxTxKxDh,
                            causal_mask(q_BxTxNxDh.shape[1], segment_ids_BxT))


def _splash_kernel(heads, seq_len, interpret):
    """Built per trace: the kernel holds its mask tables as arrays of the trace it was made in."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len))] * heads)
    block = next(b for b in (512, 256, 128) if seq_len % b == 0)
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    return sa.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                              interpret=interpret)


def splash_attention(q_BxTxNxDh, k_BxTxKxDh, v_BxTxKxDh, segment_ids_BxT=None, *,
                     interpret=False):
    """TPU splash attention (causal, segment ids), run per shard under the current mesh with
    batch and heads split. T must be a multiple of 128. `interpret` runs the Pallas kernel in
    the interpreter, which is how CPU tests check it."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    B, T, N, Dh = q_BxTxNxDh.shape
    if segment_ids_BxT is None:
        segment_ids_BxT = jnp.zeros((B, T), jnp.int32)

    def attend(q, k, v, segs):
        kernel = _splash_kernel(q.shape[1], T, interpret)
        ids = sa.SegmentIds(q=segs, kv=segs)
        return jax.vmap(kernel)(q, k, v, segment_ids=ids)

    # splash wants [B, heads, T, Dh] and does not scale the scores: scale q here.
    args = (jnp.swapaxes(q_BxTxNxDh / np.sqrt(Dh).astype(q_BxTxNxDh.dtype), 1, 2),
            jnp.swapaxes(k_BxTxKxDh, 1, 2), jnp.swapaxes(v_BxTxKxDh, 1, 2), segment_ids_BxT)
    mesh = sharding.current_mesh()
    if mesh is None:
        out_BxNxTxDh = attend(*args)
    else:
        heads_spec = sharding.spec(("batch", "heads", "seq", "head_dim"), (B, N, T, Dh), mesh)
        kv_spec = sharding.spec(("batch", "kv_heads", "seq", "head_dim"),
                                (B, k_BxTxKxDh.shape[2], T, Dh), mesh)
        if heads_spec[1] != kv_spec[1]:
            # Each shard must hold whole query groups with their kv head: split both or neither.
            heads_spec = P(heads_spec[0], None, *heads_spec[2:])
            kv_spec = P(kv_spec[0], None, *kv_spec[2:])
        seg_spec = sharding.spec(("batch", "seq"), (B, T), mesh)
        out_BxNxTxDh = jax.shard_map(attend, mesh=mesh,
                                     in_specs=(heads_spec, kv_spec, kv_spec, seg_spec),
                                     out_specs=heads_spec, check_vma=False)(*args)
    return jnp.swapaxes(out_BxNxTxDh, 1, 2)
