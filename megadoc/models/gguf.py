"""Llama-architecture GGUF files (llama.cpp's format; F32, F16, BF16 and every quantization the
`gguf` package dequantizes, e.g. Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) as megadoc params, local or gs://.

The weights are dequantized to float32 one tensor at a time and placed like a Hugging Face
checkpoint's (`hf.params_from_hf_tensors`), so `hf.save` turns a GGUF into an HF directory.
llama.cpp's converter permutes the rows of q and k (interleaved RoPE pairs); `load` undoes that,
giving the rotate-half layout of HF checkpoints that llama.py uses. A file without `output.weight`
has tied embeddings: the output layer is the embedding table.
"""
from __future__ import annotations

import numpy as np

from megadoc import gguf_file
from megadoc.models import hf
from megadoc.models import llama

ARCHITECTURE = "llama"

_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
          "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
          "self_attn.o_proj.weight": "attn_output.weight",
          "post_attention_layernorm.weight": "ffn_norm.weight",
          "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
          "mlp.down_proj.weight": "ffn_down.weight"}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    _, _, i, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
    return f"blk.{i}.{_LAYER[suffix]}"


def config_from_metadata(reader, path: str) -> llama.LlamaConfig:
    """LlamaConfig from a GGUF's `llama.*` metadata; any other architecture is a ValueError."""
    def get(key, *default):
        return gguf_file.field(reader, f"{ARCHITECTURE}.{key}", *default, path=path)

    arch = gguf_file.field(reader, "general.architecture", path=path)
    if arch != ARCHITECTURE:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; megadoc loads "
                         f"{ARCHITECTURE!r} (Llama-architecture) GGUF files")
    scaling = get("rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in {t.name for t in reader.tensors}:
        raise ValueError(f"{path}: RoPE scaling ({scaling!r} / rope_freqs.weight) is not supported "
                         "for GGUF files; load the model's Hugging Face directory instead")
    hidden, heads = get("embedding_length"), get("attention.head_count")
    if isinstance(heads, list):
        raise ValueError(f"{path}: per-layer head counts are not supported")
    head_dim = get("attention.key_length", hidden // heads)
    rope_dims = get("rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise ValueError(f"{path}: partial RoPE ({rope_dims} of {head_dim} dims) is not supported")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ValueError(f"{path}: tensor 'token_embd.weight' missing")
    vocab = get("vocab_size", int(embed.shape[-1]))  # GGUF dims: [hidden, vocab]
    return llama.LlamaConfig(
        vocab_size=int(vocab), hidden=int(hidden), ffn=int(get("feed_forward_length")),
        layers=int(get("block_count")), heads=int(heads),
        kv_heads=int(get("attention.head_count_kv", heads)), head_dim=int(head_dim),
        max_seq_len=int(get("context_length", 4096)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)))


def _unpermute(w_OxI: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head, its interleaved (even, odd) RoPE pairs back to
    the two rotate-half halves."""
    pairs = w_OxI.shape[0] // heads // 2
    return w_OxI.reshape(heads, pairs, 2, -1).swapaxes(1, 2).reshape(w_OxI.shape)


def load(path: str, mesh=None):
    """(config, params) from a Llama-architecture GGUF file; params float32 in
    `sharding.param_shardings(config, mesh)` when a mesh is given, else on the default device."""
    path = str(path)
    with gguf_file.open_reader(path) as reader:
        config = config_from_metadata(reader, path)
        tensors = {t.name: t for t in reader.tensors}
        expected = {_gguf_name(n) for n in hf._expected_tensors(config)}
        unknown = sorted(set(tensors) - expected)
        if unknown:
            raise ValueError(f"{path}: unexpected tensors for a Llama with {config.layers} "
                             f"layers: {unknown[:5]}")
        tied = "output.weight" not in tensors

        def read(hf_name, want):
            name = _gguf_name(hf_name)
            if tied and name == "output.weight":
                name = "token_embd.weight"  # stored [V, H], the layout of an HF lm_head
            if name not in tensors:
                raise ValueError(f"{path}: tensor {name!r} missing (expected shape {want})")
            array = gguf_file.dequantized(tensors[name])
            if tuple(array.shape) != want:
                raise ValueError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, "
                                 f"expected {want}")
            if name.endswith("attn_q.weight"):
                return _unpermute(array, config.heads)
            if name.endswith("attn_k.weight"):
                return _unpermute(array, config.kv_heads)
            return array

        return config, hf.params_from_hf_tensors(config, read, mesh)
