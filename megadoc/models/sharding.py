"""Mesh (data, fsdp, tensor) and the logical-axis rules that place every param and activation.

Each array dimension carries a logical name; RULES maps names to mesh axes, in order, and a mesh
axis is used at most once per array and only where its size divides the dimension (so tiny test
shapes fall back to replication instead of failing). Params shard FSDP-style over "fsdp" on their
hidden dimension and tensor-parallel over "tensor" on heads/ffn/vocab; the batch splits over
("data", "fsdp").
"""
import functools
import math

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.models import llama

AXES = ("data", "fsdp", "tensor")

RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("ffn", ("tensor",)),
    ("embed", ("fsdp",)),
)

# Logical axes of each param, by leaf name (see the tree in llama.py).
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

# Activations: the residual stream keeps its hidden dim whole ("act_embed" has no rule).
ACT_EMBED = ("batch", "seq", "act_embed")
ACT_HEADS = ("batch", "seq", "heads", "head_dim")
ACT_KV_HEADS = ("batch", "seq", "kv_heads", "head_dim")
ACT_FFN = ("batch", "seq", "ffn")
ACT_VOCAB = ("batch", "seq", "vocab")
GATHERED_EMBED = ("embed_vocab", "act_embed")


def make_mesh(data=-1, fsdp=1, tensor=1, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else list(devices)
    if data == -1:
        data = len(devices) // (fsdp * tensor)
    if data * fsdp * tensor != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} does not cover "
                         f"{len(devices)} devices")
    return jax.make_mesh((data, fsdp, tensor), AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def spec(logical_axes, shape, mesh) -> P:
    """PartitionSpec for an array of `shape` whose dims have these logical names."""
    mesh_shape = dict(mesh.shape)
    used = set()
    parts = []
    for name, dim in zip(logical_axes, shape):
        axes = []
        for mesh_axis in dict(RULES).get(name, ()):
            size = math.prod(mesh_shape[a] for a in axes) * mesh_shape.get(mesh_axis, 1)
            if mesh_axis in mesh_shape and mesh_axis not in used and dim % size == 0:
                axes.append(mesh_axis)
        used.update(axes)
        parts.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*parts)


def current_mesh():
    """The mesh set with `jax.set_mesh(mesh)`, or None (a bare `with mesh:` does not count):
    activation constraints apply only under `jax.set_mesh`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(AXES) <= set(mesh.axis_names):
        return None
    return mesh


def constrain(x, logical_axes):
    """Pin an activation's layout by the rules; a no-op outside a mesh."""
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, spec(logical_axes, x.shape, mesh))


def param_shardings(config, mesh):
    shapes = llama.param_shapes(config)
    return jax.tree.map_with_path(
        lambda path, shape: NamedSharding(mesh, spec(PARAM_AXES[path[-1].key], shape, mesh)),
        shapes, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp"), None))


def init_sharded(config, key, mesh):
    """Params created directly in their sharding: no host ever holds the whole model."""
    return jax.jit(functools.partial(llama.init, config),
                   out_shardings=param_shardings(config, mesh))(key)
