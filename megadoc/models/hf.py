"""Hugging Face Llama checkpoints: a directory with config.json and model.safetensors (or shards
listed in model.safetensors.index.json), local or gs://.

`load` reads one tensor at a time (safetensors headers give each tensor's byte range) and places
it straight into its target sharding, so no host ever holds the whole model. `save` writes a
directory `transformers.LlamaForCausalLM.from_pretrained` loads. q/k need no permutation: llama.py
applies RoPE in the same rotate-half layout as HF checkpoints.
"""
import contextlib
import json
import os
import struct
import tempfile

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils

from megadoc import fs
from megadoc.models import llama

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}

# Per-layer params: our name -> (HF name within model.layers.{i}, HF [out, in] -> ours).
_LAYER_TENSORS = {
    "attn_norm": ("input_layernorm.weight", None),
    "q": ("self_attn.q_proj.weight", "in_heads"),
    "k": ("self_attn.k_proj.weight", "in_heads"),
    "v": ("self_attn.v_proj.weight", "in_heads"),
    "o": ("self_attn.o_proj.weight", "heads_out"),
    "mlp_norm": ("post_attention_layernorm.weight", None),
    "gate": ("mlp.gate_proj.weight", "transpose"),
    "up": ("mlp.up_proj.weight", "transpose"),
    "down": ("mlp.down_proj.weight", "transpose"),
}
_TOP_TENSORS = {
    "embed": ("model.embed_tokens.weight", None),
    "final_norm": ("model.norm.weight", None),
    "lm_head": ("lm_head.weight", "transpose"),
}


def _to_ours(hf_array, layout, shape):
    """HF torch layout ([out, in] for linear weights) -> ours, shaped `shape`."""
    return hf_array if layout is None else hf_array.T.reshape(shape)


def _to_hf(array, layout):
    if layout == "in_heads":
        return array.reshape(array.shape[0], -1).T
    if layout == "heads_out":
        return array.reshape(-1, array.shape[-1]).T
    if layout == "transpose":
        return array.T
    return array


def _hf_shape(layout, shape):
    return tuple(_to_hf(np.empty(shape, np.bool_), layout).shape)


# ---------------------------------------------------------------------------------------------
# config.json


def config_from_hf(hf: dict, source: str) -> llama.LlamaConfig:
    """LlamaConfig from a parsed HF config.json (`source` names the file in errors)."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise ValueError(f"{source}: not a Llama checkpoint (model_type={hf.get('model_type')!r}, "
                         f"architectures={archs}); expected model_type 'llama'")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"{source}: {flag}=true, but megadoc's Llama has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r}, expected 'silu'")
    try:
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "llama3":
            scaling = llama.RopeScaling(
                factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position=int(rope["original_max_position_embeddings"]))
        elif rope_type == "default":
            scaling = None
        else:
            raise ValueError(f"{source}: rope_type {rope_type!r} is not supported "
                             "(expected 'default' or 'llama3')")
        heads = hf["num_attention_heads"]
        return llama.LlamaConfig(
            vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], ffn=hf["intermediate_size"],
            layers=hf["num_hidden_layers"], heads=heads,
            kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_seq_len=hf.get("max_position_embeddings", 4096), rope_theta=float(rope_theta),
            rope_scaling=scaling, norm_eps=float(hf.get("rms_norm_eps", 1e-5)))
    except KeyError as e:
        raise ValueError(f"{source}: missing Llama config field {e.args[0]!r}") from None


def config_to_hf(config: llama.LlamaConfig) -> dict:
    s = config.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden,
        "intermediate_size": config.ffn,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if s is None else {
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position},
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------------------------
# safetensors, read by byte range (works on gs:// as well as local files)


def _header(path):
    """(byte offset of the data, {tensor name: {dtype, shape, data_offsets}}) of one file."""
    with fs.open_read(path) as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    return 8 + n, header


class _Tensors:
    """Every tensor of a checkpoint directory, read one at a time by byte range."""

    def __init__(self, path):
        index = fs.join(path, INDEX)
        single = fs.join(path, WEIGHTS)
        if fs.exists(index):
            weight_map = json.loads(fs.read_text(index))["weight_map"]
            files = sorted({fs.join(path, f) for f in weight_map.values()})
        elif fs.exists(single):
            files = [single]
        else:
            raise FileNotFoundError(f"{path}: neither {WEIGHTS} nor {INDEX} found")
        self.where = {}  # name -> (file, data start, header entry)
        for file in files:
            start, header = _header(file)
            self.where.update({name: (file, start, info) for name, info in header.items()})

    def file(self, name):
        return self.where[name][0]

    def read(self, name) -> np.ndarray:
        file, start, info = self.where[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}, expected one "
                             f"of {sorted(_DTYPES)}")
        begin, end = info["data_offsets"]
        with fs.open_read(file) as f:
            f.seek(start + begin)
            data = f.read(end - begin)
        array = np.frombuffer(data, _DTYPES[info["dtype"]]).reshape(info["shape"])
        return array.astype(np.float32)


def _expected_tensors(config):
    """HF name -> (our top-level name or (layers, name, i), layout, our shape) for every tensor."""
    shapes = llama.param_shapes(config)
    out = {}
    for ours, (hf_name, layout) in _TOP_TENSORS.items():
        out[hf_name] = (ours, layout, shapes[ours])
    for ours, (suffix, layout) in _LAYER_TENSORS.items():
        for i in range(config.layers):
            out[f"model.layers.{i}.{suffix}"] = (ours, layout, shapes["layers"][ours][1:])
    return out


def load(path: str, mesh=None):
    """(config, params) from an HF Llama directory; params in `param_shardings(config, mesh)`
    when a mesh is given, else on the default device. Compute dtype is the LlamaConfig default."""
    config_path = fs.join(path, CONFIG)
    hf_config = json.loads(fs.read_text(config_path))
    config = config_from_hf(hf_config, config_path)
    tensors = _Tensors(path)
    expected = _expected_tensors(config)
    tied = hf_config.get("tie_word_embeddings", False) and "lm_head.weight" not in tensors.where
    unknown = sorted(n for n in tensors.where
                     if n not in expected and not n.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise ValueError(f"{path}: unexpected tensors for a Llama with {config.layers} layers: "
                         f"{unknown[:5]}")

    def read(hf_name, want):
        # A tied lm_head is the embedding table, which HF stores in the same [V, H] layout.
        source = "model.embed_tokens.weight" if tied and hf_name == "lm_head.weight" else hf_name
        if source not in tensors.where:
            raise ValueError(f"{path}: tensor {source!r} missing (expected shape {want})")
        array = tensors.read(source)
        if tuple(array.shape) != want:
            raise ValueError(f"{tensors.file(source)}: tensor {source!r} has shape "
                             f"{tuple(array.shape)}, expected {want} for {config_path}")
        return array

    return config, params_from_hf_tensors(config, read, mesh)


def params_from_hf_tensors(config: llama.LlamaConfig, read, mesh=None) -> dict:
    """Our params from HF-named, HF-layout tensors: `read(hf_name, expected_shape)` returns one
    as a float32 numpy array (it checks the shape, to name the file in its error). Each tensor
    goes straight into its sharding on `mesh` (else the default device)."""
    expected = _expected_tensors(config)
    if mesh is None:
        target = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                              llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    else:
        target = llama.param_shardings(config, mesh)

    def host(hf_name):
        _, layout, shape = expected[hf_name]
        return _to_ours(read(hf_name, _hf_shape(layout, shape)), layout, shape)

    params = {}
    for ours, (hf_name, _) in _TOP_TENSORS.items():
        array = host(hf_name)
        params[ours] = jax.make_array_from_callback(array.shape, target[ours],
                                                    lambda idx, a=array: a[idx])
    params["layers"] = {}
    for ours, (suffix, _) in _LAYER_TENSORS.items():
        # Stacked on the layer axis as each device's block is built: never whole on one device.
        layers = [host(f"model.layers.{i}.{suffix}") for i in range(config.layers)]
        params["layers"][ours] = jax.make_array_from_callback(
            (config.layers, *layers[0].shape), target["layers"][ours],
            lambda idx, layers=layers: np.stack([x[idx[1:]] for x in layers[idx[0]]]))
    return params


# ---------------------------------------------------------------------------------------------
# save


def _host(array) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(jax.device_get(array), np.float32)


def _hf_tensors(config, params):
    """(HF name, shape, producer of the fp32 numpy array) in file order."""
    for ours, (hf_name, layout) in _TOP_TENSORS.items():
        yield hf_name, _hf_shape(layout, params[ours].shape), \
            lambda o=ours, l=layout: _to_hf(_host(params[o]), l)
    for i in range(config.layers):
        for ours, (suffix, layout) in _LAYER_TENSORS.items():
            stacked = params["layers"][ours]
            yield f"model.layers.{i}.{suffix}", _hf_shape(layout, stacked.shape[1:]), \
                lambda s=stacked, i=i, l=layout: _to_hf(_host(s[i]), l)


def save(config: llama.LlamaConfig, params: dict, path: str) -> None:
    """Writes config.json and model.safetensors (fp32) under `path`, one tensor at a time.
    Every process must call it (sharded params are gathered); process 0 writes."""
    tensors = list(_hf_tensors(config, params))
    header, offset = {}, 0
    for name, shape, _ in tensors:
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    writer = jax.process_index() == 0
    with _local_file(fs.join(path, WEIGHTS), writer) as f:
        if writer:
            f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for name, shape, produce in tensors:
            array = produce()
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"params[{name!r}] has shape {array.shape}, expected {shape}")
            if writer:
                f.write(np.ascontiguousarray(array, "<f4").tobytes())
    if writer:
        fs.write_text(fs.join(path, CONFIG), json.dumps(config_to_hf(config), indent=2) + "\n")


@contextlib.contextmanager
def _local_file(dest, writer):
    """A temp file published at `dest` (rename locally, one upload on gs://) once complete."""
    if not writer:
        yield None
        return
    local_dir = None if fs.is_gcs(dest) else os.path.dirname(os.path.abspath(dest))
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local_dir, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        if fs.is_gcs(dest):
            fs.put_file(tmp, dest)
        else:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600
            os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
